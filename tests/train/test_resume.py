"""Checkpoint/resume: a run interrupted at any step and resumed ends bitwise-identical (CPU) to one that
never stopped; signals make the loop checkpoint and exit; the metric history has no duplicated steps."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from sim_core.errors import EXIT_INTERRUPTED
from sim_core.testbeds import load_testbed
from sim_core.train.config import parse_config
from sim_core.train.loop import Distiller, distill
from sim_core.train.run_dir import prepare_run_dir, read_metrics

from conftest import gmm_config


def _final_state(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)


def _assert_bitwise_equal(a: dict, b: dict):
    for key in ("G", "G_ema", "D_psi"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    for key in ("opt_theta", "opt_psi"):
        for pid, st in a[key]["state"].items():
            for k, v in st.items():
                assert torch.equal(v, b[key]["state"][pid][k]), f"{key} state {pid}.{k} differs"
    for name in ("loop", "torch"):  # what training draws from (numpy's and Python's are per process, unused)
        assert torch.equal(a["rng"][name], b["rng"][name]), f"rng {name} differs"
    assert a["step"] == b["step"] and a["nimg"] == b["nimg"]


@pytest.mark.parametrize("method", ["sim", "sid", "di"])
@pytest.mark.parametrize("stop_at", [1, 7])
def test_resume_is_bitwise_identical(tmp_path, gmm_teacher, method, stop_at):
    cfg = parse_config(gmm_config(gmm_teacher, method=dict(name=method),
                                  train=dict(iterations=12, eval_every=5)))
    straight = tmp_path / "straight"
    assert distill(cfg, straight)["status"] == "finished"

    # Interrupt at `stop_at` with a real SIGUSR1 delivered to this process from inside the loop.
    resumed = tmp_path / "resumed"
    prepare_run_dir(cfg, resumed)
    tb = load_testbed(cfg.testbed)
    d = Distiller(cfg, resumed, tb)
    orig = d.theta_step

    def step_and_signal():
        loss = orig()
        if d.step + 1 == stop_at:  # the counter is incremented after this call returns
            os.kill(os.getpid(), signal.SIGUSR1)
        return loss
    d.theta_step = step_and_signal
    status = d.run()
    assert status["status"] == "interrupted" and status["step"] == stop_at
    assert distill(cfg, resumed)["status"] == "finished"

    _assert_bitwise_equal(_final_state(straight), _final_state(resumed))
    steps = [r["step"] for r in read_metrics(resumed) if "loss_gen" in r]
    assert steps == sorted(set(steps)), "duplicated or unordered steps in the resumed metric history"
    assert steps == [r["step"] for r in read_metrics(straight) if "loss_gen" in r]
    evals = [(r["step"], r["eval/fd"]) for r in read_metrics(resumed) if "eval/fd" in r]
    assert evals == [(r["step"], r["eval/fd"]) for r in read_metrics(straight) if "eval/fd" in r]


def test_sigterm_subprocess_checkpoints_and_resumes(tmp_path, gmm_teacher):
    """The CLI under a real SIGTERM from another process: exit code 75, status 'interrupted', then resume."""
    raw = gmm_config(gmm_teacher, train=dict(iterations=400, log_every=1, eval_every=0))
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(raw))  # JSON is valid YAML
    cmd = [sys.executable, "-m", "sim_core", "distill", "--config", str(cfg_path)]
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    p = subprocess.Popen(cmd + ["--run-dir", str(run_a)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until training is under way (metrics are flushed at checkpoints/evals)
        status = run_a / "status.json"
        if status.exists() and json.loads(status.read_text())["status"] == "running":
            break
        time.sleep(0.05)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == EXIT_INTERRUPTED, err
    st = json.loads((run_a / "status.json").read_text())
    assert st["status"] == "interrupted" and st["signal"] == "SIGTERM" and 0 < st["step"] < 400
    assert subprocess.run(cmd + ["--run-dir", str(run_a)], capture_output=True).returncode == 0
    assert subprocess.run(cmd + ["--run-dir", str(run_b)], capture_output=True).returncode == 0
    _assert_bitwise_equal(_final_state(run_a), _final_state(run_b))
    steps = [r["step"] for r in read_metrics(run_a) if "loss_gen" in r]
    assert steps == list(range(1, 401))


def test_finished_run_is_a_noop(tmp_path, gmm_teacher):
    cfg = parse_config(gmm_config(gmm_teacher, train=dict(iterations=3)))
    distill(cfg, tmp_path / "r")
    mtime = (tmp_path / "r" / "checkpoint.pt").stat().st_mtime_ns
    assert distill(cfg, tmp_path / "r")["status"] == "finished"
    assert (tmp_path / "r" / "checkpoint.pt").stat().st_mtime_ns == mtime


def test_run_dir_records_provenance(tmp_path, gmm_teacher):
    cfg = parse_config(gmm_config(gmm_teacher, train=dict(iterations=2)))
    distill(cfg, tmp_path / "r")
    prov = json.loads((tmp_path / "r" / "provenance.json").read_text())
    assert prov["config_hash"] == cfg.hash() == (tmp_path / "r" / "config_hash.txt").read_text().strip()
    assert prov["packages"]["torch"].startswith("2.")
    assert len(prov["teacher_sha256"]) == 64
    assert (tmp_path / "r" / "snapshots" / "ema-00000002.pt").exists()
    assert (tmp_path / "r" / "samples" / "step-00000002.png").exists()


@pytest.mark.parametrize("background", [None, "thread", "process"])
def test_resumed_run_continues_one_mlflow_history(tmp_path, gmm_teacher, background):
    """Interrupted at step 7 and resumed: one MLflow run, every logged step exactly once, the same values as
    the JSONL file (the tracker is synced only up to each checkpoint); also with MLflow on a worker thread and
    in a tracker process (as the DAG's jobs)."""
    from mlflow.tracking import MlflowClient

    from sim_core.tracking.client import MLflowTracker
    from sim_core.tracking.worker import BackgroundTracker, TrackerProcess
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = parse_config(gmm_config(gmm_teacher, train=dict(iterations=12, log_every=1, eval_every=5,
                                                          checkpoint_every=4)))
    run_dir = tmp_path / "r"
    opened = []
    worker = TrackerProcess() if background == "process" else None

    def tracker():
        if background is None:
            opened.append(MLflowTracker(run_dir, uri, "resume", "r", cfg.to_dict(), {"status": "running"}))
        else:
            opened.append(BackgroundTracker(run_dir, uri, "resume", "r", cfg.to_dict(), {"status": "running"},
                                            worker=worker))
        return opened[-1]
    prepare_run_dir(cfg, run_dir)
    d = Distiller(cfg, run_dir, load_testbed(cfg.testbed), tracker=tracker())
    orig = d.theta_step

    def step_and_signal():
        loss = orig()
        if d.step + 1 == 7:
            os.kill(os.getpid(), signal.SIGUSR1)
        return loss
    d.theta_step = step_and_signal
    assert d.run()["status"] == "interrupted"
    if background:
        opened[-1].close()
    assert distill(cfg, run_dir, tracker_factory=tracker)["status"] == "finished"
    if background:
        opened[-1].write_done(tmp_path / "done.json", {"status": "finished", "seconds": {}})
        opened[-1].close()
        assert opened[-1].busy_seconds > 0
        done = json.loads((tmp_path / "done.json").read_text())
        assert done["run_id"] and done["seconds"]["tracking_background"] > 0
    if worker is not None:
        worker.stop()
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss_gen")]
    expected = [(r["step"], r["loss_gen"]) for r in read_metrics(run_dir) if "loss_gen" in r]
    assert [s for s, _ in history] == list(range(1, 13))
    assert sorted(history) == expected
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/fd")] == [0, 5, 10, 12]


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_background_tracker_reports_store_errors_at_close(tmp_path, kind):
    """Training never waits for MLflow, but a store that fails is not silent: close() raises its error (also
    across the process boundary), and the run's done.json is never written."""
    from sim_core.tracking.client import TrackingError
    from sim_core.tracking.worker import BackgroundTracker, TrackerProcess
    uri = f"sqlite:///{tmp_path / 'not-a-dir' / 'mlflow.db'}"
    (tmp_path / "not-a-dir").write_text("a file where the store's directory should be")
    worker = TrackerProcess() if kind == "process" else None
    tr = BackgroundTracker(tmp_path / "r", uri, "e", "r", {"a": 1}, {}, worker=worker)
    tr.log_records([{"step": 1, "loss": 0.5}], 1)  # returns at once
    tr.write_done(tmp_path / "done.json", {"status": "finished", "seconds": {}})
    with pytest.raises(TrackingError, match="not-a-dir"):
        tr.close(timeout=120)
    assert not (tmp_path / "r" / "mlflow.json").exists()
    assert not (tmp_path / "done.json").exists()
    if worker is not None:
        worker.stop(timeout=10)
        assert not worker.process.is_alive()


def test_failed_sync_keeps_records_pending_until_the_store_answers(tmp_path):
    """A sync that fails (store briefly unavailable) keeps its records; the next sync logs them, once each."""
    from mlflow.tracking import MlflowClient

    from sim_core.tracking.client import MLflowTracker
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tr = MLflowTracker(tmp_path / "r", uri, "e", "r", {"a": 1}, {})
    real = tr.client.log_batch
    tr.client.log_batch = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("store down"))
    with pytest.warns(UserWarning, match="store down"):
        tr.log_records([{"step": s, "loss": float(s)} for s in (1, 2)], 2)
    assert tr.synced_step == -1 and len(tr.pending) == 2
    tr.client.log_batch = real
    tr.log_records([{"step": s, "loss": float(s)} for s in (3, 4)], 4)
    assert tr.synced_step == 4 and tr.pending == []
    hist = MlflowClient(uri).get_metric_history(tr.run_id, "loss")
    assert sorted((m.step, m.value) for m in hist) == [(s, float(s)) for s in (1, 2, 3, 4)]


def test_a_sync_cut_short_after_its_metrics_logs_nothing_twice(tmp_path):
    """The store commits a batch's metrics and the synced_step tag separately. A job killed between the two
    (as `scontrol requeue` can do) must not log those steps again when it resumes; nor may a retry in the
    same process after the tag alone failed."""
    from mlflow.tracking import MlflowClient

    from sim_core.tracking.client import MLflowTracker
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    records = [{"step": s, "loss": float(s), "fid": 10.0 - s} for s in range(1, 13)]
    tr = MLflowTracker(tmp_path / "r", uri, "e", "r", {"a": 1}, {})
    tr.log_records(records[:4], 4)
    real = tr.client.log_batch

    def tag_fails(run_id, metrics=(), tags=()):
        if tags:
            raise RuntimeError("killed before the tag")
        return real(run_id, metrics=metrics)
    tr.client.log_batch = tag_fails
    with pytest.warns(UserWarning, match="killed before the tag"):
        tr.log_records(records[4:8], 8)
    assert tr.synced_step == 4
    tr.client.log_batch = real
    # the same process retries at its next checkpoint
    tr.log_records(records[8:10], 10)
    assert tr.synced_step == 10
    # a second cut-short sync, then the job dies: the resumed tracker reopens the run from mlflow.json
    tr.client.log_batch = tag_fails
    with pytest.warns(UserWarning):
        tr.log_records(records[10:], 12)
    resumed = MLflowTracker(tmp_path / "r", uri, "e", "r", {"a": 1}, {})
    assert resumed.run_id == tr.run_id and resumed.synced_step == 10
    assert resumed.stored == {(k, s) for s in (11, 12) for k in ("loss", "fid")}
    resumed.log_records(records, 12)  # a resumed run hands over every record up to its checkpoint
    assert resumed.synced_step == 12 and resumed.stored == set()
    client = MlflowClient(uri)
    for key in ("loss", "fid"):
        steps = sorted(m.step for m in client.get_metric_history(tr.run_id, key))
        assert steps == list(range(1, 13)), (key, steps)
