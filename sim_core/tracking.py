"""Experiment tracking in MLflow: one MLflow run per distillation run, resumed with it.

Metrics reach MLflow in batches (``log_batch``), only up to the last checkpoint: the loop syncs after each
checkpoint from its own metrics.jsonl, so a resumed run continues the same MLflow run with one continuous
history and no duplicated steps. The JSONL file in the run directory keeps everything if tracking fails.
"""
from __future__ import annotations

import json
import math
import queue
import threading
import time
import warnings
from pathlib import Path
from .checkpoint import atomic_write_json

MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch call


class TrackingError(ValueError):
    """The tracking store cannot be reached or does not hold the expected run."""


def default_tracking_uri(results_dir="results") -> str:
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def check_tracking(uri: str, timeout: float = 10.0) -> None:
    """Fail with one line if the tracking store cannot be reached (before any job starts). A server is
    probed at /health first: MLflow's client retries a dead server with backoff for ~4 minutes."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status != 200:
                    raise TrackingError(f"tracking server {uri} is unhealthy: /health answered {r.status}")
        except (urllib.error.URLError, OSError) as e:
            raise TrackingError(f"tracking store {uri} is unreachable: {getattr(e, 'reason', e)}") from None
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

    def log_records(self, records: list[dict], up_to_step: int) -> None:
        """Take over ``records``; log those with synced_step < step <= up_to_step in batches, then remember
        up_to_step. If the store fails, they stay pending and the next call retries those the store does not
        hold yet (each batch is committed on its own, and the synced_step tag after them)."""
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
            warnings.warn(f"MLflow logging failed, will retry at the next checkpoint: {str(e)[:200]}")
            return
        self.synced_step = up_to_step
        self.pending = [r for r in self.pending if r["step"] > up_to_step]
        self.stored = {ks for ks in self.stored if ks[1] > up_to_step}

    def log_metrics(self, metrics: dict, step: int) -> None:
        """Log one set of values at ``step`` regardless of the sync point (the final evaluation)."""
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
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
        if "diverged_at" in status:
            tags["diverged_at"] = status["diverged_at"]
        self.set_tags(**tags)
        state = {"finished": "FINISHED", "diverged": "FINISHED", "interrupted": "KILLED"}.get(status["status"], "FAILED")
        self.client.set_terminated(self.run_id, status=state)


def _execute(state: dict, key: str, op: str, args: tuple) -> None:
    """Run one queued tracking call of run ``key`` (on a worker thread, or in the tracker process). After a
    run's first error its later calls are skipped; the error is reported at that run's ``sync``."""
    trackers, errors, busy = state["trackers"], state["errors"], state["busy"]
    if errors.get(key) is not None:
        return
    t0 = time.perf_counter()
    try:
        if op == "create":
            trackers[key] = MLflowTracker(*args[0], **args[1])
        elif op == "write_done":  # done.json: written only once MLflow holds everything of the run
            path, record = args
            record["seconds"]["tracking_background"] = round(busy.get(key, 0.0) + time.perf_counter() - t0, 3)
            atomic_write_json(path, {**record, "run_id": trackers[key].run_id})
        else:
            getattr(trackers[key], op)(*args)
    except BaseException as e:  # noqa: BLE001 - reported to the job at close()
        errors[key] = e
    busy[key] = busy.get(key, 0.0) + time.perf_counter() - t0


def _new_state() -> dict:
    return {"trackers": {}, "errors": {}, "busy": {}}


class TrackerThread:
    """One worker thread that runs queued MLflow calls in order; the runs of a job share it, so one process
    never talks to the store from two threads at once. Cheap to start (tests, single runs); a job uses
    :class:`TrackerProcess`, which keeps MLflow off the training process's interpreter altogether."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self.state = _new_state()
        self.thread = threading.Thread(target=self._work, name="mlflow-tracker", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            if callable(item):
                item()
            else:
                _execute(self.state, *item)

    def submit(self, key: str, op: str, *args) -> None:
        self.queue.put((key, op, args))

    def sync(self, key: str, timeout: float | None = None):
        """Wait until the calls of run ``key`` queued so far have run: (first error or None, busy seconds)."""
        done = threading.Event()
        self.queue.put(done.set)
        if not done.wait(timeout):
            raise TrackingError(f"MLflow calls still running after {timeout} s")
        return self.state["errors"].get(key), self.state["busy"].get(key, 0.0)

    def stop(self, timeout: float | None = None) -> None:
        self.queue.put(None)
        self.thread.join(timeout)


def _serve(requests, replies, parent_pid: int) -> None:
    """The tracker process: imports MLflow at once (while the job imports torch), then runs the calls it is
    sent, in order. It exits on ``None`` or when the job's process has gone."""
    import os
    try:
        import mlflow.tracking  # noqa: F401  (the ~2 s import, off the training process)
    except Exception:  # reported by the first call that needs it
        pass
    state = _new_state()
    while True:
        try:
            item = requests.get(timeout=2.0)
        except queue.Empty:
            if os.getppid() != parent_pid:
                return
            continue
        if item is None:
            return
        key, op, args = item
        if op == "sync":
            err = state["errors"].get(key)
            if err is not None:
                try:
                    import pickle
                    pickle.dumps(err)
                except Exception:
                    err = TrackingError(f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}")
            replies.put((args[0], err, state["busy"].get(key, 0.0)))
        else:
            _execute(state, key, op, args)


class TrackerProcess:
    """MLflow calls in a separate (spawned) process, in the order they are submitted: the training process
    never imports MLflow, never opens the store and never shares its interpreter lock with tracking, so the
    job's first run trains at full speed (benchmarks/bench_harness_overhead.py). Same interface as
    :class:`TrackerThread`."""

    def __init__(self):
        import multiprocessing
        import os
        ctx = multiprocessing.get_context("spawn")  # not fork: the job's process may hold torch's threads
        self.requests, self.replies = ctx.Queue(), ctx.Queue()
        self.process = ctx.Process(target=_serve, args=(self.requests, self.replies, os.getpid()),
                                   name="mlflow-tracker", daemon=True)
        self.process.start()
        self._token = 0

    def submit(self, key: str, op: str, *args) -> None:
        self.requests.put((key, op, args))

    def sync(self, key: str, timeout: float | None = None):
        self._token += 1
        token = self._token
        self.requests.put((key, "sync", (token,)))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                got, err, busy = self.replies.get(timeout=remaining if remaining is not None else 5.0)
            except queue.Empty:
                if not self.process.is_alive():
                    raise TrackingError(f"the MLflow tracker process died (exit code {self.process.exitcode})") from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise TrackingError(f"MLflow calls still running after {timeout} s") from None
                continue
            if got == token:  # replies to earlier syncs that timed out are dropped
                return err, busy

    def stop(self, timeout: float | None = None) -> None:
        self.requests.put(None)
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()


class BackgroundTracker:
    """The MLflowTracker of one run, its calls queued on a worker (:class:`TrackerThread` or
    :class:`TrackerProcess`) so that training never waits for MLflow: a job's first run would otherwise wait
    ~2 s for `import mlflow` and the store's schema check, and every checkpoint for a round trip to the store
    (benchmarks/bench_harness_overhead.py measures what is left).

    Calls return at once and run in order. ``write_done(path, record)`` queues writing the run's done.json
    behind them (once MLflow holds everything). ``close()`` waits for this run's calls and raises the first
    error one of them met (later calls of the run are then skipped). If the process dies before that, nothing
    that matters is lost: metrics.jsonl keeps every record and the MLflow run's ``synced_step`` tag says where
    a resumed run must continue."""

    _count = 0

    def __init__(self, *args, worker=None, **kwargs):
        self._own_worker = worker is None
        self._worker = worker or TrackerThread()
        BackgroundTracker._count += 1
        self.key = f"{BackgroundTracker._count}:{args[0] if args else kwargs.get('run_dir')}"
        self.busy_seconds = 0.0  # time this run's MLflow calls took on the worker, known after close()
        self._worker.submit(self.key, "create", args, kwargs)

    def log_records(self, records: list[dict], up_to_step: int) -> None:
        self._worker.submit(self.key, "log_records", list(records), up_to_step)  # the caller clears its list

    def log_metrics(self, metrics: dict, step: int) -> None:
        self._worker.submit(self.key, "log_metrics", dict(metrics), step)

    def set_tags(self, **tags) -> None:
        self._worker.submit(self.key, "set_tags_dict", dict(tags))

    def log_artifacts(self, path) -> None:
        self._worker.submit(self.key, "log_artifacts", str(path))

    def finish(self, status: dict) -> None:
        self._worker.submit(self.key, "finish", dict(status))

    def write_done(self, path, record: dict) -> None:
        self._worker.submit(self.key, "write_done", str(path), record)

    def close(self, timeout: float | None = None) -> None:
        """Wait until this run's queued calls have run; raise the first error one of them met."""
        error, self.busy_seconds = self._worker.sync(self.key, timeout)
        if self._own_worker:
            self._worker.stop()
        if error is not None:
            raise error
