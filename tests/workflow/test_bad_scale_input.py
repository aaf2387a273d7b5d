"""Bad scale configs and bad --config overrides fail where the Snakefile loads them (workflow.dag.load), in one
ConfigError line naming the key, before any file is written (the Snakefile prints it and exits 2:
tests/workflow/test_dag_smoke.py runs Snakemake itself on a few of these)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from sim_core.errors import ConfigError
from workflow.dag import load

ROOT = Path(__file__).resolve().parents[2]
SMOKE = yaml.safe_load((ROOT / "configs" / "scales" / "smoke.yaml").read_text())


def _row(exp="table1", i=0):
    return lambda c: c["experiments"][exp]["rows"][i]


SCALE_CASES = {
    "unknown top-level key": (lambda c: c.update(runs_per_jobb=3), "runs_per_jobb: Extra inputs are not permitted"),
    "unknown scale": (lambda c: c.update(scale="huge"), "scale"),
    "unknown executor": (lambda c: c.update(executor="kubernetes"), "executor"),
    "zero runs per job": (lambda c: c.update(runs_per_job=0), "runs_per_job"),
    "unknown experiment": (lambda c: c["experiments"].update(table9=c["experiments"]["table1"]),
                           "unknown experiment(s) ['table9']"),
    "unknown testbed": (lambda c: c["experiments"]["table1"].update(testbed="mnist"),
                        "experiments.table1.testbed: unknown testbed 'mnist'"),
    "conditional mixture": (lambda c: c["experiments"]["table1"].update(testbed="gmm", conditional=True),
                            "testbed gmm has no class-conditional variant"),
    "negative learning rate": (lambda c: c["experiments"]["figure2"].update(lrs=[-1e-4]),
                               "experiments.figure2.lrs: learning rates must be > 0"),
    "no learning rates": (lambda c: c["experiments"]["figure2"].update(lrs=[]), "experiments.figure2.lrs"),
    "no seeds": (lambda c: c["experiments"]["figure2"].update(seeds=[]), "experiments.figure2.seeds"),
    "even Heun NFE": (lambda c: c["experiments"]["table1"].update(teacher_nfe=[20]), "Heun NFE must be odd"),
    "duplicate row labels": (lambda c: c["experiments"]["table1"]["rows"].append(c["experiments"]["table1"]["rows"][0]),
                             "row labels must be unique"),
    "row with an unknown method": (lambda c: _row()(c)["method"].update(name="simm"),
                                   "experiments.table1 row 'SIM': bad config: method: unknown method 'simm'"),
    "row with a bad override": (lambda c: _row()(c).update(overrides={"optim": {"lr_gen": -1}}),
                                "experiments.table1 row 'SIM': bad config: optim.lr_gen"),
    "row with an unknown key": (lambda c: _row()(c).update(colour="red"), "colour: Extra inputs are not permitted"),
    "row without a label": (lambda c: _row()(c).pop("label"), "label: Field required"),
    "asset of an unknown kind": (lambda c: c["assets"].update(extra={"kind": "vae", "testbed": "digits"}),
                                 "testbed digits builds no 'vae' asset; it builds teacher, classifier"),
    "asset of an unknown testbed": (lambda c: c["assets"].update(extra={"kind": "teacher", "testbed": "mnist"}),
                                    "unknown testbed 'mnist'"),
    "asset with zero iterations": (lambda c: c["assets"]["teacher_digits"].update(iterations=0), "iterations"),
    "a needed asset missing": (lambda c: c["assets"].pop("classifier"),
                               "assets: missing ['classifier'] needed by the experiments"),
    "unknown job kind": (lambda c: c.update(resources={"train": {"timeout_min": 5}}), "unknown job kind(s) ['train']"),
    "zero timeout": (lambda c: c.update(resources={"distill": {"timeout_min": 0}}), "timeout_min"),
    "bad FID protocol": (lambda c: c.update(final_eval_protocol="best"), "final_eval_protocol"),
    "CIFAR-10 without asset files": (lambda c: c["experiments"]["table1"].update(testbed="cifar10"),
                                     "whose files ['fid_ref', 'inception', 'teacher_uncond'] are downloaded"),
    "CIFAR-10 without a FID protocol": (lambda c: (c["experiments"]["table1"].update(testbed="cifar10"),
                                                   c.update(asset_files={"dir": "data"})),
                                        "set final_eval_protocol (edm or sid)"),
    "a checksum that is not hex": (lambda c: (c["experiments"]["table1"].update(testbed="cifar10"),
                                              c.update(asset_files={"dir": "d", "sha256": {"inception": "xyz"}},
                                                       final_eval_protocol="edm")),
                                   "asset_files.sha256.inception: 'xyz' is not a SHA-256"),
    "a path for an unknown asset": (lambda c: (c["experiments"]["table1"].update(testbed="cifar10"),
                                               c.update(asset_files={"dir": "d", "paths": {"teacher": "t.pkl"}},
                                                        final_eval_protocol="edm")),
                                    "asset_files.paths.teacher: unknown asset"),
    "a YAML list": (lambda c: "list", "must hold a mapping of sections, not a list"),
}


@pytest.mark.parametrize("case", sorted(SCALE_CASES))
def test_a_bad_scale_config_is_one_line_and_writes_nothing(tmp_path, case):
    edit, expected = SCALE_CASES[case]
    cfg = copy.deepcopy(SMOKE)
    out = edit(cfg)
    path = tmp_path / "scale.yaml"
    path.write_text("- a\n- b\n" if out == "list" else yaml.safe_dump(cfg))
    results = tmp_path / "results"
    with pytest.raises(ConfigError) as e:
        load({"scale_config": str(path), "results_dir": str(results)})
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not results.exists()


OVERRIDE_CASES = {
    "unknown --config key": ({"scal": "toy"}, "unknown --config key(s) ['scal']"),
    "unknown scale name": ({"scale": "huge"}, "scale config file not found: configs/scales/huge.yaml"),
    "bad executor": ({"executor": "cloud"}, "bad --config override: executor"),
    "bad resources": ({"resources": {"distill": {"gpus_per_node": -1}}}, "bad --config override: resources.distill"),
    "resources of an unknown kind": ({"default_resources": {"gpu": {}}}, "unknown job kind(s) ['gpu']"),
    "runs per job not a number": ({"runs_per_job": "many"}, "bad --config override: runs_per_job"),
    # port 9 (discard) on loopback: nothing listens there on a test machine
    "an MLflow server that does not answer": ({"tracking_uri": "http://127.0.0.1:9"}, "tracking_uri: "),
    "a sqlite store in a read-only place": ({"tracking_uri": "sqlite:////proc/sim-test/mlflow.db"}, "tracking_uri: "),
    "a negative server port": ({"tracking_server_port": -1}, "tracking_server_port"),
}


@pytest.mark.parametrize("case", sorted(OVERRIDE_CASES))
def test_a_bad_config_override_is_one_line(tmp_path, monkeypatch, case):
    over, expected = OVERRIDE_CASES[case]
    monkeypatch.chdir(ROOT)
    results = tmp_path / "results"
    with pytest.raises(ConfigError) as e:
        load({"scale": "smoke", "results_dir": str(results), **over})
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not results.exists()
