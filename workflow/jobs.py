"""What a submitit job runs: toy assets, a group of distillation runs (each tracked in MLflow and evaluated
at the end), and the teacher rows. Imported inside the job's own process."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import submitit

from sim_core.errors import EXIT_INTERRUPTED
from sim_core.files import atomic_write_json


def _job_id() -> str:
    try:
        import submitit
        return str(submitit.JobEnvironment().job_id)
    except Exception:
        return os.environ.get("SLURM_JOB_ID", "")


def join_process_group() -> None:
    """In a submitit job with several tasks (one per GPU), export torch.distributed's env:// variables
    (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE); sim_core.train.distributed joins the group from them."""
    import submitit
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (a direct call, a test)
        return
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def build_asset(name: str, spec: dict, out: str, threads: int = 1) -> dict:
    """An asset of the scale config's ``assets:`` built by its testbed's builder of that kind."""
    import torch
    torch.set_num_threads(threads)
    from sim_core.testbeds import TESTBEDS
    spec = {k: v for k, v in spec.items() if v is not None}
    kind, testbed = spec.pop("kind"), spec.pop("testbed")
    return TESTBEDS.get(testbed).build_asset(kind, spec, out)


def run_group(specs: list[dict], tracking_uri: str, final_eval_seeds: list[int], threads: int = 1,
              final_eval_protocol: str | None = None) -> list[dict]:
    """Train (or resume, or skip if done) each run, evaluate its final EMA generator, log it all to MLflow.

    MLflow calls run in a tracker process (sim_core.tracking.client.TrackerProcess): the next run starts
    training while the previous one's results are still being logged. A run's done.json is written only once
    MLflow holds everything of it; the job waits for all of them before it returns.

    In a job with several tasks every task runs this: all of them train each run as one data-parallel group
    (sim_core/train/distributed.py); rank 0 alone evaluates, tracks and writes done.json."""
    from sim_core.tracking.server import resolve_tracking_uri
    from sim_core.tracking.worker import TrackerProcess
    if _is_main_task():
        tracking_uri = resolve_tracking_uri(tracking_uri)  # the managed server where it is now
    worker = TrackerProcess() if _is_main_task() else None  # starts importing MLflow while torch loads here
    import torch
    if threads:
        torch.set_num_threads(threads)
    from sim_core.train.config import parse_config
    from sim_core.train.distributed import from_environment
    from sim_core.train.loop import distill
    from sim_core.train.provenance import git_state
    from sim_core.train.signals import StopSignals
    commit = git_state().get("commit") or ""
    join_process_group()
    dist = from_environment(specs[0]["config"].get("device", "cpu")) if specs else None
    if dist is not None and not dist.is_main:
        if worker is not None:
            worker.stop()
        for spec in specs:
            if not (Path(spec["run_dir"]) / "done.json").exists():
                status = distill(parse_config(spec["config"]), spec["run_dir"], dist=dist)
                if status["status"] == "interrupted":
                    _leave_for_requeue(status, [])
        return []
    worker = worker or TrackerProcess()
    pending = []  # trackers of runs whose MLflow calls may still be queued
    left = None   # the status record to leave with, when a stop signal came
    try:
        with StopSignals() as signals:  # between runs too: a requeue stops after the run in hand, never in its middle
            for spec in specs:
                if signals.received is not None:
                    left = {"status": "interrupted", "signal": signals.name()}
                    break
                status = _run_one(spec, tracking_uri, final_eval_seeds, final_eval_protocol, worker, dist,
                                  commit, pending)
                if status["status"] == "interrupted":
                    left = status
                    break
    except BaseException:
        for tr in pending:  # let finished runs reach MLflow and their done.json; the first error wins
            try:
                tr.close()
            except Exception:
                pass
        worker.stop(timeout=10)
        raise
    if left is not None:
        _leave_for_requeue(left, pending)
    for tr in pending:
        tr.close()
    worker.stop()
    return [json.loads((Path(s["run_dir"]) / "done.json").read_text()) for s in specs]


def _run_one(spec, tracking_uri, final_eval_seeds, final_eval_protocol, worker, dist, commit, pending) -> dict:
    """Train (or resume, or reopen) one run, evaluate it, and queue its MLflow calls: every record of its
    metrics.jsonl that the store does not hold yet (metrics.jsonl is the source of truth: a run that ended while the
    store was unreachable, or before a kill, is synced now), the final metrics once, its done.json last."""
    from sim_core.tracking.worker import BackgroundTracker
    from sim_core.train.config import parse_config
    from sim_core.train.evaluate import evaluate_snapshot, latest_snapshot
    from sim_core.train.loop import distill
    from sim_core.train.run_dir import read_metrics
    cfg = parse_config(spec["config"])
    run_dir = Path(spec["run_dir"])
    done = run_dir / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    experiments = sorted({m["experiment"] for m in spec["memberships"]})
    tags = dict(config_hash=cfg.hash(), git_commit=commit, scale=cfg.scale, status="running",
                job_id=_job_id(), experiments=",".join(experiments), testbed=cfg.testbed.kind,
                method=cfg.method.name, run_dir=str(run_dir.resolve()))
    opened = []

    def tracker():
        opened.append(BackgroundTracker(run_dir, tracking_uri, spec["owner"], spec["name"], cfg.to_dict(), tags,
                                        worker=worker))
        return opened[-1]
    t0 = time.perf_counter()
    try:
        status = distill(cfg, run_dir, tracker_factory=tracker, dist=dist)
        tr = opened[-1] if opened else tracker()  # a run that ended in an earlier job reopens its MLflow run
        t1 = time.perf_counter()
        final = {}
        if status["status"] == "finished":
            final = evaluate_snapshot(cfg, latest_snapshot(run_dir), final_eval_seeds, protocol=final_eval_protocol)
    except Exception:
        if opened:  # the MLflow run says 'failed'; the traceback reaches Snakemake
            opened[-1].finish({"status": "failed"})
            pending.append(opened[-1])
        raise
    t2 = time.perf_counter()
    if status["status"] == "interrupted":
        tr.finish(status)
        pending.append(tr)
        return status
    records = read_metrics(run_dir)
    tr.log_records(records, max((r["step"] for r in records), default=0), strict=True)  # skips what it holds
    if final:
        tr.log_metrics({f"final/{k}": v for k, v in final.items()}, step=cfg.train.iterations)
    tr.log_artifacts(run_dir / "samples")
    tr.finish(status)
    record = {**status, "name": spec["name"], "final": final, "job_id": _job_id(), "metrics_logged": len(records),
              "seconds": {"distill": round(t1 - t0, 3), "final_eval": round(t2 - t1, 3)}}
    tr.write_done(done, record)  # adds the run's MLflow id and its tracking seconds, once the store holds it all
    pending.append(tr)
    return status


def _is_main_task() -> bool:
    """Rank 0 of the job (the only task that tracks); true outside submitit and in single-task jobs."""
    try:
        return submitit.JobEnvironment().global_rank == 0
    except RuntimeError:  # not inside a submitit job
        return os.environ.get("RANK", "0") == "0"


class DistillJob(submitit.helpers.Checkpointable):
    """``run_group`` as a submitit Checkpointable job. When SLURM announces the time limit or a preemption
    (submitit's USR2), the loop finishes its iteration and checkpoints, then submitit requeues the same call,
    which skips the runs already done and resumes the others from their checkpoints (same MLflow runs)."""

    def __call__(self, specs, tracking_uri, final_eval_seeds, threads: int = 1, final_eval_protocol=None):
        return run_group(specs, tracking_uri, final_eval_seeds, threads, final_eval_protocol)


def _leave_for_requeue(status: dict, trackers: list) -> None:
    """A run checkpointed on a signal: end this process without a result, or the side that waits for the job
    would take it as done. For submitit's own signal (USR2: time limit, preemption notice, job._interrupt())
    the handler submitit installed, restored when the loop ended, checkpoints this Checkpointable and
    requeues it; on SIGTERM (`scontrol requeue`, preemption, scancel) SLURM itself requeues or cancels."""
    for tr in trackers:  # MLflow learns what was logged up to the checkpoint, and that the run was interrupted
        try:
            tr.close(timeout=60)
        except Exception:
            pass
    sig = status.get("signal", "")
    if sig == f"SIG{submitit.JobEnvironment.USR_SIG}":
        os.kill(os.getpid(), getattr(signal, sig))  # submitit: checkpoint() + requeue + exit (rank 0)
    sys.exit(EXIT_INTERRUPTED)


def aggregate(target: str, manifest: str, tracking_uri: str, out_dir: str, study_dir: str | None = None) -> list[str]:
    """One table or figure from MLflow (workflow/report) in the job's own process: matplotlib is not
    thread-safe, and Snakemake runs `run:` rules as threads."""
    import contextlib
    import io

    from sim_core.tracking.server import resolve_tracking_uri
    from workflow.report.__main__ import main
    tracking_uri = resolve_tracking_uri(tracking_uri)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main([target, "--manifest", manifest, "--tracking-uri", tracking_uri, "--out-dir", out_dir]
                    + (["--study", study_dir] if study_dir else []))
    if code:
        raise RuntimeError(err.getvalue().strip() or f"aggregation of {target} failed with code {code}")
    return out.getvalue().split()


def study(table: str, manifest: str, tracking_uri: str, out_dir: str, receipt: str) -> dict:
    """The preference study of a table's study column, built from its runs' samples (workflow/study/from_runs.py);
    the receipt says which study of which runs the folder holds."""
    from sim_core.tracking.server import resolve_tracking_uri
    from workflow.report.manifest import load_manifest
    from workflow.study.from_runs import build_from_runs
    built = build_from_runs(table, load_manifest(manifest), resolve_tracking_uri(tracking_uri), out_dir)
    kept = {k: built[k] for k in ("study_id", "label_a", "label_b", "sources", "n_prompts")}
    atomic_write_json(receipt, {**kept, "folder": out_dir, "pairs": len(built["pairs"]),
                                "invitations": len(built["raters"])})
    return kept


def teacher_rows(records: list[dict], tracking_uri: str, eval_cfg: dict, out: str, threads: int = 1,
                 device: str = "cpu", protocol: str | None = None) -> list[dict]:
    """The teacher's own EDM Heun sampler at each NFE and seed, evaluated like the distilled generators (at
    CIFAR-10 by the same FID protocol); one MLflow run per (NFE, seed) in the experiment of the table."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from sim_core.testbeds import TESTBEDS, load_testbed
    from sim_core.tracking.client import ensure_experiment
    from sim_core.tracking.server import resolve_tracking_uri
    from sim_core.train.config import EvalConfig
    from sim_core.train.provenance import provenance
    tracking_uri = resolve_tracking_uri(tracking_uri)
    ecfg = EvalConfig(**eval_cfg)
    client = MlflowClient(tracking_uri)
    done = []
    testbeds = {}
    for rec in records:
        tb_cfg = TESTBEDS.get(rec["testbed"]).config(**rec["testbed_config"])
        key = tb_cfg.model_dump_json()
        tb = testbeds.get(key) or testbeds.setdefault(key, load_testbed(tb_cfg))
        metrics = tb.teacher_metrics(rec["nfe"], rec["seed"], ecfg, protocol=protocol, device=device)
        exp_id = ensure_experiment(client, rec["experiment"], tracking_uri)
        pictures = Path(out).parent / f"{Path(out).stem}-samples" / f"nfe{rec['nfe']}-s{rec['seed']}"
        # what the row was computed from and on (as a run directory's provenance.json): the report shows it
        what = {"testbed": rec["testbed"], "testbed_config": tb_cfg.model_dump(mode="json"), "nfe": rec["nfe"],
                "seed": rec["seed"], "eval": ecfg.model_dump(mode="json"), "protocol": protocol}
        config_hash = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
        prov = provenance(config_hash, {"teacher_row": what, "threads": torch.get_num_threads()})
        atomic_write_json(pictures / "provenance.json", prov)
        run = client.create_run(exp_id, run_name=f"teacher-nfe{rec['nfe']}-s{rec['seed']}",
                                tags={"status": "finished", "kind": "teacher", "scale": rec["scale"],
                                      "config_hash": config_hash, "git_commit": prov["git"]["commit"] or "",
                                      "run_dir": str(pictures.resolve())})
        client.log_batch(run.info.run_id,
                         metrics=[Metric(f"final/{k}", float(v), 0, 0) for k, v in metrics.items()
                                  if isinstance(v, (int, float)) and not isinstance(v, bool)],
                         params=[Param("nfe", str(rec["nfe"])), Param("seed", str(rec["seed"])),
                                 Param("teacher", tb_cfg.teacher)],
                         tags=[RunTag("experiments", rec["experiment"])])
        tb.save_teacher_samples(rec["nfe"], rec["seed"], pictures / "samples" / "teacher.png")
        if (pictures / "samples").is_dir():
            client.log_artifacts(run.info.run_id, str(pictures / "samples"), artifact_path="samples")
        client.set_terminated(run.info.run_id)
        done.append({**rec, "run_id": run.info.run_id, "final": metrics})
    atomic_write_json(out, done)
    return done
