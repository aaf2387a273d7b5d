"""Bad input fails before any work with one line on stderr (exit 2), and leaves no run directory behind."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from sim_core.core.edm import EDMPrecond
from sim_core.errors import CheckpointError, ConfigError
from sim_core.nets.mlp import ResidualMLP
from sim_core.testbeds.edm_teacher import load_teacher, save_teacher
from sim_core.train.config import parse_config

from conftest import gmm_config


def _run_cli(tmp_path, raw: dict, *extra):
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(raw))
    run_dir = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "sim_core", "distill", "--config", str(cfg_path),
                        "--run-dir", str(run_dir), *extra], capture_output=True, text=True, timeout=120)
    return p, run_dir


CASES = {
    "unknown method": (dict(method=dict(name="sim2")), "unknown method 'sim2'; valid names: di, sid, sim"),
    "unknown distance": (dict(method=dict(name="sim", distance="cosine")),
                         "unknown distance 'cosine'; valid names: alpha_power, exp_power, huber, l1, l2, pseudo_huber"),
    "unknown time dist": (dict(method=dict(name="sim", time_dist="uniform")), "unknown time distribution 'uniform'"),
    "unknown weighting": (dict(online=dict(weighting="snr")), "unknown weighting 'snr'; valid names: lambda_edm, nowgt, sidwgt"),
    "negative lr": (dict(optim=dict(lr_gen=-1e-4)), "optim.lr_gen: must be a positive finite number"),
    "zero lr": (dict(optim=dict(lr_online=0)), "optim.lr_online: must be a positive finite number"),
    "zero c": (dict(method=dict(name="sim", distance="pseudo_huber", distance_params=dict(c=0.0))),
               "c must be a positive finite number"),
    "alpha <= 1": (dict(method=dict(name="sim", distance="alpha_power", distance_params=dict(alpha=1.0))),
                   "alpha must be > 1"),
    "key of another method": (dict(method=dict(name="di", alpha=1.2)), "method di does not take alpha"),
    "DI switch on SIM": (dict(method=dict(name="sim", train_mode_denoisers=False)),
                         "method sim does not take train_mode_denoisers"),
    "typo key": (dict(optim=dict(batchsize=64)), "optim.batchsize: Extra inputs are not permitted"),
    "bad beta": (dict(optim=dict(betas=[0.0, 1.0])), "Adam betas must lie in [0, 1)"),
    "zero iterations": (dict(train=dict(iterations=0)), "train.iterations"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_one_line(tmp_path, gmm_teacher, case):
    over, expected = CASES[case]
    p, run_dir = _run_cli(tmp_path, gmm_config(gmm_teacher, **over))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], p.stderr
    assert not run_dir.exists()


def test_missing_teacher(tmp_path, gmm_teacher):
    p, run_dir = _run_cli(tmp_path, gmm_config(tmp_path / "nope.pt"))
    assert p.returncode == 2 and "teacher file not found" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not run_dir.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign"])
def test_corrupt_teacher(tmp_path, gmm_teacher, damage):
    bad = tmp_path / "bad.pt"
    data = gmm_teacher.read_bytes()
    if damage == "truncate":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"not a checkpoint" * 100)
    else:
        torch.save({"weights": torch.zeros(3)}, bad)
    p, run_dir = _run_cli(tmp_path, gmm_config(bad))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert ("is corrupt" in p.stderr) if damage != "foreign" else ("is not a sim-harness-teacher/1 file" in p.stderr)
    assert not run_dir.exists()


def test_teacher_checksum_pin(tmp_path, gmm_teacher):
    p, _ = _run_cli(tmp_path, gmm_config(gmm_teacher, testbed=dict(teacher_sha256="0" * 64)))
    assert p.returncode == 2 and "does not match the expected" in p.stderr


def test_corrupt_checkpoint_in_run_dir(tmp_path, gmm_teacher):
    raw = gmm_config(gmm_teacher, train=dict(iterations=3))
    p, run_dir = _run_cli(tmp_path, raw)
    assert p.returncode == 0, p.stderr
    (run_dir / "status.json").unlink()  # pretend it was interrupted, then damage its checkpoint
    ck = run_dir / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:1000])
    p, _ = _run_cli(tmp_path, raw)
    assert p.returncode == 2 and "checkpoint" in p.stderr and "is corrupt" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_run_dir_with_other_config(tmp_path, gmm_teacher):
    p, run_dir = _run_cli(tmp_path, gmm_config(gmm_teacher, train=dict(iterations=2)))
    assert p.returncode == 0
    p, _ = _run_cli(tmp_path, gmm_config(gmm_teacher, train=dict(iterations=2), seed=1))
    assert p.returncode == 2 and "holds config" in p.stderr


def test_label_count_mismatch(tmp_path, digits_teacher_cond, digits_teacher):
    with pytest.raises(CheckpointError, match="conditional"):
        from sim_core.testbeds import load_testbed
        load_testbed(parse_config(dict(name="x", testbed=dict(kind="digits", teacher=str(digits_teacher_cond)),
                                       train=dict(iterations=1))).testbed)
    with pytest.raises(CheckpointError, match="unconditional"):
        from sim_core.testbeds import load_testbed
        load_testbed(parse_config(dict(name="x", testbed=dict(kind="digits", teacher=str(digits_teacher),
                                                              conditional=True), train=dict(iterations=1))).testbed)
    D, meta = load_teacher(digits_teacher_cond)
    x = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ValueError, match=r"class labels must have shape \(4, 10\), got \(4, 9\)"):
        D(x, 1.0, torch.zeros(4, 9))
    with pytest.raises(ValueError, match="needs class labels"):
        D(x, 1.0)


def test_wrong_testbed_and_wrong_shapes(tmp_path, gmm_teacher):
    with pytest.raises(CheckpointError, match="is for testbed 'gmm', not 'digits'"):
        load_teacher(gmm_teacher, expect_testbed="digits")
    # A teacher file whose stored constructor arguments do not match its tensors.
    D = EDMPrecond(ResidualMLP((2,), hidden=16, blocks=1))
    path = tmp_path / "t.pt"
    save_teacher(path, D, "gmm", (2,))
    obj = torch.load(path, weights_only=True)
    obj["network"]["kwargs"]["hidden"] = 32
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="does not rebuild its network"):
        load_teacher(path)
    with pytest.raises(ValueError, match=r"sigma must be a scalar or of shape \(3,\)"):
        D(torch.zeros(3, 2), torch.ones(2))


def test_parse_config_rejects_bad_values_in_process(gmm_teacher):
    with pytest.raises(ConfigError) as e:
        parse_config(gmm_config(gmm_teacher, method=dict(name="sid", distance="l2")))
    assert str(e.value) == ("bad config: method: method sid does not take distance; it takes name, time_dist, "
                            "time_dist_params, weighting, nonfinite, reuse_psi_cond, alpha, loss_scale")


def test_overrides_and_bad_overrides(tmp_path, gmm_teacher):
    from sim_core.train.config import load_config
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(gmm_config(gmm_teacher)))
    cfg = load_config(path, ["optim.lr_gen=3e-4", "method.distance=huber", "method.distance_params.delta=0.5"])
    assert cfg.optim.lr_gen == 3e-4 and cfg.method.distance == "huber" and cfg.method.distance_params == {"delta": 0.5}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["optim.lr_gen"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(tmp_path / "bad.yaml")
