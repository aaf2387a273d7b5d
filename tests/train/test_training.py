"""Short real distillations: metrics must improve from initialisation; divergence ends a run cleanly."""
from __future__ import annotations

import json

import pytest

from sim_core.train.config import parse_config
from sim_core.train.loop import distill
from sim_core.train.run_dir import read_metrics

from conftest import gmm_config


def _evals(run_dir, key):
    return [(r["step"], r[f"eval/{key}"]) for r in read_metrics(run_dir) if f"eval/{key}" in r]


def test_sim_gmm_improves_frechet_distance(tmp_path, gmm_teacher):
    """300 SIM iterations (batch 128, lr 1e-4) on the ring mixture: FD to the true mixture falls >= 10x.
    Measured at writing: 0.39 at initialisation (the t*=2.5 denoiser pulls samples toward the centre),
    0.012-0.018 after 100-300 iterations; the teacher's own Heun samples reach 0.003."""
    cfg = parse_config(gmm_config(gmm_teacher, optim=dict(lr_gen=1e-4, lr_online=1e-4, batch_size=128),
                                  train=dict(iterations=300, eval_every=300), eval=dict(num_samples=2000)))
    status = distill(cfg, tmp_path / "r")
    assert status["status"] == "finished"
    fd = _evals(tmp_path / "r", "fd")
    assert fd[0][0] == 0 and fd[-1][0] == 300
    assert fd[-1][1] < fd[0][1] / 10, fd
    covered = _evals(tmp_path / "r", "modes_covered")
    assert covered[-1][1] >= 6, covered  # the ring's 8 modes; the init covers none


def test_sim_digits_improves_fid(tmp_path, digits_teacher, digits_classifier):
    """SIM on the 8x8 digits: the classifier-feature FID of the EMA generator falls >= 3x in 300 iterations
    (lr 1e-3, batch 64). Measured at writing: 44.8 at initialisation, 9.5 after 150-300 iterations, against
    8.9 for the teacher's own 35-NFE samples."""
    raw = dict(name="t_digits", scale="smoke", seed=0,
               testbed=dict(kind="digits", teacher=str(digits_teacher), classifier=str(digits_classifier)),
               method=dict(name="sim"), optim=dict(lr_gen=1e-3, lr_online=1e-3, batch_size=64),
               train=dict(iterations=300, log_every=50, eval_every=300, progress=False),
               eval=dict(num_samples=1000, batch_size=500))
    status = distill(parse_config(raw), tmp_path / "r")
    assert status["status"] == "finished"
    fid = _evals(tmp_path / "r", "fid")
    assert fid[-1][1] < fid[0][1] / 3, fid
    assert (tmp_path / "r" / "samples" / "step-00000300.png").stat().st_size > 0


def test_divergence_is_a_status_not_a_crash(tmp_path, gmm_teacher):
    """exp_power with a huge beta overflows at the first theta-step. Under the "stop" policy: status 'diverged' at step
    1, no crash, no nan_to_num, and the run is not resumed afterwards."""
    raw = gmm_config(gmm_teacher, method=dict(name="sim", nonfinite="stop", distance="exp_power",
                                              distance_params=dict(alpha=2.0, beta=1e6)),
                     train=dict(iterations=5, checkpoint_every=1))
    status = distill(parse_config(raw), tmp_path / "r")
    assert status["status"] == "diverged" and status["diverged_at"] == 1
    assert status["reason"] == "non-finite loss"
    assert json.loads((tmp_path / "r" / "status.json").read_text())["status"] == "diverged"
    assert distill(parse_config(raw), tmp_path / "r")["diverged_at"] == 1  # a rerun does not retrain


def test_the_sanitize_policy_keeps_training_and_counts_what_it_repaired(tmp_path, gmm_teacher):
    """The same overflow under SiD's "sanitize" (SIM's default): the samples whose loss overflows are dropped, the
    gradients pass nan_to_num, the run goes to its end with finite parameters and says how many steps it repaired."""
    import torch
    raw = gmm_config(gmm_teacher, method=dict(name="sim", distance="exp_power",
                                              distance_params=dict(alpha=2.0, beta=1e6)),
                     train=dict(iterations=5, checkpoint_every=1, log_every=1))
    status = distill(parse_config(raw), tmp_path / "r")
    assert status["status"] in ("finished", "collapsed") and status["nonfinite_steps"] == 5
    assert [r["nonfinite_steps"] for r in read_metrics(tmp_path / "r") if "loss_gen" in r] == [1, 2, 3, 4, 5]
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert state["nonfinite_steps"] == 5 and all(v.isfinite().all() for v in state["G"].values())


@pytest.mark.parametrize("method", ["sid", "di"])
def test_baselines_run_in_the_same_loop(tmp_path, gmm_teacher, method):
    cfg = parse_config(gmm_config(gmm_teacher, method=dict(name=method), optim=dict(batch_size=128),
                                  train=dict(iterations=150, eval_every=150)))
    assert distill(cfg, tmp_path / "r")["status"] == "finished"
    fd = _evals(tmp_path / "r", "fd")
    assert fd[-1][1] < fd[0][1] / 3, fd
