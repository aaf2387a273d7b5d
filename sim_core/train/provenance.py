"""Provenance of a run directory: resolved config, its hash, git commit, package versions, host, and the machine's
arithmetic (CPU model, vector capability, BLAS, threads, GPU): runs are bitwise reproducible only on the same
machine kind with the same thread count (docs/reproducibility.md)."""
from __future__ import annotations

import importlib.metadata
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("torch", "torchvision", "torch-fidelity", "numpy", "scipy", "scikit-learn", "pydantic", "mlflow",
            "snakemake", "submitit", "diffusers", "transformers", "sim-harness")


def git_state(repo_dir: Path | None = None) -> dict:
    repo_dir = repo_dir or Path(__file__).resolve().parent.parent
    def run(*args):
        return subprocess.run(["git", *args], cwd=repo_dir, capture_output=True, text=True, timeout=10)
    try:
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What the arithmetic of a run depends on besides the code and the config."""
    import torch
    blas = [line.strip(" -") for line in torch.__config__.show().splitlines()
            if "Math Kernel" in line or "MKL-DNN" in line or "BLAS_INFO" in line]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": _cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(), "torch_threads": torch.get_num_threads(),
            "blas": [b.split(", ")[0] if b.startswith("Build settings") else b for b in blas],
            "gpu": gpu, "cuda": torch.version.cuda if gpu else None}


def provenance(config_hash: str, extra: dict | None = None) -> dict:
    return {
        "config_hash": config_hash,
        "git": git_state(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "machine": machine(),
        "argv": sys.argv,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
