"""What the Snakefile calls: loading the scale config (with --config overrides), launching jobs through
submitit, and writing the manifests the aggregation reads. Kept out of the Snakefile so it can be tested."""
from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict
from pathlib import Path

from sim_core.errors import ConfigError
from sim_core.files import atomic_write_json
from sim_core.tracking.client import default_tracking_uri
from workflow.schema import ScaleConfig, load_scale
from workflow.sweep import Sweep, expand_cached

OVERRIDABLE = ("executor", "tracking_uri", "tracking_server_host", "tracking_server_port", "tracking_server_advertise",
               "results_dir", "runs_per_job", "resources",
               "default_resources", "asset_files")
MANAGED_SERVER = "server"  # tracking_uri value: an MLflow server this DAG starts (sim_core/tracking/server.py)
_server_lock = threading.Lock()  # Snakemake runs rules as threads; the server's own lock is per process


def load(config: dict) -> tuple[ScaleConfig, Sweep, str]:
    """Scale config named by ``config['scale']`` (default toy) or ``config['scale_config']`` (a path), with
    the overridable keys taken from Snakemake's --config; returns (scale, sweep, tracking URI)."""
    scale_name = config.get("scale", "toy")
    path = config.get("scale_config", f"configs/scales/{scale_name}.yaml")
    bad = set(config) - {"scale", "scale_config", *OVERRIDABLE}
    if bad:
        valid = ", ".join(["scale", "scale_config", *OVERRIDABLE])
        raise ConfigError(f"unknown --config key(s) {sorted(bad)}; valid: {valid}")
    S = load_scale(path)
    over = {k: config[k] for k in OVERRIDABLE if k in config}
    if over:
        from pydantic import ValidationError

        from sim_core.schema import format_error
        base = S.model_dump(exclude_unset=True)  # only what the file says: merged resources stay sparse
        for key in ("resources", "default_resources"):  # per kind of job, key by key on top of the file's
            if isinstance(over.get(key), dict):
                mine = base.get(key, {})
                over[key] = {k: {**mine.get(k, {}), **(v if isinstance(v, dict) else {})}
                             for k, v in {**mine, **over[key]}.items()}
        try:
            S = ScaleConfig.model_validate({**base, **over})
        except ValidationError as e:
            raise ConfigError(f"bad --config override: {format_error(e)}") from None
    uri = S.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(S.results_dir)
    check_tracking_target(S, uri)  # before the sweep's cache is written under results_dir
    sweep = expand_cached(S)
    return S, sweep, uri


def asset_needs(S: ScaleConfig, name: str) -> dict:
    """Builder argument -> path of each asset this one is built from (the asset rule's inputs)."""
    from workflow.sweep import asset_path
    return {arg: asset_path(S, other) for arg, other in S.assets[name].needs.items()}


def launch_asset(S: ScaleConfig, name: str, out: str):
    from workflow.jobs import build_asset
    from workflow.launch import submit_and_wait
    spec = {**S.assets[name].model_dump(exclude={"needs"}), **asset_needs(S, name)}
    return submit_and_wait(build_asset, (name, spec, out), f"asset-{name}",
                           Path(S.results_dir) / "submitit" / "assets", S.executor, S.job_resources("teacher"),
                           job_files=[str(Path(out).with_suffix(".job.json"))])


def launch_group(S: ScaleConfig, SW: Sweep, group: str, uri: str, marker: str | None = None):
    """Train a job group: submit its job, or wait for the one still running from an earlier DAG (job.json), or
    submit nothing when every run is done already (a job that ended while the DAG was not watching); then write
    the group's marker."""
    from workflow.jobs import DistillJob
    from workflow.launch import submit_and_wait
    specs = [asdict(SW.runs[n]) for n in SW.groups[group]]
    done = [Path(s["run_dir"]) / "done.json" for s in specs]
    if not all(p.exists() for p in done):
        submit_and_wait(DistillJob(), (specs, job_tracking_uri(S, uri), S.final_eval_seeds, _threads(S),
                                       S.final_eval_protocol), f"distill-{group}",
                        Path(S.results_dir) / "submitit" / "distill", S.executor, S.job_resources("distill"),
                        job_files=[str(Path(s["run_dir"]) / "job.json") for s in specs])
    result = []
    for s, p in zip(specs, done):
        if not p.exists():
            raise RuntimeError(f"the job of group {group} ended without finishing run {s['name']} ({p} is missing)")
        rec = json.loads(p.read_text())
        if rec["status"] not in ("finished", "diverged", "collapsed"):
            raise RuntimeError(f"run {rec['name']} ended with status {rec['status']}")
        result.append(rec)
    if marker is not None:
        atomic_write_json(marker, {"group": group, "runs": [r["name"] for r in result]})
    return result


def launch_teacher_rows(S: ScaleConfig, SW: Sweep, experiment: str, uri: str, out: str):
    from workflow.jobs import teacher_rows
    from workflow.launch import submit_and_wait
    from workflow.sweep import deep_merge
    base = deep_merge(S.base, S.experiments[experiment].overrides)  # the experiment's runs' own settings
    return submit_and_wait(teacher_rows, (SW.teacher_rows[experiment], job_tracking_uri(S, uri),
                                          base.get("eval", {}), out, _threads(S), base.get("device", "cpu"),
                                          S.final_eval_protocol),
                           f"teacher-rows-{experiment}", Path(S.results_dir) / "submitit" / "teacher_rows",
                           S.executor, S.job_resources("teacher_rows"), job_files=[out + ".job.json"])


def _threads(S: ScaleConfig):
    """torch threads of a job: the runs' own setting (1 at toy scale; null at paper scale: torch's default)."""
    return S.base.get("threads", 1)


def submit_aggregation(S: ScaleConfig, fn, args: tuple, name: str):
    """A job that reads results (a table, a figure, the report page, a study): `aggregate` resources on SLURM."""
    from workflow.launch import submit_and_wait
    return submit_and_wait(fn, args, name, Path(S.results_dir) / "submitit" / "aggregate", S.executor,
                           S.job_resources("aggregate"))


def launch_aggregate(S: ScaleConfig, SW: Sweep, target: str, experiment: str, uri: str, out_dir: str):
    from workflow.jobs import aggregate
    manifest = str(Path(S.results_dir) / "manifests" / f"{target}.json")
    write_manifest(S, SW, experiment, manifest)
    return submit_aggregation(S, aggregate, (target, manifest, job_tracking_uri(S, uri), out_dir, study_dir(S)),
                              f"aggregate-{target}")


def launch_study(S: ScaleConfig, SW: Sweep, table: str, uri: str, receipt: str):
    """Build the study of ``table``'s study column from its runs (`snakemake study`), as an aggregation job."""
    from workflow.jobs import study
    manifest = str(Path(S.results_dir) / "manifests" / f"study-{table}.json")
    write_manifest(S, SW, table, manifest)
    return submit_aggregation(S, study, (table, manifest, job_tracking_uri(S, uri), study_dir(S), receipt),
                              f"study-{table}")


def study_dir(S: ScaleConfig) -> str:
    """Where the preference study of the tables' study columns lives (`python -m workflow.study build --out` it)."""
    return str(Path(S.results_dir) / "study")


def study_inputs(S: ScaleConfig) -> list[str]:
    """The study's answers once a study exists there: new answers make its table again."""
    db = Path(study_dir(S)) / "answers.db"
    # while the server runs, SQLite (WAL mode) commits into answers.db-wal; answers.db changes at checkpoints only
    return [str(p) for p in (db, db.with_name("answers.db-wal")) if db.is_file() and p.is_file()]


def write_manifest(S: ScaleConfig, SW: Sweep, experiment: str, out: str) -> list[dict]:
    """One record per (run, membership in this experiment) with its MLflow run id, plus the teacher rows."""
    records = []
    for run in SW.experiment_runs(experiment):
        done = json.loads((Path(run.run_dir) / "done.json").read_text())
        for m in run.memberships:
            if m["experiment"] == experiment:
                records.append({**m, "name": run.name, "run_id": done["run_id"], "final_step": done["step"]})
    rows_file = Path(S.results_dir) / "teacher_rows" / f"{experiment}.json"
    if experiment in SW.teacher_rows and rows_file.exists():
        for rec in json.loads(rows_file.read_text()):
            kept = {k: v for k, v in rec.items() if k not in ("final", "testbed_config", "inputs")}
            records.append({**kept, "name": f"teacher-nfe{rec['nfe']}-s{rec['seed']}"})
    atomic_write_json(out, records)
    return records


def server_dir(S: ScaleConfig) -> Path:
    return Path(S.results_dir) / "mlflow-server"


def job_tracking_uri(S: ScaleConfig, uri: str) -> str:
    """What the jobs are told to log to. For the managed server: a "mlflow-server:<dir>" token, which a job
    resolves when it starts (sim_core/tracking/server.py resolve_tracking_uri), so that a job requeued after the
    server restarted finds it where it is now; the server is started here first if it is not running (same
    database under <results_dir>/mlflow-server, the same port when it is free)."""
    if uri != MANAGED_SERVER:
        return uri
    from sim_core.tracking.server import SERVER_TOKEN, start_server
    with _server_lock:
        start_server(server_dir(S), host=S.tracking_server_host, port=S.tracking_server_port,
                     advertise=S.tracking_server_advertise)
    return SERVER_TOKEN + str(server_dir(S).resolve())


def check_tracking_target(S: ScaleConfig, uri: str) -> None:
    """At DAG construction, before any job: an MLflow server named by URI must answer, and a sqlite store's
    directory must be writable; one ConfigError line otherwise."""
    if uri == MANAGED_SERVER:
        return
    if uri.startswith(("http://", "https://")):
        from sim_core.tracking.client import TrackingError, probe_server
        try:
            probe_server(uri, timeout=5.0)  # /health only: the Snakefile is parsed at every call, mlflow not imported
        except TrackingError as e:
            raise ConfigError(f"tracking_uri: {e}") from None
    elif uri.startswith("sqlite:///"):
        from sim_core.errors import CheckpointError
        from sim_core.files import check_output
        try:
            check_output(uri[len("sqlite:///"):], "the MLflow store")
        except CheckpointError as e:
            raise ConfigError(f"tracking_uri: {e}") from None


def track_store(S: ScaleConfig, uri: str, out: str) -> None:
    """Create the sqlite store once (several jobs creating it at once fail), or check that a server answers,
    or start the managed server."""
    from sim_core.tracking.client import check_tracking
    from sim_core.tracking.server import resolve_tracking_uri
    uri = resolve_tracking_uri(job_tracking_uri(S, uri))
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    check_tracking(uri)
    atomic_write_json(out, {"tracking_uri": uri})


def asset_fingerprint(SW: Sweep) -> str:
    """Size and modification time of each paper-scale file ('missing' if absent): the verify_assets rule's
    params, so that Snakemake checks a file again when it changes (a stat, not a hash: cheap at every parse)."""
    parts = []
    for name, path in sorted(SW.downloads.items()):
        try:
            st = os.stat(path)
            parts.append(f"{name}:{st.st_size}:{int(st.st_mtime)}")
        except OSError:
            parts.append(f"{name}:missing")
    return ",".join(parts)


def verify_assets(S: ScaleConfig, SW: Sweep, out: str) -> dict:
    """Checksums and content of every paper-scale file the experiments need (sim_core/assets.py)."""
    from sim_core.assets import verify_assets as verify
    info = verify(sorted(SW.downloads), S.asset_files.dir, S.asset_files.paths, S.asset_files.sha256)
    atomic_write_json(out, info)
    return info


def download_assets(S: ScaleConfig, SW: Sweep) -> dict:
    """Fetch the missing paper-scale files into asset_files.dir (or their asset_files.paths); verify the rest."""
    from sim_core.assets import download_assets as download
    return download(sorted(SW.downloads), S.asset_files.dir, S.asset_files.paths, S.asset_files.sha256)
