"""The MLflow tracking server of sim_core.tracking.server: one real server (--workers 1) for the module, 16
separate processes logging to it at once with no value lost or duplicated, artifacts through the server,
a clean stop, and one-line errors for a taken port, a server that does not come up and a missing mlflow.

The tests run in file order (``--dist loadfile`` keeps the module on one worker): the stop test comes last."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from sim_core.tracking import server as ts
from sim_core.tracking.client import MLflowTracker, TrackingError, check_tracking, ensure_experiment

from mlflow_load import CHECKPOINTS, KEYS, N_PROCS, N_STEPS, WORKER, expected_value

REPO = Path(__file__).resolve().parents[2]


def _cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "sim_core.tracking.server", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlflow_server")
    t0 = time.perf_counter()
    try:
        uri = ts.start_server(d, host="127.0.0.1", port=0, workers=1)
        yield SimpleNamespace(dir=d, uri=uri, start_seconds=time.perf_counter() - t0)
    finally:
        ts.stop_server(d)  # also on failure; a no-op once the stop test has run


def test_server_answers_and_is_reused(server):
    print(f"server start: {server.start_seconds:.1f} s")
    check_tracking(server.uri)
    state = json.loads((server.dir / "server.json").read_text())
    assert state["uri"] == server.uri and state["host"] == "127.0.0.1" and state["port"] > 0
    assert state["pid"] > 0 and state["started"]
    assert ts.server_uri(server.dir) == server.uri

    t0 = time.perf_counter()
    assert ts.start_server(server.dir) == server.uri  # reused, not a second server
    assert time.perf_counter() - t0 < 5
    assert json.loads((server.dir / "server.json").read_text())["pid"] == state["pid"]

    st = _cli("status", "--dir", str(server.dir))
    assert st.returncode == 0 and st.stdout.startswith(server.uri) and "healthy" in st.stdout, st




def test_concurrent_processes_lose_and_duplicate_nothing(server, tmp_path):
    from mlflow.tracking import MlflowClient
    # Not created beforehand: the 16 trackers race to create it (sim_core.tracking.client.ensure_experiment).
    env = dict(os.environ, TEST_DIR=str(REPO / "tests"), PYTHONPATH=str(REPO))
    t_start = time.time()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, server.uri, "concurrent", str(tmp_path), str(i)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(N_PROCS)]
    try:
        deadline = time.monotonic() + 180
        while len(list(tmp_path.glob("ready.*"))) < N_PROCS:
            dead = [p for p in procs if p.poll() not in (None, 0)]
            assert not dead, dead[0].communicate()[1][-2000:]
            assert time.monotonic() < deadline, "workers did not get ready"
            time.sleep(0.05)
        t_go = time.time()
        (tmp_path / "go").touch()
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    print(f"workers ready {t_go - t_start:.1f} s after their start")
    logging_seconds = max(r["t_done"] for r in results) - t_go
    assert all(not r["warnings"] for r in results), [r["warnings"] for r in results if r["warnings"]]
    # they really overlapped: every process was still logging when the last one started
    assert max(r["t_go"] for r in results) < min(r["t_done"] for r in results)

    t_check = time.perf_counter()
    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name("concurrent")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert sorted(r.info.run_name for r in runs) == [f"w{i:02d}" for i in range(N_PROCS)]
    checked = 0
    for r in results:
        run = client.get_run(r["run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
        assert run.data.tags["synced_step"] == str(CHECKPOINTS[-1]) and run.data.params["optim.lr"] == "0.0001"
        for key in KEYS:
            got = Counter((m.step, m.value) for m in client.get_metric_history(r["run_id"], key))
            want = Counter((s, expected_value(r["worker"], s, key)) for s in range(N_STEPS))
            assert got == want, (r["worker"], key, len(got), sum(got.values()),
                                 sorted((got - want).items())[:5], sorted((want - got).items())[:5])
            checked += sum(got.values())
    assert checked == N_PROCS * N_STEPS * len(KEYS)
    print(f"{N_PROCS} processes logged {checked} values in {logging_seconds:.1f} s after the barrier; "
          f"checked in {time.perf_counter() - t_check:.1f} s")


def test_artifacts_go_through_the_server(server, tmp_path):
    samples = tmp_path / "samples"
    (samples / "grid").mkdir(parents=True)
    (samples / "summary.json").write_text('{"fd": 1.5}')
    (samples / "grid" / "step100.txt").write_text("x" * 1000)
    tr = MLflowTracker(tmp_path / "run", server.uri, "artifacts", "a0", {}, {})
    tr.log_artifacts(samples)
    listed = sorted(f.path for f in tr.client.list_artifacts(tr.run_id, "samples"))
    assert listed == ["samples/grid", "samples/summary.json"]
    assert [f.path for f in tr.client.list_artifacts(tr.run_id, "samples/grid")] == ["samples/grid/step100.txt"]
    got = tr.client.download_artifacts(tr.run_id, "samples/summary.json", str(tmp_path))
    assert Path(got).read_text() == '{"fd": 1.5}'
    # proxied: stored by the server under DIR/artifacts, the client needs no path of its own
    assert tr.client.get_run(tr.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    assert list((server.dir / "artifacts").rglob("step100.txt"))


def test_start_on_a_taken_port_fails_in_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = _cli("start", "--dir", str(tmp_path), "--port", str(port))
        assert r.returncode == 1 and r.stdout == ""
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith("error: ") and f"port {port}" in r.stderr and "in use" in r.stderr
        with pytest.raises(TrackingError, match="in use"):
            ts.start_server(tmp_path, port=port)
    assert not (tmp_path / "server.json").exists()


def test_server_not_coming_up_is_killed_with_its_log_line(tmp_path):
    before = set(ts._CHILDREN)
    t0 = time.perf_counter()
    with pytest.raises(TrackingError, match=r"did not answer .*/health within 0.5 s; .*server.log: ") as e:
        ts.start_server(tmp_path, timeout=0.5)
    assert "\n" not in str(e.value) and time.perf_counter() - t0 < 10
    assert not (tmp_path / "server.json").exists()
    assert set(ts._CHILDREN) == before  # the half-started server was killed and reaped
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and str(tmp_path) in ts._cmdline(int(p.name))]


def test_missing_mlflow_fails_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(ts.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(TrackingError, match="mlflow is not installed"):
        ts.start_server(tmp_path)


def test_ensure_experiment_tolerates_a_race(server):
    """Deterministic form of that race: another process creates the experiment between lookup and creation."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(server.uri)
    exp_id = client.create_experiment("raced")
    real_get, calls = client.get_experiment_by_name, []

    def get(name):
        calls.append(name)
        return None if len(calls) == 1 else real_get(name)
    client.get_experiment_by_name = get
    assert ensure_experiment(client, "raced", server.uri) == exp_id


def _pids_in_group(pgid: int) -> list[int]:
    return ts._group_members(pgid)


def test_stop_leaves_nothing_behind(server, monkeypatch):
    """Last in the file: stops the module's server."""
    pid = json.loads((server.dir / "server.json").read_text())["pid"]
    assert len(_pids_in_group(pid)) >= 2  # the mlflow CLI and its uvicorn worker
    t0 = time.perf_counter()
    assert ts.stop_server(server.dir) is True
    print(f"stop: {time.perf_counter() - t0:.1f} s")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone, reaped, not a zombie
    assert _pids_in_group(pid) == []
    assert not (server.dir / "server.json").exists()
    assert ts.server_uri(server.dir) is None
    assert ts.stop_server(server.dir) is False
    st = _cli("status", "--dir", str(server.dir))
    assert st.returncode == 1 and "not running" in st.stdout

    # a dead server is reported quickly, with MLflow's default retries in place (check_tracking probes /health)
    t0 = time.perf_counter()
    with pytest.raises(TrackingError, match="unreachable"):
        check_tracking(server.uri)
    assert time.perf_counter() - t0 < 5


def test_check_tracking_fails_fast_on_a_stopped_server(server):
    assert not (server.dir / "server.json").exists(), "runs after test_stop_leaves_nothing_behind"
    outcome = []

    def probe():
        try:
            check_tracking(server.uri)
            outcome.append("no error")
        except TrackingError as e:
            outcome.append(e)
    t = threading.Thread(target=probe, daemon=True)  # left to finish its retries in the background
    t.start()
    t.join(3)
    assert outcome and isinstance(outcome[0], TrackingError), "check_tracking did not fail within 3 s"
