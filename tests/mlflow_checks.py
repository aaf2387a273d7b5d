"""What MLflow must hold after any fault: a run's metrics.jsonl, point for point, and its final numbers once."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path


def assert_mlflow_holds_the_run_dirs(uri: str, run_dirs) -> None:
    """Each run's MLflow history equals its metrics.jsonl (every point once), its final/* once each, and no run
    of the store is left RUNNING."""
    from mlflow.tracking import MlflowClient

    from sim_core.train.run_dir import read_metrics
    client = MlflowClient(uri)
    for run_dir in map(Path, run_dirs):
        run_id = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED", (run_dir.name, run.info.status)
        expected: dict[str, set] = {}  # a key at one step once (a log and an eval record both carry nimg)
        for r in read_metrics(run_dir):
            for k, v in r.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
                    expected.setdefault(k, set()).add((int(r["step"]), float(v)))
        finals = {k for k in run.data.metrics if k.startswith("final/")}
        assert finals, run_dir.name
        assert set(run.data.metrics) == set(expected) | finals, run_dir.name
        for key in expected:
            got = Counter((m.step, m.value) for m in client.get_metric_history(run_id, key))
            assert set(got) == expected[key] and set(got.values()) == {1}, (run_dir.name, key, got)
        for key in finals:
            assert len(client.get_metric_history(run_id, key)) == 1, (run_dir.name, key)
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert not client.search_runs(experiments, "attributes.status = 'RUNNING'")  # no orphan left open
