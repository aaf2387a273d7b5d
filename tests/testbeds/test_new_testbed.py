"""Adding a testbed is one folder and one registry line. In a copy of the project, a throw-away testbed (the 2-D
ring mixture, declared as a table testbed of its own with its own teacher) is added that way, and the whole DAG runs
on it: teacher asset, a Table 1 with the paper's rows beside ours, the lr sweep, all through Snakemake, submitit and
MLflow, with the metric names the new testbed declares."""
from __future__ import annotations

import filecmp
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SPEC = '''"""A throw-away testbed: the 8-mode ring in 2-D, scored against the true mixture."""
from typing import Literal

from sim_core.testbeds.gmm import GMMConfig
from sim_core.testbeds.spec import Metric, TestbedSpec


class Ring2DConfig(GMMConfig):
    kind: Literal["ring2d"] = "ring2d"


TESTBED = TestbedSpec(
    name="ring2d", config=Ring2DConfig,
    metrics=(Metric("fd", "FD to the ring", lower_is_better=True, column="fid"),
             Metric("modes_covered", "ring modes covered", lower_is_better=False, column="is")),
    datasets={False: "the 2-D ring of 8 Gaussians"},
    assets={False: {"teacher": "teacher_ring2d"}},
    runtime="sim_core.testbeds.ring2d.testbed:load",
    builders={"teacher": "sim_core.testbeds.ring2d.testbed:build_teacher"},
    features="the 2-D samples", reference="the true ring")
'''
RUNTIME = '''from sim_core.testbeds.edm_teacher import build_mlp_teacher, load_for
from sim_core.testbeds.gmm.mixture import ring
from sim_core.testbeds.gmm.testbed import GMMTestbed


def load(cfg):
    return GMMTestbed(*load_for(cfg))


def build_teacher(out, conditional=False, seed=0, **overrides):
    gmm = ring()
    return build_mlp_teacher("ring2d", out, (2,), 0, lambda n, rng: (gmm.sample(n, rng)[0].float(), None), gmm.spec(),
                             dict(hidden=64, blocks=2, iterations=300, batch_size=256, lr=1e-3), seed=seed, **overrides)
'''
REGISTRY_LINE = 'TESTBEDS.register("ring2d", "sim_core.testbeds.ring2d:TESTBED")\n'
SCALE = dict(
    scale="smoke", results_dir="results", executor="local", runs_per_job=16, final_eval_seeds=[1000],
    assets={"teacher_ring2d": {"kind": "teacher", "testbed": "ring2d"}},
    base=dict(optim=dict(batch_size=16), eval=dict(num_samples=200, batch_size=200),
              train=dict(iterations=6, log_every=2, eval_every=3, checkpoint_every=3, progress=False)),
    experiments=dict(
        table1=dict(testbed="ring2d", lrs=[1e-3], seeds=[0, 1], teacher_nfe=[35], teacher_seeds=[0],
                    rows=[dict(label="SIM", method=dict(name="sim")),
                          dict(label="SiD (alpha=1.0)", method=dict(name="sid", alpha=1.0)),
                          dict(label="DI", method=dict(name="di"))]),
        lr_sweep=dict(testbed="ring2d", lrs=[1e-4, 1e-3], seeds=[0],
                      rows=[dict(label="SIM", method=dict(name="sim")), dict(label="DI", method=dict(name="di"))])))


def _copy_project(dst: Path) -> None:
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("sim_core", "baselines", "workflow", "configs", "profiles"):
        shutil.copytree(ROOT / name, dst / name, ignore=skip)
    shutil.copy(ROOT / "Snakefile", dst / "Snakefile")


def _changed(a: Path, b: Path, rel=Path()) -> list[str]:
    """Files that differ or exist on one side only, recursively."""
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    out = [str(rel / n) for n in cmp.left_only + cmp.right_only + cmp.diff_files]
    for sub in cmp.common_dirs:
        out += _changed(a / sub, b / sub, rel / sub)
    return out


@pytest.mark.slow
def test_a_new_testbed_is_one_folder_and_one_registry_line_and_runs_through_the_dag(tmp_path):
    proj = tmp_path / "project"
    _copy_project(proj)
    folder = proj / "sim_core" / "testbeds" / "ring2d"
    folder.mkdir()
    (folder / "__init__.py").write_text(SPEC)
    (folder / "testbed.py").write_text(RUNTIME)
    registry = proj / "sim_core" / "testbeds" / "__init__.py"
    registry.write_text(registry.read_text() + REGISTRY_LINE)
    # exactly that: the new folder, and one line more in the registry
    assert _changed(ROOT / "sim_core", proj / "sim_core") == ["testbeds/ring2d", "testbeds/__init__.py"]
    assert registry.read_text().splitlines()[:-1] == (ROOT / "sim_core/testbeds/__init__.py").read_text().splitlines()
    for name in ("baselines", "workflow", "configs"):
        assert not _changed(ROOT / name, proj / name), name

    scale = proj / "ring2d.yaml"
    scale.write_text(yaml.safe_dump(SCALE))
    env = dict(os.environ, PYTHONPATH=str(proj), TQDM_DISABLE="1")
    p = subprocess.run([sys.executable, "-m", "snakemake", "all_tables", "--cores", "2", "--quiet", "progress",
                        "--config", f"scale_config={scale}"], cwd=proj, env=env, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    results = proj / "results"
    table = pd.read_csv(results / "tables" / "table1.csv")
    ours = table[table["source"] == "ours"].set_index("method")
    assert list(ours.index) == ["SIM", "SiD (alpha=1.0)", "DI", "Teacher (Heun, NFE 35)"]
    assert (table["source"] == "paper").sum() == 24  # the paper's Table 1 beside ours
    for label, row in ours.iterrows():
        assert math.isfinite(row["fid_mean"]) and row["fid_mean"] >= 0, label   # the ring's FD, per the new spec
        assert 0 <= row["is_mean"] <= 8, label                                   # modes covered of 8
        assert row["dataset"] == "the 2-D ring of 8 Gaussians"
    md = (results / "tables" / "table1.md").read_text()
    assert "Our FD to the ring (mean ± 95% CI)" in md and "Our ring modes covered (mean ± 95% CI)" in md
    sweep = pd.read_csv(results / "figures" / "lr_sweep.csv")
    assert sorted(zip(sweep["method"], sweep["lr"])) == [("DI", 1e-4), ("DI", 1e-3), ("SIM", 1e-4), ("SIM", 1e-3)]
    assert (results / "figures" / "lr_sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert (results / "assets" / "teacher_ring2d.pt").exists()
