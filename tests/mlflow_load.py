"""The load of the MLflow concurrency tests (tests/tracking/test_tracking_server.py, tests/workflow/test_slurm.py):
N_PROCS processes, each logging N_STEPS steps of KEYS in CHECKPOINTS batches as the training loop does."""
from __future__ import annotations

N_PROCS, N_STEPS, CHECKPOINTS = 16, 300, (59, 119, 179, 239, 299)
KEYS = ("loss", "grad_norm", "fd")


def expected_value(worker: int, step: int, key: str) -> float:
    """Distinct per run, step and metric; not exactly representable in decimal (tests the float round trip)."""
    base = worker * 1000 + step
    return {"loss": base / 7, "grad_norm": -base * 1e-3 - 0.1, "fd": (base + 0.5) ** 0.5}[key]


# One logging process (run as `python -c WORKER uri experiment root i`, TEST_DIR: this folder).
WORKER = r"""
import json, os, sys, time, warnings
from pathlib import Path
import mlflow.entities, mlflow.tracking  # imported before the barrier, as by a job's first run
from sim_core.tracking.client import MLflowTracker
sys.path.insert(0, os.environ["TEST_DIR"])
from mlflow_load import CHECKPOINTS, KEYS, N_STEPS, expected_value

uri, experiment, root, i = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
records = [{"step": s, **{k: expected_value(i, s, k) for k in KEYS}} for s in range(N_STEPS)]
(root / f"ready.{i}").touch()
while not (root / "go").exists():  # barrier: all 16 have imported mlflow before anyone logs
    time.sleep(0.005)
t_go = time.time()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tr = MLflowTracker(root / f"run{i}", uri, experiment, f"w{i:02d}", {"worker": i, "optim": {"lr": 1e-4}},
                       {"worker": i})
    prev = -1
    for ck in CHECKPOINTS:  # as the training loop does after each checkpoint: the records since the last one
        tr.log_records([r for r in records if prev < r["step"] <= ck], ck)
        assert tr.synced_step == ck, (ck, tr.synced_step)
        prev = ck
    tr.finish({"status": "finished"})
failed = [str(w.message) for w in caught if "MLflow" in str(w.message)]
print(json.dumps({"worker": i, "run_id": tr.run_id, "t_go": t_go, "t_done": time.time(), "warnings": failed}))
"""
