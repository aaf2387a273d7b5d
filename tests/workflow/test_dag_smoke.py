"""The whole DAG at smoke scale: Snakemake -> submitit (local) -> sim_core -> MLflow -> tables and figures.

One run of `snakemake all_tables --config scale=smoke` per test session (shared with tests/test_slurm.py,
which compares the SLURM profile's tables with it); the tests read what it wrote."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workflow.report.manifest import by_label
from workflow.report.tables import table_spec

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


@pytest.mark.parametrize("table", ["table1", "table2"])
def test_tables_list_every_paper_row_unchanged(smoke, table):
    for ext in ("csv", "md", "tex"):
        assert (smoke / "tables" / f"{table}.{ext}").stat().st_size > 0
    ours = pd.read_csv(smoke / "tables" / f"{table}.csv")
    paper = _paper(table_spec(table).paper_csv)
    listed = ours[ours["source"] == "paper"]
    assert list(listed["method"]) == list(paper["method"])
    assert listed["paper_fid"].tolist() == paper["fid"].tolist()


def _ci(values):
    from scipy import stats
    return stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))


@pytest.mark.parametrize("table", ["table1", "table2"])
def test_our_rows_are_mlflows_final_numbers_and_the_flags_follow_them(smoke, table):
    """Each of our rows: the mean and 95% t-interval of MLflow's final/fid and final/isc over its finished seeds
    (recomputed here from the store), finite, equal to what the job wrote in done.json; the claim flag says what
    the means and intervals say."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{smoke / 'mlflow.db'}")
    frame = pd.read_csv(smoke / "tables" / f"{table}.csv")
    rows = frame[frame["source"] == "ours"].set_index("method")
    records = json.loads((smoke / "manifests" / f"{table}.json").read_text())
    summary = {}
    for label, recs in by_label(records).items():
        fid, isc = [], []
        for rec in recs:
            run = client.get_run(rec["run_id"])
            assert run.data.tags["status"] in ("finished", "diverged")
            if run.data.tags["status"] != "finished":
                continue
            fid.append(run.data.metrics["final/fid"])
            isc.append(run.data.metrics["final/isc"])
            if rec["method"] != "teacher":
                done = json.loads((smoke / "runs" / rec["name"] / "done.json").read_text())
                assert done["final"]["fid"] == fid[-1] and done["final"]["isc"] == isc[-1]
        assert fid and all(math.isfinite(v) and v > 0 for v in fid + isc), label
        row = rows.loc[label]
        assert row["fid_mean"] == pytest.approx(np.mean(fid), rel=1e-12)
        assert row["is_mean"] == pytest.approx(np.mean(isc), rel=1e-12)
        assert row["n_finished"] == len(fid) and row["n_seeds"] == len(recs)
        if len(fid) > 1:
            assert row["fid_ci95"] == pytest.approx(_ci(fid), rel=1e-9)
            assert row["fid"] == f"{np.mean(fid):.2f} ± {_ci(fid):.2f}"
        else:
            assert math.isnan(row["fid_ci95"]) and row["fid"] == f"{fid[0]:.2f} (n=1)"
        summary[label] = (np.mean(fid), _ci(fid) if len(fid) > 1 else math.nan)
    flags = rows.loc["SIM", "flag"].split("; ")
    claims = [c for c in table_spec(table).claims if c.row == "SIM"]
    assert len(flags) == len(claims)
    for claim, flag in zip(claims, flags):
        (m, h), (m_o, h_o) = summary["SIM"], summary[claim.than]
        if m < m_o:
            expected = "agrees with paper" if m + h < m_o - h_o else "consistent but not significant"
        else:
            expected = "contradicts paper"
        assert flag.startswith(expected) and claim.than in flag, (flag, summary["SIM"], summary[claim.than])
    md = (smoke / "tables" / f"{table}.md").read_text()
    assert md.count("FID/KID/IS in digits-CNN features") == 1  # the protocol once, in the caption


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
        assert r.data.tags["status"] in ("finished", "diverged", "collapsed")
        assert r.data.tags["config_hash"] and r.data.tags["scale"] == "smoke" and r.data.tags["job_id"]
        steps = [m.step for m in client.get_metric_history(rid, "loss_online")]
        assert steps == sorted(set(steps)) and len(steps) >= 1
        if r.data.tags["status"] == "diverged":  # its non-finite losses are in metrics.jsonl, not in MLflow
            assert int(r.data.tags["diverged_at"]) == steps[-1]
        elif r.data.tags["status"] == "collapsed":  # lr 10: a saturated generator, told apart from a result
            assert run.config["optim"]["lr_gen"] == 10.0 and r.data.tags["reason"].startswith("saturated")
            assert "final/fid" not in r.data.metrics
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
    assert diverging["n_diverged"].tolist() == [1, 1]  # overflows at its first generator step ("stop" policy)
    # lr 10 saturates SIM and DI: once counted as healthy runs with the same FID, now collapsed, without a FID
    at_10 = sweep[sweep["lr"] == 10.0].set_index("method")
    assert at_10.loc["SIM", "n_collapsed"] == 1 and at_10.loc["DI", "n_collapsed"] == 1
    assert at_10[["fid_mean"]].loc[["SIM", "DI"]].isna().all().all()


def test_figures_show_every_row_of_their_experiment(smoke):
    """The PNGs are images of the figures' size; Figure 2 rebuilt from the smoke store has one legend entry per
    row of the smoke config, each with its curve, and marks the diverged runs."""
    import yaml
    from matplotlib.image import imread

    from workflow.report import figures
    for name in ("figure2.png", "figure_b6_fid_convergence.png", "lr_sweep.png"):
        img = imread(smoke / "figures" / name)
        assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 600, name
        assert img[..., :3].std() > 0.05  # not a blank canvas
    for name in ("figure2.pdf", "figure_b6_fid_convergence.pdf", "lr_sweep.pdf"):
        assert (smoke / "figures" / name).read_bytes()[:5] == b"%PDF-"
    scale = yaml.safe_load((ROOT / "configs" / "scales" / "smoke.yaml").read_text())
    records = json.loads((smoke / "manifests" / "figure2.json").read_text())
    fig = figures.build_figure2(records, f"sqlite:///{smoke / 'mlflow.db'}")
    legend = [t.get_text().split(" (")[0] for t in fig.legends[0].get_texts()]
    assert legend == [row["label"] for row in scale["experiments"]["figure2"]["rows"]]
    lrs = scale["experiments"]["figure2"]["lrs"]
    assert len(fig.axes) == 2 * len(lrs)
    for ax in fig.axes:  # every row drew a curve at every lr, on the FID and the IS panels
        assert len([ln for ln in ax.get_lines() if ln.get_marker() != "x"]) == len(legend)


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
    assert jobs == {"distill_lr_sweep_000", "aggregate_lr_sweep", "report_page", "all_tables"}, jobs


@pytest.mark.parametrize("edit,expected", [
    (lambda c: c["experiments"]["table1"]["rows"][0]["method"].update(name="simm"),
     "experiments.table1 row 'SIM': bad config: method: unknown method 'simm'; valid names: di, sid, sim"),
    (lambda c: c["experiments"]["figure2"].update(lrs=[-1e-4]), "experiments.figure2.lrs: learning rates must be > 0"),
    (lambda c: c.update(runs_per_jobb=3), "runs_per_jobb: Extra inputs are not permitted"),
    (lambda c: c["experiments"].update(table9=c["experiments"]["table1"]), "unknown experiment(s) ['table9']"),
])
def test_bad_sweep_config_fails_at_dag_construction(tmp_path, edit, expected):
    _fails_before_any_job(tmp_path, edit, expected)


def test_an_unreachable_tracking_server_stops_the_dag_before_any_job(tmp_path):
    """Before the asset jobs (minutes at paper scale), not after them."""
    _fails_before_any_job(tmp_path, lambda c: c.update(tracking_uri="http://127.0.0.1:9"),
                          "tracking_uri: tracking store http://127.0.0.1:9 is unreachable", dry_run=False)


def _fails_before_any_job(tmp_path, edit, expected, dry_run=True):
    import yaml
    cfg = yaml.safe_load((ROOT / "configs" / "scales" / "smoke.yaml").read_text())
    edit(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = subprocess.run(SNAKEMAKE + ["--cores", "1", *(["-n"] if dry_run else []), "all_tables", "--config",
                                    f"scale_config={path}",
                                    f"results_dir={tmp_path / 'r'}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0
    errors = [line for line in (p.stdout + p.stderr).splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], p.stdout + p.stderr
    assert not (tmp_path / "r").exists()
