"""Against a real SLURM controller with accounting and fake GPUs, started by scripts/slurm_cluster.sh (CI brings
it up in .ci/run; on a developer machine the fixture starts it if `sbatch` is installed and stops it after):
the smoke DAG through `snakemake --profile slurm`, preemption by `scontrol requeue`, re-attach after the
Snakemake process is killed, and 16 SLURM jobs logging to one MLflow server at once.

Skipped with a reason where `sbatch` is absent; never in CI (SIM_REQUIRE_SLURM=1 turns the skip into a failure)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from conftest import gmm_config, wait_for
from mlflow_checks import assert_mlflow_holds_the_run_dirs
from numerics import assert_same_weights

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "slurm_cluster.sh"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

if shutil.which("sbatch") is None:
    if os.environ.get("SIM_REQUIRE_SLURM"):
        raise RuntimeError("SIM_REQUIRE_SLURM is set but sbatch is not installed: run scripts/slurm_cluster.sh up")
    pytest.skip("sbatch is not installed: `scripts/slurm_cluster.sh up` installs and starts a local cluster",
                allow_module_level=True)


@pytest.fixture(scope="module")
def cluster():
    was_up = subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode == 0
    if not was_up:
        subprocess.run([str(SCRIPT), "up"], check=True, capture_output=True, timeout=600)
    for line in subprocess.run([str(SCRIPT), "env"], check=True, capture_output=True, text=True).stdout.splitlines():
        if line.startswith("export "):
            key, value = line[len("export "):].split("=", 1)
            os.environ[key] = value.strip("'\"")
    yield
    if not was_up:
        subprocess.run([str(SCRIPT), "down"], check=True, capture_output=True, timeout=300)


def _sacct(*args) -> list[list[str]]:
    out = subprocess.run(["sacct", "-n", "-P", "-X", *args], check=True, capture_output=True, text=True).stdout
    return [line.split("|") for line in out.splitlines() if line]


def _state(job_id: str) -> str:
    """The job's state in accounting ('' until slurmdbd has heard of it)."""
    rows = _sacct("-j", job_id, "--format=State")
    return rows[0][0] if rows else ""


def _snakemake_slurm(results, *targets, extra=(), config=(), timeout=1200):
    return subprocess.run(SNAKEMAKE + ["--profile", "slurm", *targets, "--quiet", "progress", *extra,
                                       "--config", "scale=smoke", f"results_dir={results}",
                                       "tracking_server_host=127.0.0.1", *config],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _stop_server(results):
    from sim_core.tracking.server import stop_server
    stop_server(Path(results) / "mlflow-server")


def test_smoke_dag_through_the_slurm_profile_gives_the_local_tables(cluster, smoke_local, tmp_path):
    results = tmp_path / "results"
    t0 = time.time()
    try:
        # one GPU per distillation job on top of the profile's CPU/memory defaults (merged key by key)
        p = _snakemake_slurm(results, "all_tables", config=["resources={distill: {gpus_per_node: 1}}"])
        assert p.returncode == 0, p.stderr[-4000:]
        print(f"smoke DAG on SLURM: {time.time() - t0:.0f} s")
        for table in ("table1", "table2"):  # same seeds, same numbers (the run names differ by results_dir)
            ours, local = (pd.read_csv(d / "tables" / f"{table}.csv") for d in (results, smoke_local))
            pd.testing.assert_frame_equal(ours, local)
        lr = [pd.read_csv(d / "figures" / "lr_sweep.csv") for d in (results, smoke_local)]
        pd.testing.assert_frame_equal(lr[0].drop(columns=["name"], errors="ignore"),
                                      lr[1].drop(columns=["name"], errors="ignore"))
        tracking = json.loads((results / "tracking.json").read_text())["tracking_uri"]
        assert tracking.startswith("http://")  # the profile's managed MLflow server, not a shared sqlite file
        # every distillation job went through SLURM with the (fake) GPU asked for, and the profile's
        # default_resources for the rest (slurm/cluster.yaml: 2 CPUs, 8 GB)
        jobs = {json.loads(f.read_text())["job_id"] for f in results.glob("runs/*/job.json")}
        assert jobs and all(json.loads(f.read_text())["cluster"] == "slurm" for f in results.glob("runs/*/job.json"))
        for job_id in jobs:
            ((state, tres),) = [r[1:] for r in _sacct("-j", job_id, "--format=JobID,State,AllocTRES")]
            assert state == "COMPLETED" and "gres/gpu=1" in tres and "cpu=2" in tres and "mem=8G" in tres, \
                (job_id, state, tres)
    finally:
        _stop_server(results)


def test_scontrol_requeue_resumes_bitwise_with_one_mlflow_history(cluster, tmp_path, gmm_teacher):
    import submitit
    from mlflow.tracking import MlflowClient

    from sim_core.tracking.client import check_tracking
    from sim_core.train.config import parse_config
    from sim_core.train.loop import distill
    from sim_core.train.run_dir import read_metrics
    from workflow.jobs import DistillJob
    cfg = parse_config(gmm_config(gmm_teacher, train=dict(iterations=600, log_every=5, eval_every=200,
                                                           checkpoint_every=50)))
    distill(cfg, tmp_path / "reference")
    run_dir, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    check_tracking(uri)
    spec = dict(config=cfg.to_dict(), run_dir=str(run_dir), owner="requeue", name="r",
                memberships=[{"experiment": "requeue"}])
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    ex.update_parameters(timeout_min=20, slurm_gres="gpu:1", cpus_per_task=1, mem_gb=2)
    job = ex.submit(DistillJob(), [spec], uri, [1000])
    wait_for(lambda: any(r["step"] >= 100 for r in read_metrics(run_dir)), 300, "the job to pass step 100", poll=0.2)
    t0 = time.time()
    subprocess.run(["scontrol", "requeue", job.job_id], check=True)
    (record,) = job.result()
    print(f"requeued job finished {time.time() - t0:.0f} s after `scontrol requeue`")
    assert record["status"] == "finished" and record["step"] == 600
    # the result is written just before the job's process exits: let SLURM see it end
    wait_for(lambda: _state(job.job_id) == "COMPLETED", 60, "the job to complete", poll=0.2)
    restarts = _sacct("-j", job.job_id, "--duplicates", "--format=JobID,State")
    assert [r[1] for r in restarts] == ["REQUEUED", "COMPLETED"], restarts  # it ran twice
    assert_same_weights(tmp_path / "reference", run_dir)
    steps = [r["step"] for r in read_metrics(run_dir) if "loss_gen" in r]
    assert steps == list(range(5, 601, 5))
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("requeue").experiment_id])
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss_gen")) == steps


def test_killed_snakemake_reattaches_to_the_running_job(cluster, tmp_path):
    """Kill Snakemake while a distillation job runs on SLURM; the same command again waits for that job."""
    from workflow.dag import load
    results = tmp_path / "results"
    S, SW, _ = load({"scale": "smoke", "results_dir": str(results)})
    group = "table1-000"
    target = f"distill_{group.replace('-', '_')}"
    job_file = Path(SW.runs[SW.groups[group][0]].run_dir) / "job.json"
    proc = None
    try:
        # assets first (their own jobs), so that the group's job is the one running when Snakemake dies
        p = _snakemake_slurm(results, *SW.assets.values(), str(results / "tracking.json"))
        assert p.returncode == 0, p.stderr[-3000:]
        proc = subprocess.Popen(SNAKEMAKE + ["--profile", "slurm", target, "--quiet", "all", "--config",
                                             "scale=smoke", f"results_dir={results}", "tracking_server_host=127.0.0.1"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        wait_for(job_file.exists, 120, "the distillation job to be submitted", poll=0.2)
        job_id = json.loads(job_file.read_text())["job_id"]
        wait_for(lambda: _state(job_id) == "RUNNING", 120, "the job to run", poll=0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # the Snakemake process dies; the SLURM job does not
        proc.wait()
        assert _state(job_id) == "RUNNING"
        # a killed Snakemake leaves its lock behind: --nolock (or `snakemake --unlock` once) as after any crash
        p = _snakemake_slurm(results, target, extra=("--nolock",))
        assert p.returncode == 0, p.stderr[-3000:]
        submissions = sorted(p.name for p in (results / "submitit" / "distill").glob("*_submitted.pkl"))
        assert submissions == [f"{job_id}_submitted.pkl"], submissions  # never submitted a second time
        wait_for(lambda: _state(job_id) == "COMPLETED", 60, "the job to complete", poll=0.2)
        since = json.loads(job_file.read_text())
        assert since["job_id"] == job_id  # never resubmitted: the record still names the first job
        group_jobs = {json.loads((Path(SW.runs[n].run_dir) / "done.json").read_text())["job_id"]
                      for n in SW.groups[group]}
        assert group_jobs == {job_id}
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _stop_server(results)


def test_reattach_after_some_runs_finished_and_after_the_job_completed(cluster, tmp_path):
    """Snakemake killed while a group's job runs with some of its runs done, and killed while a job that then
    completes runs: the same command again submits nothing twice (sacct), keeps every done.json and logs no
    MLflow value twice."""
    from workflow.dag import load
    results = tmp_path / "results"
    S, SW, _ = load({"scale": "smoke", "results_dir": str(results)})
    t_start = time.strftime("%Y-%m-%dT%H:%M:%S")
    moments = {"figure2-000": "after_some_runs", "table1-000": "after_the_job_completed"}
    proc = None

    def start(target):
        return subprocess.Popen(SNAKEMAKE + ["--profile", "slurm", target, "--quiet", "all", "--config",
                                             "scale=smoke", f"results_dir={results}", "tracking_server_host=127.0.0.1"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        p = _snakemake_slurm(results, *SW.assets.values(), str(results / "tracking.json"))
        assert p.returncode == 0, p.stderr[-3000:]
        uri = json.loads((results / "tracking.json").read_text())["tracking_uri"]
        first_jobs = {}
        for group, moment in moments.items():
            target = f"distill_{group.replace('-', '_')}"
            run_dirs = [Path(SW.runs[n].run_dir) for n in SW.groups[group]]
            proc = start(target)
            wait_for((run_dirs[0] / "job.json").exists, 120, f"the job of {group} to be submitted", poll=0.1)
            job_id = json.loads((run_dirs[0] / "job.json").read_text())["job_id"]
            if moment == "after_some_runs":
                wait_for(lambda: any((d / "done.json").exists() for d in run_dirs), 300, "a first run done", poll=0.05)
            else:
                wait_for(lambda: _state(job_id) == "RUNNING", 120, "the job to run", poll=0.1)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if moment == "after_some_runs":
                done_before = {d: (d / "done.json").read_bytes() for d in run_dirs if (d / "done.json").exists()}
                assert 0 < len(done_before) < len(run_dirs) and _state(job_id) == "RUNNING"  # the moment we meant
            else:
                wait_for(lambda: _state(job_id) == "COMPLETED", 300, "the job to complete unwatched", poll=0.2)
                done_before = {d: (d / "done.json").read_bytes() for d in run_dirs}
            p = _snakemake_slurm(results, target, extra=("--nolock",))
            assert p.returncode == 0, p.stderr[-3000:]
            assert Path(SW.group_marker(group, results)).exists()
            for d, text in done_before.items():
                assert (d / "done.json").read_bytes() == text, d  # kept as it was, never rewritten
            assert {json.loads((d / "done.json").read_text())["job_id"] for d in run_dirs} == {job_id}
            first_jobs[group] = job_id
        submitted = sorted(f.name for f in (results / "submitit" / "distill").glob("*_submitted.pkl"))
        assert submitted == sorted(f"{j}_submitted.pkl" for j in first_jobs.values()), submitted
        names = Counter(r[0] for r in _sacct("-S", t_start, "--format=JobName"))
        assert {g: names[f"distill-{g}"] for g in moments} == {g: 1 for g in moments}, names
        assert_mlflow_holds_the_run_dirs(uri, [Path(SW.runs[n].run_dir) for g in moments for n in SW.groups[g]])
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _stop_server(results)


def test_scontrol_requeue_between_runs_of_a_group_loses_no_curve(cluster, smoke_local, tmp_path):
    """`scontrol requeue` the moment a group's job has finished a run (between two runs): the job leaves after
    the run in hand, comes back, and every run ends with its whole history in MLflow, no orphan RUNNING run,
    and the final weights of the uninterrupted local DAG, bitwise."""
    from workflow.dag import load
    results = tmp_path / "results"
    shutil.copytree(smoke_local / "assets", results / "assets")
    group = "figure2-000"
    target = f"distill_{group.replace('-', '_')}"
    _, SW, _ = load({"scale": "smoke", "results_dir": str(results)})
    _, SW_ref, _ = load({"scale": "smoke", "results_dir": str(smoke_local)})
    run_dirs = [Path(SW.runs[n].run_dir) for n in SW.groups[group]]
    proc = subprocess.Popen(SNAKEMAKE + ["--profile", "slurm", target, "--quiet", "progress", "--config",
                                         "scale=smoke", f"results_dir={results}", "tracking_server_host=127.0.0.1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for((run_dirs[0] / "job.json").exists, 120, "the job to be submitted", poll=0.1)
        job_id = json.loads((run_dirs[0] / "job.json").read_text())["job_id"]
        wait_for(lambda: any((d / "done.json").exists() for d in run_dirs), 300, "a first run done", poll=0.02)
        subprocess.run(["scontrol", "requeue", job_id], check=True)
        n_done = sum((d / "done.json").exists() for d in run_dirs)
        assert n_done < len(run_dirs)
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        wait_for(lambda: _state(job_id) == "COMPLETED", 60, "the job to complete", poll=0.2)
        restarts = _sacct("-j", job_id, "--duplicates", "--format=JobID,State")
        assert [r[1] for r in restarts] == ["REQUEUED", "COMPLETED"], restarts  # it did leave and come back
        uri = json.loads((results / "tracking.json").read_text())["tracking_uri"]
        assert_mlflow_holds_the_run_dirs(uri, run_dirs)
        # the same sweep point in the local DAG (run names carry a hash of results_dir: paired by membership)
        point = {json.dumps(SW_ref.runs[n].memberships, sort_keys=True): SW_ref.runs[n].run_dir
                 for n in SW_ref.groups[group]}
        for n in SW.groups[group]:
            assert_same_weights(Path(point[json.dumps(SW.runs[n].memberships, sort_keys=True)]),
                                Path(SW.runs[n].run_dir))
        print(f"requeued with {n_done} of {len(run_dirs)} runs done")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _stop_server(results)


def test_16_slurm_jobs_log_to_one_server_and_lose_nothing(cluster, tmp_path):
    import submitit
    from mlflow.tracking import MlflowClient

    from sim_core.tracking.server import start_server, stop_server

    from mlflow_load import KEYS, N_PROCS, N_STEPS, WORKER, expected_value
    server_dir = tmp_path / "server"
    uri = start_server(server_dir, host="127.0.0.1")
    try:
        ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
        ex.update_parameters(timeout_min=10, cpus_per_task=1, mem_gb=1, name="mlflow-concurrency")
        env = dict(os.environ, TEST_DIR=str(ROOT / "tests"), PYTHONPATH=str(ROOT))
        with ex.batch():
            jobs = [ex.submit(submitit.helpers.CommandFunction(
                [sys.executable, "-c", WORKER, uri, "concurrent", str(tmp_path), str(i)], cwd=str(ROOT), env=env))
                for i in range(N_PROCS)]
        wait_for(lambda: len(list(tmp_path.glob("ready.*"))) == N_PROCS, 300, "16 jobs running at once", poll=0.2)
        (tmp_path / "go").touch()
        results = [json.loads(j.result().strip().splitlines()[-1]) for j in jobs]
        assert max(r["t_go"] for r in results) < min(r["t_done"] for r in results)  # they overlapped
        client = MlflowClient(uri)
        checked = 0
        for r in results:
            assert client.get_run(r["run_id"]).info.status == "FINISHED" and not r["warnings"]
            for key in KEYS:
                got = Counter((m.step, m.value) for m in client.get_metric_history(r["run_id"], key))
                assert got == Counter((s, expected_value(r["worker"], s, key)) for s in range(N_STEPS))
                checked += sum(got.values())
        assert checked == N_PROCS * N_STEPS * len(KEYS)
    finally:
        stop_server(server_dir)


def test_a_job_that_fails_for_good_shows_its_remote_traceback(cluster, smoke_local, tmp_path):
    """A corrupt teacher makes the SLURM job fail; Snakemake's log carries the job's own traceback."""
    results = tmp_path / "results"
    shutil.copytree(smoke_local / "assets", results / "assets")
    (results / "assets" / "teacher_digits.pt").write_bytes(b"not a torch file")
    try:
        p = _snakemake_slurm(results, "distill_table1_000")
        assert p.returncode != 0
        assert "Traceback" in p.stderr and "load_testbed" in p.stderr, p.stderr[-3000:]
        assert "teacher_digits.pt is corrupt or not a torch file" in p.stderr, p.stderr[-3000:]
    finally:
        _stop_server(results)
