"""Preemption through submitit, on this machine: a distillation job (workflow.jobs.DistillJob, a submitit
Checkpointable) gets submitit's preemption signal mid-training, checkpoints, is requeued by submitit's local
controller, resumes, and ends with the weights of an uninterrupted run, bitwise, and one MLflow history.
The same path against a real SLURM controller (`scontrol requeue`) is in tests/test_slurm.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess

from sim_core.train.config import parse_config
from sim_core.train.loop import distill
from sim_core.train.run_dir import read_metrics

from conftest import gmm_config, wait_for
from numerics import assert_same_weights


def test_preempted_job_is_requeued_and_ends_as_if_never_interrupted(tmp_path, gmm_teacher):
    import submitit
    from mlflow.tracking import MlflowClient

    from workflow.jobs import DistillJob
    cfg = parse_config(gmm_config(gmm_teacher, train=dict(iterations=300, log_every=5, eval_every=100,
                                                           checkpoint_every=50)))
    reference = tmp_path / "reference"
    distill(cfg, reference)

    run_dir = tmp_path / "run"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from sim_core.tracking.client import check_tracking
    check_tracking(uri)  # the store exists before the job (as the DAG's tracking_store rule does)
    spec = dict(config=cfg.to_dict(), run_dir=str(run_dir), owner="requeue", name="r",
                memberships=[{"experiment": "requeue"}])
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local")
    ex.update_parameters(timeout_min=10)
    job = ex.submit(DistillJob(), [spec], uri, [1000])

    def progressed():
        return any(r["step"] >= 60 for r in read_metrics(run_dir))
    wait_for(progressed, 120, "the job to pass step 60")
    # what SLURM's --signal does before the time limit, or a preemption notice: submitit's USR2 to the task
    # (the local controller between this process and the task does not forward it; job._interrupt() signals
    # the controller)
    (task,) = [int(p) for p in subprocess.check_output(["pgrep", "-P", str(job._process.pid)], text=True).split()]
    os.kill(task, signal.SIGUSR2)
    (record,) = job.result()
    log = job.stderr() + job.stdout()
    assert "Requeued" in log and "Calling checkpoint method" in log, log[-2000:]

    assert record["status"] == "finished" and record["step"] == 300
    assert_same_weights(reference, run_dir)
    steps = [r["step"] for r in read_metrics(run_dir) if "loss_gen" in r]
    assert steps == list(range(5, 301, 5))  # resumed from the checkpoint: no step twice, none missing
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("requeue").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
    history = client.get_metric_history(run.info.run_id, "loss_gen")
    assert sorted(m.step for m in history) == steps
    assert json.loads((run_dir / "done.json").read_text())["run_id"] == run.info.run_id
