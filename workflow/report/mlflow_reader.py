"""Reading runs from an MLflow store: status tags and metric histories, cached by run id."""
from __future__ import annotations

import math
from pathlib import Path


def check_store(tracking_uri: str) -> None:
    """Refuse a local tracking store that does not exist (MLflow would silently create an empty one)."""
    if not isinstance(tracking_uri, str) or not tracking_uri:
        raise ValueError("tracking URI must be a non-empty string")
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
    elif tracking_uri.startswith("file://") or "://" not in tracking_uri:
        path = Path(tracking_uri.removeprefix("file://"))
    else:
        return
    if not path.exists():
        raise ValueError(f"MLflow tracking store not found: {tracking_uri}")


def finite(value) -> bool:
    """Finite and not MLflow's stand-in for infinity (it stores inf as the largest double)."""
    return value is not None and math.isfinite(value) and abs(value) < 1e300


class RunReader:
    """Reads runs from one MLflow tracking store, caching each run and metric history by run_id."""

    def __init__(self, tracking_uri: str):
        check_store(tracking_uri)
        from mlflow import MlflowClient
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._runs: dict[str, dict] = {}
        self._histories: dict[tuple[str, str], list[tuple[int, float]]] = {}

    def run(self, run_id: str) -> dict:
        """status ("finished", "diverged", "collapsed", "failed", or "unknown" without the tag), diverged_at, the
        reason a run diverged or collapsed, its metric keys."""
        if run_id not in self._runs:
            from mlflow.exceptions import MlflowException
            try:
                run = self.client.get_run(str(run_id))
            except MlflowException:
                raise ValueError(f"run_id {run_id!r} not found in MLflow store {self.tracking_uri}") from None
            tags = run.data.tags
            step = tags.get("diverged_at")
            self._runs[run_id] = dict(status=tags.get("status", "unknown").strip().lower(),
                                      diverged_at=int(float(step)) if step not in (None, "") else None,
                                      reason=tags.get("reason", ""),
                                      nonfinite_steps=int(tags.get("nonfinite_steps", 0) or 0),
                                      first_nonfinite_step=int(tags.get("first_nonfinite_step", 0) or 0),
                                      synced_step=int(tags["synced_step"]) if "synced_step" in tags else None,
                                      keys=set(run.data.metrics))
        return self._runs[run_id]

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """[(step, value)] sorted by step; non-finite values become NaN."""
        if (run_id, key) not in self._histories:
            hist = []
            if key in self.run(run_id)["keys"]:
                metrics = sorted(self.client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
                hist = [(m.step, m.value if finite(m.value) else math.nan) for m in metrics]
            self._histories[(run_id, key)] = hist
        return self._histories[(run_id, key)]

    def complete(self, record: dict) -> bool:
        """Whether MLflow holds the run's whole history: its synced_step reached the run's last step (records
        without a last step, and runs not synced step by step, such as the teacher rows, count as complete)."""
        synced, last = self.run(record["run_id"])["synced_step"], record.get("final_step")
        return synced is None or last is None or synced >= last

    def headline(self, run_id: str, key: str) -> float:
        """final/<key> if logged, else the last eval/<key>; NaN when neither exists."""
        for name in (f"final/{key}", f"eval/{key}"):
            hist = self.history(run_id, name)
            if hist:
                return hist[-1][1]
        return math.nan
