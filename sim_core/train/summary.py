"""A plain summary of run directories: status, and the first and last evaluation of each headline metric."""
from __future__ import annotations

from pathlib import Path

from sim_core.errors import RunDirError
from sim_core.testbeds import TESTBEDS
from sim_core.train.run_dir import read_metrics, read_run_config, read_status


def summarize(run_dirs) -> list[dict]:
    """One row per run directory; a directory that is not a started run is one RunDirError line."""
    rows = []
    for run_dir in map(Path, run_dirs):
        cfg = read_run_config(run_dir).to_dict()
        status = read_status(run_dir)
        if status is None:
            raise RunDirError(f"run directory {run_dir} has no status.json: the run has not started")
        evals = [r for r in read_metrics(run_dir) if any(k.startswith("eval/") for k in r)]
        row = dict(run=run_dir.name, method=cfg["method"]["name"], testbed=cfg["testbed"]["kind"],
                   status=status["status"] + (f" at step {status['diverged_at']}" if "diverged_at" in status else ""),
                   steps=status["step"])
        for key in (m.key for m in TESTBEDS.get(cfg["testbed"]["kind"]).metrics):
            vals = [r[f"eval/{key}"] for r in evals if f"eval/{key}" in r]
            if vals:
                row[f"{key} init"], row[f"{key} final"] = vals[0], vals[-1]
        rows.append(row)
    return rows


def to_markdown(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
