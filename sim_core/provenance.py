"""Provenance of a run directory: resolved config, its hash, git commit, package versions, host."""
from __future__ import annotations

import importlib.metadata
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("torch", "torchvision", "torch-fidelity", "numpy", "scipy", "scikit-learn", "pydantic", "mlflow",
            "snakemake", "submitit", "sim-harness")


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


def provenance(config_hash: str, extra: dict | None = None) -> dict:
    return {
        "config_hash": config_hash,
        "git": git_state(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "argv": sys.argv,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
