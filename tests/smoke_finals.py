"""Every sweep point's final numbers in a smoke DAG's results: what the refactoring guard compares
(tests/test_smoke_fixture.py; the fixture was written by this module from the code before the refactoring)."""
from __future__ import annotations

import json
import math
from pathlib import Path


def machine_key() -> dict:
    """What decides whether two runs of the same code are bitwise equal (docs/reproducibility.md)."""
    import torch

    from sim_core.train.provenance import machine
    m = machine()
    return {"cpu": m["cpu"], "cpu_capability": m["cpu_capability"], "blas": m["blas"], "torch": torch.__version__}


def _jsonable(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def smoke_finals(results) -> dict:
    """{'experiment|label|lr=..|seed=..': {status, final metrics..., last loss_gen, loss_online}} from the manifests,
    the runs' done.json and metrics.jsonl, and the teacher rows."""
    results = Path(results)
    out = {}
    for manifest in sorted((results / "manifests").glob("*.json")):
        for rec in json.loads(manifest.read_text()):
            key = f"{rec['experiment']}|{rec['label']}|lr={rec['lr']}|seed={rec['seed']}"
            if rec["method"] == "teacher":
                rows = json.loads((results / "teacher_rows" / f"{rec['experiment']}.json").read_text())
                final = next(r["final"] for r in rows if r["nfe"] == rec["nfe"] and r["seed"] == rec["seed"])
                out[key] = {"status": "finished", **final}
                continue
            run_dir = results / "runs" / rec["name"]
            done = json.loads((run_dir / "done.json").read_text())
            losses = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                      if '"loss_gen"' in line]
            last = losses[-1] if losses else {}
            out[key] = {"status": done["status"], **done["final"], "step": done["step"],
                        "loss_gen": _jsonable(last.get("loss_gen")), "loss_online": _jsonable(last.get("loss_online"))}
    return out


if __name__ == "__main__":  # python tests/smoke_finals.py RESULTS_DIR OUT.json
    import sys
    data = {"machine": machine_key(), "finals": smoke_finals(sys.argv[1])}
    Path(sys.argv[2]).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
