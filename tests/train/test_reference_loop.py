"""Where the tables depend on it, the loop does what SiD's and DI's code do, checked against a hand computation of
their formulas: the EMA's beta from the image count before the step, the non-finite policies (SiD drops non-finite
samples and both codes pass the gradients through nan_to_num; "stop" is the harness's own), DI's generator step
reusing the psi-step's labels, SiD's generator-loss scale, collapse as a status, and one Karr distribution per axis
of Figure 2."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from sim_core.core.edm import EDMPrecond
from sim_core.nets.mlp import ResidualMLP
from sim_core.testbeds.base import Testbed as BaseTestbed
from sim_core.testbeds.base import collapse_reason
from sim_core.train.config import parse_config
from sim_core.train.loop import Distiller

ROOT = Path(__file__).resolve().parents[2]
torch.set_num_threads(1)


class _Labels(BaseTestbed):
    """A conditional MLP testbed that records every conditioning it draws."""

    def __init__(self, label_dim=3):
        torch.manual_seed(0)
        super().__init__(EDMPrecond(ResidualMLP((1, 4, 4), hidden=16, blocks=1, label_dim=label_dim), label_dim=label_dim),
                         dict(data_shape=[1, 4, 4], label_dim=label_dim))
        self.drawn = []

    def draw_cond(self, n, rng, dtype=torch.float32, device="cpu"):
        cond = super().draw_cond(n, rng, dtype, device)
        self.drawn.append(cond)
        return cond

    def collapse_reason(self, G, seed, n=1000):
        return None

    def save_samples(self, G, path, seed):
        pass


def _distiller(tmp_path, method: dict, conditional=True, **over) -> Distiller:
    raw = dict(name="ref", testbed=dict(kind="digits", teacher="unused.pt", conditional=conditional), method=method,
               optim=dict(batch_size=8, lr_gen=1e-3, lr_online=1e-3), train=dict(iterations=4, progress=False),
               ema=dict(halflife_kimg=0.01, rampup_ratio=0.05))
    raw.update(over)
    return Distiller(parse_config(raw), tmp_path, _Labels(3 if conditional else 0), evaluator=lambda G, step: {})


def test_ema_beta_comes_from_the_image_count_before_the_step(tmp_path):
    """EDM/SiD/DI: half-life = min(halflife, rampup * cur_nimg) with cur_nimg counted before the step, so the first
    update copies G (beta = 0) and the k-th uses (k-1) * batch images; the chain is rebuilt here by hand."""
    d = _distiller(tmp_path, dict(name="sim"))
    d.run()
    # the same steps again, keeping G after each, and the reference EMA formula applied by hand
    ref = _distiller(tmp_path / "again", dict(name="sim"))
    B, H, r = 8, 0.01 * 1000, 0.05
    ema = {k: v.clone() for k, v in ref.G.state_dict().items()}
    for k in range(4):
        ref.psi_step()
        ref.theta_step()
        cur_nimg = k * B  # before this step's images
        beta = 0.5 ** (B / max(min(H, cur_nimg * r), 1e-8))
        ema = {n: p.detach().lerp(ema[n], beta) for n, p in ref.G.state_dict().items()}
        if k == 0:
            assert beta == 0.0 and all(torch.equal(ema[n], p) for n, p in ref.G.state_dict().items())
    for n, p in d.G_ema.state_dict().items():
        torch.testing.assert_close(p, ema[n], rtol=0, atol=0, msg=n)


def _nan_in_first_sample(loss):
    """Wrap a loss so that the first sample of every batch has a NaN loss (a constant: no NaN reaches the gradients
    through it, so what the policy does to the loss is what the gradients show)."""
    orig = loss.loss

    def loss_fn(*args):
        per_sample = orig(*args)
        return torch.cat([torch.full_like(per_sample[:1], float("nan")).detach(), per_sample[1:]])
    loss.loss = loss_fn
    return loss


def test_sanitize_drops_non_finite_samples_as_sid_does(tmp_path):
    """SiD: loss[~isnan].sum() / batch, then nan_to_num on the gradients; the step is taken and counted."""
    d = _distiller(tmp_path, dict(name="sim", nonfinite="sanitize"))
    ref = _distiller(tmp_path / "ref", dict(name="sim", nonfinite="sanitize"))
    _nan_in_first_sample(d.theta_loss)
    d.psi_step()
    ref.psi_step()
    loss = d.theta_step()
    # by hand on the twin: the same draws, the loss of samples 1.. summed and divided by the batch of 8
    z, cond = ref._draw()
    noise = ref._noise(ref.theta_loss)
    ref.opt_theta.zero_grad(set_to_none=True)
    per_sample = ref.theta_loss.loss(ref.G(z, cond), cond, ref.D_teacher, ref.D_psi, noise)
    expected = per_sample[1:].sum() / 8
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-6, atol=1e-7)
    for (n, p), (_, q) in zip(d.G.named_parameters(), ref.G.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-8, msg=n)
    assert d._step_sanitized and all(p.isfinite().all() for p in d.G.parameters())


def test_nan_to_num_replaces_as_the_reference_code(tmp_path):
    """nan -> 0, +inf -> 1e5, -inf -> -1e5 in the gradients (SiD/DI: torch.nan_to_num(..., 0, 1e5, -1e5))."""
    d = _distiller(tmp_path, dict(name="di"))  # DI: sanitize_grads, no sample dropped
    p = next(d.G.parameters())
    bad = torch.tensor([float("nan"), float("inf"), -float("inf"), 2.0])

    def micro_loss(part):
        return (p.flatten()[:4] * 0).sum() + torch.zeros(part.stop - part.start)
    p.register_hook(lambda g: torch.cat([bad, g.flatten()[4:]]).view_as(g))
    seen = {}
    opt_step = d.opt_theta.step
    d.opt_theta.step = lambda: seen.setdefault("grad", p.grad.flatten()[:4].clone()) is None or opt_step()
    d._accumulate(micro_loss, d.G, d.opt_theta)
    assert seen["grad"].tolist() == [0.0, 1e5, -1e5, 2.0]


def test_the_stop_policy_takes_no_step_and_diverges(tmp_path):
    d = _distiller(tmp_path, dict(name="sim", nonfinite="stop"))
    _nan_in_first_sample(d.theta_loss)
    before = {n: p.detach().clone() for n, p in d.G.named_parameters()}
    status = d.run()
    assert status["status"] == "diverged" and status["diverged_at"] == 1 and status["reason"] == "non-finite loss"
    assert all(torch.equal(p, before[n]) for n, p in d.G.named_parameters())


def test_di_reuses_the_psi_steps_labels_and_the_others_draw_their_own(tmp_path):
    for method, draws_per_iteration in (("di", 1), ("sim", 2), ("sid", 2)):
        d = _distiller(tmp_path / method, dict(name=method))
        seen = []
        orig = d.theta_loss.loss
        d.theta_loss.loss = lambda x0, cond, *a: seen.append(cond) or orig(x0, cond, *a)
        d.psi_step()
        d.theta_step()
        assert len(d.testbed.drawn) == draws_per_iteration, method
        assert torch.equal(seen[0], d.testbed.drawn[0]) == (method == "di"), method


def test_sid_scales_its_generator_loss_by_lsg(tmp_path):
    """SiD's generator loss is summed and multiplied by lsg / batch = 100 / batch: 100 x the batch mean."""
    from baselines.sid import SiDConfig
    d = _distiller(tmp_path, dict(name="sid"))
    scaled, plain = SiDConfig().build(), SiDConfig(loss_scale=1.0).build()
    z, cond = d._draw()
    noise = d._noise(scaled)
    x0 = d.G(z, cond)
    a = scaled.loss(x0, cond, d.D_teacher, d.D_psi, noise)
    b = plain.loss(x0, cond, d.D_teacher, d.D_psi, noise)
    torch.testing.assert_close(a, 100 * b, rtol=1e-6, atol=0)


def test_collapse_is_told_from_a_healthy_generator():
    g = torch.Generator().manual_seed(0)
    healthy = torch.rand(200, 1, 8, 8, generator=g) * 1.6 - 0.8
    assert collapse_reason(healthy, (-1.0, 1.0)) is None
    saturated = torch.sign(torch.randn(200, 1, 8, 8, generator=g)) * 7000
    assert collapse_reason(saturated, (-1.0, 1.0)).startswith("saturated: 100% of the sample values lie outside")
    constant = healthy[:1].expand(200, -1, -1, -1)
    assert collapse_reason(constant, (-1.0, 1.0)).startswith("constant: the samples do not vary")
    assert collapse_reason(constant.reshape(200, -1)[:, :2], None).startswith("constant")  # the mixture: no range
    nan = healthy.clone()
    nan[3, 0, 0, 0] = float("nan")
    assert collapse_reason(nan).startswith("non-finite")


def test_a_collapsed_run_ends_with_its_own_status(tmp_path):
    d = _distiller(tmp_path, dict(name="sim"))
    d.testbed.collapse_reason = lambda G, seed, n=1000: "constant: the samples do not vary (mean std 0)"
    status = d.run()
    assert status["status"] == "collapsed" and status["reason"].startswith("constant")


@pytest.mark.parametrize("scale", ["toy", "smoke", "paper"])
def test_figure2_holds_each_axis_fixed_and_names_it(scale):
    """Every Karr cell of Figure 2 is SiD's karr_sid, as the plain SiD row; every lognormal cell SIM's p_sim; and
    the label names the distribution the row runs."""
    from sim_core.core.methods import METHODS
    rows = yaml.safe_load((ROOT / "configs" / "scales" / f"{scale}.yaml").read_text())["experiments"]["figure2"]["rows"]
    for row in rows:
        method = METHODS.get(row["method"]["name"])(**{k: v for k, v in row["method"].items() if k != "name"})
        parts = row["label"].split(" / ")
        if len(parts) == 3:
            assert parts[1] == method.time_dist and parts[2] == method.weighting, row
        assert method.time_dist in ("p_sim", "karr_sid", "p_edm"), row
    plain_sid = next(r for r in rows if r["label"] == "SiD")
    assert METHODS.get("sid")(**{k: v for k, v in plain_sid["method"].items() if k != "name"}).time_dist == "karr_sid"
