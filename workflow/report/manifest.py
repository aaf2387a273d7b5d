"""The run records a table or figure is built from: a JSON manifest (workflow/dag.py write_manifest) with one
record per (run, experiment membership) and per teacher row, each naming its MLflow run."""
from __future__ import annotations

import json
from pathlib import Path

from workflow.report import EXPERIMENTS

REQUIRED_KEYS = ("name", "experiment", "label", "method", "seed", "run_id")


def load_manifest(path) -> list[dict]:
    """Read and validate a manifest: a JSON list of run records."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest not found: {path}")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"manifest {path} is not valid JSON: {exc}") from None
    validate_records(records)
    return records


def validate_records(records) -> None:
    """Check run records: a list of dicts with the interface's keys and known experiment/method/testbed."""
    from sim_core.core.methods import METHODS
    from sim_core.testbeds import TESTBEDS
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError("manifest must be a JSON list of run records (objects)")
    methods = (*METHODS.names(), "teacher")
    seen = set()
    for i, rec in enumerate(records):
        missing = [k for k in REQUIRED_KEYS if k not in rec]
        if missing:
            raise ValueError(f"manifest record {i} lacks {', '.join(missing)}")
        if rec["experiment"] not in EXPERIMENTS:
            raise ValueError(f"record {rec['name']!r}: unknown experiment {rec['experiment']!r}")
        if rec["method"] not in methods:
            raise ValueError(f"record {rec['name']!r}: unknown method {rec['method']!r}")
        if rec.get("testbed") is not None and rec["testbed"] not in TESTBEDS:
            raise ValueError(f"record {rec['name']!r}: unknown testbed {rec['testbed']!r}")
        if rec.get("lr") is not None and not isinstance(rec["lr"], (int, float)):
            raise ValueError(f"record {rec['name']!r}: lr must be a number or null, got {rec['lr']!r}")
        if (rec["experiment"], rec["name"]) in seen:
            raise ValueError(f"record name {rec['name']!r} repeats in experiment {rec['experiment']}")
        seen.add((rec["experiment"], rec["name"]))


def select(records, experiment: str, need_lr: bool = False) -> list[dict]:
    """The records of one experiment (manifest order); ValueError when there are none."""
    validate_records(records)
    chosen = [r for r in records if r["experiment"] == experiment]
    if not chosen:
        raise ValueError(f"manifest has no runs for experiment {experiment!r}")
    if need_lr and any(r.get("lr") is None for r in chosen):
        raise ValueError(f"every {experiment} record needs an lr (record "
                         f"{next(r['name'] for r in chosen if r.get('lr') is None)!r} has none)")
    return chosen


def by_label(records) -> dict[str, list[dict]]:
    """Group records by label, keeping the manifest's order of first appearance."""
    groups: dict[str, list[dict]] = {}
    for rec in records:
        groups.setdefault(rec["label"], []).append(rec)
    return groups


def testbed_spec(records):
    """The one testbed the records were run on (digits when they name none); mixed testbeds are an error."""
    from sim_core.testbeds import TESTBEDS
    names = {r.get("testbed") or "digits" for r in records}
    if len(names) > 1:
        raise ValueError(f"runs mix testbeds with different metrics: {sorted(names)}")
    return TESTBEDS.get(names.pop())


def column_metrics(records, columns=("fid", "is")) -> tuple:
    """The testbed's metric for each report column (e.g. digits: fid -> FID, is -> Inception Score)."""
    spec = testbed_spec(records)
    found = tuple(spec.for_column(c) for c in columns)
    missing = [c for c, m in zip(columns, found) if m is None]
    if missing:
        raise ValueError(f"testbed {spec.name} has no metric for the column(s) {missing}")
    return found
