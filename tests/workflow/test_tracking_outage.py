"""A tracking outage longer than the client's retries, on the smoke DAG with the managed MLflow server (local
executor): the server is killed (SIGKILL) while a group's job trains, its port taken by another program, and
the DAG fails; the same command again restarts the server on another port, the jobs find it there, and MLflow
ends up holding every point of every run's metrics.jsonl and each final number once."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from conftest import wait_for
from mlflow_checks import assert_mlflow_holds_the_run_dirs

ROOT = Path(__file__).resolve().parents[2]
# MLflow's client retries a dead server with backoff for minutes; here a few seconds stand for "longer than that"
FAST_FAIL = dict(MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
                 MLFLOW_HTTP_REQUEST_TIMEOUT="3")


def _snakemake(results, target, **kw):
    cmd = [sys.executable, "-m", "snakemake", target, "--cores", "2", "--quiet", "progress", "--config", "scale=smoke",
           f"results_dir={results}", "tracking_uri=server"]
    return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, **FAST_FAIL), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_a_long_outage_then_a_server_on_another_port_loses_no_metric(tmp_path):
    from sim_core.tracking.server import server_uri, stop_server
    from workflow.dag import load
    results = tmp_path / "results"
    server = results / "mlflow-server"
    S, SW, _ = load({"scale": "smoke", "results_dir": str(results), "tracking_uri": "server"})
    group = "table1-000"
    target = f"distill_{group.replace('-', '_')}"
    run_dirs = [Path(SW.runs[n].run_dir) for n in SW.groups[group]]
    squatter, proc = socket.socket(), None
    try:
        proc = _snakemake(results, target)
        # the outage: once the job has trained a first run, the server dies without a word
        wait_for(lambda: (run_dirs[0] / "metrics.jsonl").exists() or proc.poll() is not None, 300,
                 "the first run to train", poll=0.05)
        assert proc.poll() is None, "".join(proc.communicate())[-3000:]
        state = json.loads((server / "server.json").read_text())
        os.killpg(state["pid"], signal.SIGKILL)
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

        def squat():  # another program takes the port as soon as the dead server's socket is gone
            try:
                squatter.bind((state["host"], state["port"]))
            except OSError:
                return False
            squatter.listen()
            return True
        wait_for(squat, 30, "the server's port to be free", poll=0.05)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode != 0, "the DAG must fail while nothing can be tracked"
        assert "MLflow" in err, err[-3000:]
        assert not all((d / "done.json").exists() for d in run_dirs)  # the outage hit runs still to be logged

        proc = _snakemake(results, target)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        uri = server_uri(server)
        assert uri and not uri.endswith(f":{state['port']}"), uri  # a new port, which the new jobs found
        assert all((d / "done.json").exists() for d in run_dirs)
        assert_mlflow_holds_the_run_dirs(uri, run_dirs)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        squatter.close()
        stop_server(server)
