"""A run directory and its records: config.yaml (resolved), config_hash.txt, provenance.json, status.json and the
metrics log metrics.jsonl; checkpoint.pt, snapshots/ and samples/ are written by the loop. Every file but the
append-only metrics log is written atomically."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from sim_core.errors import CheckpointError, ConfigError, RunDirError
from sim_core.files import atomic_write_json, atomic_write_text, sha256_file, tree_sha256
from sim_core.train.config import RunConfig, parse_config
from sim_core.train.provenance import provenance


def read_metrics(run_dir) -> list[dict]:
    """The records of metrics.jsonl. Every append ends with a newline, so a last line without one is a write cut short
    (a full disk, a kill): it is left out, and the next resume rewrites the file without it. A damaged line anywhere
    else is one CheckpointError line."""
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    *complete, cut = p.read_bytes().split(b"\n")
    records = []
    for i, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"metrics log {p} line {i} is not a JSON record: the run directory is damaged; "
                                  "move it away to start the run again") from None
        if not isinstance(records[-1], dict) or "step" not in records[-1]:
            raise CheckpointError(f"metrics log {p} line {i} is not a metrics record (no step)")
    return records


class MetricsLog:
    """metrics.jsonl: one JSON object per line, buffered and appended in batches. ``unsynced`` holds the
    records not yet handed to the tracker, so a sync never re-reads the file."""

    def __init__(self, path: Path, write: bool = True):
        self.path, self.buffer, self.unsynced, self.write = path, [], [], write  # write: rank 0 only

    def add(self, record: dict) -> None:
        self.buffer.append(record)
        self.unsynced.append(record)

    def flush(self) -> None:
        if self.buffer and self.write:
            with open(self.path, "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in self.buffer))
            self.buffer = []

    def truncate_after(self, step: int) -> None:
        """On resume: drop records logged after the checkpoint, so the history has no duplicated steps. The
        records kept become ``unsynced``: the tracker skips those the store already holds (up to its synced step)."""
        self.unsynced = [r for r in read_metrics(self.path.parent) if r["step"] <= step]
        if self.path.exists() and self.write:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.unsynced))


STATUSES = ("running", "finished", "diverged", "collapsed", "interrupted")
TERMINAL = ("finished", "diverged", "collapsed")  # a run in one of these is not trained again


def read_status(run_dir) -> dict | None:
    """status.json, or None before the run started; anything unreadable is one CheckpointError line."""
    p = Path(run_dir) / "status.json"
    if not p.exists():
        return None
    try:
        status = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"status file {p} is not JSON: the run directory is damaged; delete {p.name} to resume "
                              "from the checkpoint") from None
    if not isinstance(status, dict) or status.get("status") not in STATUSES:
        raise CheckpointError(f"status file {p} holds no run status ({', '.join(STATUSES)}); delete it to resume "
                              "from the checkpoint")
    return status


def write_status(run_dir, record: dict) -> None:
    atomic_write_json(Path(run_dir) / "status.json", record)


def read_run_config(run_dir) -> RunConfig:
    """The resolved config a run directory holds; missing or unreadable is one RunDirError line."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a run directory: it has no config.yaml")
    try:
        return parse_config(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as e:
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise RunDirError(f"run directory {run_dir} holds an unreadable config.yaml ({first}); use another "
                          "--run-dir") from None


def teacher_digest(teacher: Path) -> dict:
    """The teacher's checksum: of its file, or of its network's folder (a diffusers pipeline's transformer/)."""
    if teacher.is_file():
        return {"teacher_sha256": sha256_file(teacher)}
    if teacher.is_dir():
        net = teacher / "transformer" if (teacher / "transformer").is_dir() else teacher
        return {"teacher_sha256": None, "teacher_tree_sha256": tree_sha256(net)}
    return {"teacher_sha256": None}


def prepare_run_dir(cfg: RunConfig, run_dir) -> Path:
    """Create the run directory with its provenance, or check that an existing one holds the same config."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} is a file, not a directory")
    if cfg_path.exists():
        existing = read_run_config(run_dir)
        if existing.hash() != cfg.hash():
            raise RunDirError(f"run directory {run_dir} holds config {existing.hash()}, not {cfg.hash()}; "
                              "use another --run-dir")
        return run_dir
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-probe.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise RunDirError(f"run directory {run_dir} cannot be written: {e.strerror or e}") from None
    atomic_write_json(run_dir / "provenance.json",
                      provenance(cfg.hash(), {**teacher_digest(Path(cfg.testbed.teacher)), "threads": cfg.threads,
                                              "time_distributions": {
                                                  "theta": {"name": cfg.method.time_dist,
                                                            **cfg.method.time_distribution().params()},
                                                  "psi": {"name": cfg.online.time_dist,
                                                          **cfg.online.time_distribution().params()}}}))
    atomic_write_text(run_dir / "config_hash.txt", cfg.hash() + "\n")
    atomic_write_text(cfg_path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return run_dir
