"""Experiment tracking in MLflow: one MLflow run per distillation run, resumed with it.

Metrics reach MLflow in batches (``log_batch``), only up to the last checkpoint: the loop syncs after each
checkpoint from its own metrics.jsonl, so a resumed run continues the same MLflow run with one continuous
history and no duplicated steps. The JSONL file in the run directory keeps everything if tracking fails.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

from sim_core.files import atomic_write_json

MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch call


class TrackingError(ValueError):
    """The tracking store cannot be reached or does not hold the expected run."""


def default_tracking_uri(results_dir="results") -> str:
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def probe_server(uri: str, timeout: float = 10.0) -> None:
    """An MLflow server must answer /health: one TrackingError line otherwise."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status != 200:
                raise TrackingError(f"tracking server {uri} is unhealthy: /health answered {r.status}")
    except (urllib.error.URLError, OSError) as e:
        raise TrackingError(f"tracking store {uri} is unreachable: {getattr(e, 'reason', e)}") from None


def check_tracking(uri: str, timeout: float = 10.0) -> None:
    """Fail with one line if the tracking store cannot be reached (before any job starts). A server is
    probed at /health first: MLflow's client retries a dead server with backoff for ~4 minutes."""
    if uri.startswith(("http://", "https://")):
        probe_server(uri, timeout)
    from mlflow.tracking import MlflowClient
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:  # unwritable sqlite path, bad URI, a server that answers /health but not the API
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise TrackingError(f"tracking store {uri} is unreachable: {first}") from None


def ensure_experiment(client, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created if needed. With a sqlite store, artifacts go beside the
    database (<dir>/mlartifacts), not into ./mlruns of whatever directory the job runs in. Jobs starting
    together race to create it: the losers look it up again."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        location = (Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts" / name).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e) and "already exists" not in str(e):
            raise
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class MLflowTracker:
    """Creates (or reopens, from ``run_dir/mlflow.json``) the MLflow run of one distillation run."""

    def __init__(self, run_dir, tracking_uri: str, experiment: str, run_name: str, params: dict, tags: dict):
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient
        self.run_dir, self.uri = Path(run_dir), tracking_uri
        id_file = self.run_dir / "mlflow.json"
        try:
            self.client = MlflowClient(tracking_uri)
            if id_file.exists():
                self.run_id = json.loads(id_file.read_text())["run_id"]
                run = self.client.get_run(self.run_id)
                self.synced_step = int(run.data.tags.get("synced_step", -1))
                self.pending = []
                # A sync cut short (the job killed between the metrics and the synced_step tag, which the
                # store commits separately) leaves values past synced_step: never log those twice.
                self.stored = {(key, m.step) for key in run.data.metrics
                               for m in self.client.get_metric_history(self.run_id, key) if m.step > self.synced_step}
                self.client.update_run(self.run_id, status="RUNNING")
                return
            exp_id = ensure_experiment(self.client, experiment, tracking_uri)
            orphan = self._orphan(exp_id, tags.get("run_dir"))
            if orphan is not None:  # created by a job killed before it wrote mlflow.json: take it over
                self.run_id = orphan
                self.client.update_run(self.run_id, status="RUNNING")
                self.synced_step, self.pending = -1, []
                self.stored = {(key, m.step) for key in self.client.get_run(orphan).data.metrics
                               for m in self.client.get_metric_history(orphan, key)}
                atomic_write_json(id_file, {"run_id": self.run_id, "experiment": experiment,
                                            "tracking_uri": tracking_uri})
                return
            run = self.client.create_run(exp_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()})
            self.run_id = run.info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(params).items())]
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i:i + 100])
            self.client.log_batch(self.run_id, tags=[RunTag("synced_step", "-1")])
        except TrackingError:
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise TrackingError(f"tracking store {tracking_uri}: {first}") from None
        self.synced_step = -1
        self.pending: list[dict] = []  # records not yet acknowledged by the store (a failed sync retries them)
        self.stored: set[tuple[str, int]] = set()  # (key, step) past synced_step that the store already holds
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(id_file, {"run_id": self.run_id, "experiment": experiment, "tracking_uri": tracking_uri})

    def _orphan(self, exp_id: str, run_dir) -> str | None:
        """The MLflow run of this run directory that a killed job created but never recorded in mlflow.json."""
        if not run_dir:
            return None
        found = self.client.search_runs([exp_id], filter_string=f"tags.run_dir = '{run_dir}'", max_results=2)
        return found[0].info.run_id if found else None

    def log_records(self, records: list[dict], up_to_step: int, strict: bool = False) -> None:
        """Take over ``records``; log those with synced_step < step <= up_to_step in batches, then remember
        up_to_step. If the store fails, they stay pending and the next call retries those the store does not
        hold yet (each batch is committed on its own, and the synced_step tag after them). During training a failure
        is a warning (metrics.jsonl keeps everything); with ``strict`` (a run's last sync, before its done.json) it
        is a TrackingError."""
        from mlflow.entities import Metric, RunTag
        self.pending = self.pending + [r for r in records if r["step"] > self.synced_step]
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(r["step"])) for r in self.pending if r["step"] <= up_to_step
                   for k, v in r.items() if k not in ("step",) and isinstance(v, (int, float))
                   and not isinstance(v, bool) and math.isfinite(v) and (k, int(r["step"])) not in self.stored]
        try:
            for i in range(0, len(metrics), MAX_BATCH):
                batch = metrics[i:i + MAX_BATCH]
                self.client.log_batch(self.run_id, metrics=batch)
                self.stored.update((m.key, m.step) for m in batch)
            self.client.log_batch(self.run_id, tags=[RunTag("synced_step", str(up_to_step))])
        except Exception as e:  # keep training: metrics.jsonl has everything, the next sync retries
            if strict:
                raise TrackingError(f"MLflow logging to {self.uri} failed: {str(e).splitlines()[0][:200]}; run the "
                                    "same command again once the store answers: metrics.jsonl holds everything") \
                    from None
            warnings.warn(f"MLflow logging failed, will retry at the next checkpoint: {str(e)[:200]}")
            return
        self.synced_step = up_to_step
        self.pending = [r for r in self.pending if r["step"] > up_to_step]
        self.stored = {ks for ks in self.stored if ks[1] > up_to_step}

    def log_metrics(self, metrics: dict, step: int) -> None:
        """Log one set of values at ``step`` regardless of the sync point (the final evaluation), once: keys the
        run holds already (logged by a job killed before its done.json) are not logged again."""
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        held = set(self.client.get_run(self.run_id).data.metrics)
        batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and k not in held]
        for i in range(0, len(batch), MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=batch[i:i + MAX_BATCH])

    def set_tags(self, **tags) -> None:
        self.set_tags_dict(tags)

    def set_tags_dict(self, tags: dict) -> None:
        from mlflow.entities import RunTag
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, path) -> None:
        if Path(path).exists():
            self.client.log_artifacts(self.run_id, str(path), artifact_path=Path(path).name)

    def finish(self, status: dict) -> None:
        tags = {"status": status["status"]}
        for key in ("diverged_at", "reason", "nonfinite_steps", "first_nonfinite_step"):  # reason: why it ended so
            if key in status:
                tags[key] = status[key]
        self.set_tags(**tags)
        state = {"finished": "FINISHED", "diverged": "FINISHED", "collapsed": "FINISHED",
                 "interrupted": "KILLED"}.get(status["status"], "FAILED")
        self.client.set_terminated(self.run_id, status=state)
