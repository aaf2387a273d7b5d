"""Appendix B.4's study from a table's runs (`snakemake study`): A is the one-step images of the table's study row
(SIM), B those of the teacher row at the study's step count, each the lowest seed; both are the sample tensors the
runs logged to MLflow (samples/*.pt, the prompts Figure 3 shows), so the two sets share their prompts."""
from __future__ import annotations

import tempfile
from pathlib import Path

from sim_core.errors import ConfigError


def study_sources(spec, records) -> tuple[dict, dict]:
    """The two run records the study compares; a ConfigError naming what is missing."""
    a = [r for r in records if r["label"] == spec.study.a and r["method"] != "teacher"]
    b = [r for r in records if r["method"] == "teacher" and r.get("nfe") == spec.study.teacher_steps]
    if not a:
        raise ConfigError(f"no run labelled {spec.study.a!r} to be the study's A")
    if not b:
        steps = sorted({r["nfe"] for r in records if r["method"] == "teacher"})
        raise ConfigError(f"no teacher row at {spec.study.teacher_steps} steps to be the study's B (teacher rows: "
                          f"{steps or 'none'}; add it to the experiment's teacher_nfe)")
    return min(a, key=lambda r: r["seed"]), min(b, key=lambda r: r["seed"])


def build_from_runs(table: str, records, tracking_uri: str, out_dir) -> dict:
    """Fetch both sample tensors from MLflow and build the study folder out_dir (workflow/study/build.py)."""
    import torch
    from mlflow.tracking import MlflowClient

    from workflow.report.figures import sample_tensor
    from workflow.report.manifest import select
    from workflow.report.tables import table_spec
    from workflow.study.build import build_study
    spec = table_spec(table)
    if spec.study is None:
        raise ConfigError(f"{table} has no study column")
    rec_a, rec_b = study_sources(spec, select(records, table))
    existing = Path(out_dir) / "study.json"
    if existing.is_file():  # built before: the same runs are a no-op, other runs never replace it (answers)
        import json
        study = json.loads(existing.read_text())
        was = [study["sources"][side].get("mlflow_run_id") for side in ("a", "b")]
        if was != [rec_a["run_id"], rec_b["run_id"]]:
            raise ConfigError(f"{out_dir} holds a study of other runs (MLflow {was[0]} and {was[1]}, now "
                              f"{rec_a['run_id']} and {rec_b['run_id']}) and is never replaced: its answers would no "
                              f"longer match; move it away to build a new one")
        return study
    client = MlflowClient(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for side, rec in (("a", rec_a), ("b", rec_b)):
            path = Path(tmp) / f"{side}.pt"
            torch.save(sample_tensor(client, rec["run_id"], Path(tmp) / side), path)
            paths.append(path)
        origin = {side: {"mlflow_run_id": r["run_id"], "run": r["name"], "label": r["label"], "seed": r["seed"]}
                  for side, r in (("a", rec_a), ("b", rec_b))}
        # A's label is the table row's, which is how Table 3 finds the row the study's result belongs to
        return build_study(*paths, out_dir, rec_a["label"], rec_b["label"], n_prompts=spec.study.prompts,
                           raters=spec.study.raters, seed=spec.study.seed, origin=origin)
