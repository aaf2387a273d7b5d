"""The whole DAG at smoke scale: Snakemake -> submitit (local) -> sim_core -> MLflow -> tables and figures.

One run of `snakemake all_tables --config scale=smoke` per test session (shared with tests/test_slurm.py,
which compares the SLURM profile's tables with it); the tests read what it wrote."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _snakemake(results, *args, timeout=900):
    return subprocess.run(SNAKEMAKE + [*args, "--cores", "2", "--quiet", "progress",
                                       "--config", "scale=smoke", f"results_dir={results}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke(smoke_local):
    """`snakemake all_tables --config scale=smoke` with the embedded defaults (conftest.py: run once)."""
    return smoke_local


def _paper(name):
    return pd.read_csv(ROOT / "workflow" / "paper" / name, comment="#")


@pytest.mark.parametrize("table,paper_csv", [("table1", "table1_cifar10_uncond.csv"),
                                             ("table2", "table2_cifar10_cond.csv")])
def test_tables_have_paper_and_reproduced_rows(smoke, table, paper_csv):
    for ext in ("csv", "md", "tex"):
        assert (smoke / "tables" / f"{table}.{ext}").stat().st_size > 0
    ours = pd.read_csv(smoke / "tables" / f"{table}.csv")
    paper = _paper(paper_csv)
    text = ours.to_string()
    for method, fid in zip(paper["method"], paper["fid"]):
        assert method in text
    # every paper FID appears unchanged in the table
    numbers = pd.to_numeric(ours.stack(), errors="coerce").dropna().tolist()
    for fid in paper["fid"]:
        assert any(math.isclose(fid, n, rel_tol=1e-9) for n in numbers), fid
    assert "SIM" in text and "SiD (alpha=1.0)" in text and "Teacher (Heun, NFE 35)" in text


def test_mlflow_holds_one_run_per_sweep_point(smoke):
    from mlflow.tracking import MlflowClient
    from workflow.dag import load
    S, SW, uri = load({"scale": "smoke", "results_dir": str(smoke)})
    client = MlflowClient(uri)
    run_ids = set()
    for run in SW.runs.values():
        rid = json.loads((Path(run.run_dir) / "mlflow.json").read_text())["run_id"]
        run_ids.add(rid)
        r = client.get_run(rid)
        assert r.data.params["method.name"] == run.config["method"]["name"]
        assert float(r.data.params["optim.lr_gen"]) == run.config["optim"]["lr_gen"]
        assert r.data.params["seed"] == str(run.config["seed"])
        assert r.data.tags["status"] in ("finished", "diverged")
        assert r.data.tags["config_hash"] and r.data.tags["scale"] == "smoke" and r.data.tags["job_id"]
        steps = [m.step for m in client.get_metric_history(rid, "loss_online")]
        assert steps == sorted(set(steps)) and len(steps) >= 1
        if r.data.tags["status"] == "diverged":  # its non-finite losses are in metrics.jsonl, not in MLflow
            assert int(r.data.tags["diverged_at"]) == steps[-1]
        else:
            fid = [m.step for m in client.get_metric_history(rid, "eval/fid")]
            assert fid[0] == 0 and fid[-1] == run.config["train"]["iterations"]
            assert "final/fid" in r.data.metrics and math.isfinite(r.data.metrics["final/fid"])
    assert len(run_ids) == len(SW.runs)
    names = {e.name for e in client.search_experiments()}
    assert {"table1", "table2", "figure2", "lr_sweep"} <= names


def test_lr_sweep_marks_divergence(smoke):
    sweep = pd.read_csv(smoke / "figures" / "lr_sweep.csv")
    assert len(sweep) == 6  # 3 rows x 2 learning rates
    diverging = sweep[sweep["method"] == "SIM / exp_power beta=1e6"]
    assert diverging["n_diverged"].tolist() == [1, 1]  # overflows at its first generator step


def test_figures_written(smoke):
    for name in ("figure2.png", "figure2.pdf", "figure_b6_fid_convergence.png", "lr_sweep.png"):
        assert (smoke / "figures" / name).stat().st_size > 1000


def test_rerun_is_a_noop(smoke):
    p = _snakemake(smoke, "all_tables", "-n")
    assert p.returncode == 0
    assert "Nothing to be done" in p.stdout + p.stderr


def test_changing_one_sweep_value_reruns_only_its_dependents(smoke, tmp_path):
    import yaml
    cfg = yaml.safe_load((ROOT / "configs" / "scales" / "smoke.yaml").read_text())
    cfg["experiments"]["lr_sweep"]["lrs"] = [1e-4, 3e-1]
    path = tmp_path / "smoke2.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = subprocess.run(SNAKEMAKE + ["--cores", "2", "-n", "all_tables", "--config", f"scale_config={path}",
                                    f"results_dir={smoke}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    import re
    jobs = set(re.findall(r"^(?:local)?rule (\S+):", out, re.M))
    assert jobs == {"distill_lr_sweep_000", "aggregate_lr_sweep", "all_tables"}, jobs


@pytest.mark.parametrize("edit,expected", [
    (lambda c: c["experiments"]["table1"]["rows"][0]["method"].update(name="simm"),
     "experiments.table1 row 'SIM': bad config: method: unknown method 'simm'; valid names: di, sid, sim"),
    (lambda c: c["experiments"]["figure2"].update(lrs=[-1e-4]), "experiments.figure2.lrs: learning rates must be > 0"),
    (lambda c: c.update(runs_per_jobb=3), "runs_per_jobb: Extra inputs are not permitted"),
    (lambda c: c["experiments"].update(table9=c["experiments"]["table1"]), "unknown experiment(s) ['table9']"),
])
def test_bad_sweep_config_fails_at_dag_construction(tmp_path, edit, expected):
    import yaml
    cfg = yaml.safe_load((ROOT / "configs" / "scales" / "smoke.yaml").read_text())
    edit(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = subprocess.run(SNAKEMAKE + ["--cores", "1", "-n", "all_tables", "--config", f"scale_config={path}",
                                    f"results_dir={tmp_path / 'r'}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0
    errors = [line for line in (p.stdout + p.stderr).splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], p.stdout + p.stderr
    assert not (tmp_path / "r").exists()
