"""Registries by name, and the numbers behind each entry: time distributions, weightings, distances, EMA."""
from __future__ import annotations

import math

import pytest
import torch

from sim_core.core.distances import DISTANCES, build_distance
from sim_core.core.ema import ema_beta
from sim_core.core.methods import METHODS
from sim_core.core.time_dists import TIME_DISTRIBUTIONS, build_time_distribution
from sim_core.core.weightings import WEIGHTINGS, get_weighting
from sim_core.registry import UnknownNameError

N = 400_000


def _draw(name, **kw):
    return build_time_distribution(name, **kw).sample(N, torch.Generator().manual_seed(0), dtype=torch.float64)


def test_registries_list_valid_names():
    for reg, valid in ((DISTANCES, "alpha_power, exp_power, huber, l1, l2, pseudo_huber"),
                       (TIME_DISTRIBUTIONS, "karr, karr_sid, lognormal, p_edm, p_sim, t2i"),
                       (WEIGHTINGS, "lambda_edm, nowgt, sidwgt"), (METHODS, "di, sid, sim")):
        with pytest.raises(UnknownNameError, match=f"valid names: {valid}$"):
            reg.get("nope")


@pytest.mark.parametrize("name,mean,std", [("p_edm", -1.2, 1.2), ("p_sim", -3.5, 2.5)])
def test_lognormal_moments(name, mean, std):
    s = _draw(name).log()
    # standard errors: std/sqrt(N) ~ 0.004 for the mean; 5 SE tolerance
    assert abs(s.mean() - mean) < 5 * std / math.sqrt(N)
    assert abs(s.std() - std) < 5 * std / math.sqrt(2 * N)


def test_t2i_truncation():
    t = _draw("t2i")
    assert t.min() >= 0.01 and t.max() <= 156.6155
    s = t.log()
    assert s.min() < math.log(0.0102) and s.max() > math.log(100)
    # quartiles of the truncated normal on s: Phi^-1(Phi(a) + q (Phi(b) - Phi(a))), a, b the log-bounds
    from scipy.stats import norm
    a, b = norm.cdf((math.log(0.01) + 2) / 2), norm.cdf((math.log(156.6155) + 2) / 2)
    for q in (0.25, 0.5, 0.75):
        expected = -2 + 2 * norm.ppf(a + q * (b - a))
        assert abs(s.quantile(q).item() - expected) < 0.02, (q, expected)


def test_t2i_clamp_piles_the_mass_below_the_range_on_its_bound():
    from scipy.stats import norm
    below = norm.cdf((math.log(0.01) + 2) / 2)  # 9.6% of s ~ N(-2, 4) lies below log 0.01
    above = norm.sf((math.log(156.6155) + 2) / 2)
    t = _draw("t2i", truncation="clamp")
    assert t.min() == 0.01 and t.max() <= 156.6155
    sd = math.sqrt(below * (1 - below) / N)
    assert abs((t == 0.01).double().mean().item() - below) < 5 * sd and abs(below - 0.0964) < 5e-4
    assert abs((t == 156.6155).double().mean().item() - above) < 5 * math.sqrt(above / N) + 1e-5
    inside = t[(t > 0.01) & (t < 156.6155)].log()  # between the bounds it is the untruncated normal
    assert abs(inside.median().item() - (-2 + 2 * norm.ppf(below + 0.5 * (1 - below - above)))) < 0.02
    assert (_draw("t2i") == 0.01).sum() == 0  # resample puts no mass on the bound
    assert build_time_distribution("t2i", truncation="clamp").params()["truncation"] == "clamp"
    with pytest.raises(ValueError, match="truncation must be one of resample, clamp, got 'reflect'"):
        build_time_distribution("t2i", truncation="reflect")


def test_karr_paper_is_discrete_on_the_grid():
    t = _draw("karr")
    grid = build_time_distribution("karr").grid()
    assert set(t.unique().tolist()) <= set(grid[:801].tolist())
    assert len(t.unique()) == 801
    assert abs(t.max() - 80) < 1e-9 and abs(t.min() - grid[800]) < 1e-12


def test_karr_sid_matches_the_official_code_range():
    t = _draw("karr_sid")
    # docs/reference-code.md#sids-generator-loss: sigma in [0.002, 24.41]; median 0.965; P(sigma > 2.5) ~ 0.376
    assert t.min() >= 0.002 - 1e-12 and t.max() <= 24.42
    assert abs(t.median() - 0.965) < 0.02
    assert abs((t > 2.5).double().mean() - 0.376) < 0.005


def test_bad_time_distribution_numbers():
    with pytest.raises(ValueError, match="p_std must be > 0"):
        build_time_distribution("lognormal", p_mean=0.0, p_std=0.0)
    with pytest.raises(ValueError, match="bad parameters"):
        build_time_distribution("p_edm", p_mean=1.0)


def test_weightings():
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    assert torch.allclose(get_weighting("lambda_edm")(sigma), (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2)
    assert torch.equal(get_weighting("nowgt")(sigma), torch.ones(3, dtype=torch.float64))
    x0 = torch.randn(3, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    Dq = torch.randn(3, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    w = get_weighting("sidwgt")(sigma, x0, Dq)
    assert torch.allclose(w, 16 / (x0 - Dq).abs().reshape(3, -1).sum(1))  # C / ||x0 - D_q||_1, C = 16
    assert not w.requires_grad  # stop-gradient
    with pytest.raises(ValueError, match="needs x0"):
        get_weighting("sidwgt")(sigma)


@pytest.mark.parametrize("name,params", [("l2", {}), ("alpha_power", {"alpha": 1.5}), ("exp_power", {"alpha": 2.0, "beta": 0.1}),
                                         ("l1", {}), ("huber", {"delta": 0.5}), ("pseudo_huber", {"c": 0.3})])
def test_distance_derivative_is_the_gradient_of_d(name, params):
    with pytest.warns(RuntimeWarning) if name == "l1" else _nothing():
        dist = build_distance(name, **params)
    y = torch.randn(8, 3, 2, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(dist.d(y).sum(), y)
    assert torch.allclose(dist.grad(y), g, rtol=1e-10, atol=1e-12)
    assert torch.all(dist.d(torch.zeros(2, 3, dtype=torch.float64)) == 0)
    assert torch.all(dist.d(y.detach()) > 0)


def test_huber_uses_both_branches_correctly():
    h = build_distance("huber", delta=1.0)
    y = torch.tensor([[0.5, -3.0]])
    assert torch.allclose(h.d(y), torch.tensor([0.125 + (3.0 - 0.5)]))
    assert torch.equal(h.grad(y), torch.tensor([[0.5, -1.0]]))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_exp_power_alpha_above_two_warns():
    with pytest.warns(RuntimeWarning, match="infinite under Gaussian tails"):
        build_distance("exp_power", alpha=3.0, beta=0.1)


def test_ema_beta_matches_reference():
    # docs/reference-code.md#ema: half-life reaches 500k images after 10 Mimg; steady beta at batch 256 ~ 0.999645
    assert abs(ema_beta(20_000_000, 256) - 0.5 ** (256 / 500_000)) < 1e-15
    assert abs(ema_beta(20_000_000, 256) - 0.999645) < 1e-6
    assert abs(ema_beta(1_000_000, 256) - 0.5 ** (256 / 50_000)) < 1e-15  # ramp-up: 0.05 * 1M
    assert ema_beta(0, 256) == 0.0


def test_method_defaults_follow_the_papers():
    sim = METHODS.get("sim")().build()
    assert sim.describe() == {"time_dist": "p_sim", "weighting": "nowgt", "distance": "pseudo_huber(c=0.001)",
                              "space": "denoiser", "detach_direction": False}
    assert METHODS.get("sid")().build().describe() == {"time_dist": "karr_sid", "weighting": "sidwgt", "alpha": 1.2,
                                                       "loss_scale": 100.0}
    # what each method's own code does with non-finite values, and DI's reuse of the psi-step's labels
    assert [METHODS.get(m)().nonfinite for m in ("sim", "sid", "di")] == ["sanitize", "sanitize", "sanitize_grads"]
    assert [METHODS.get(m)().reuse_psi_cond for m in ("sim", "sid", "di")] == [False, False, True]
    assert METHODS.get("di")().build().describe() == {"time_dist": "p_edm", "weighting": "nowgt"}
    from sim_core.train.config import parse_config
    cfg = parse_config(dict(name="x", testbed=dict(kind="gmm", teacher="t.pt"), train=dict(iterations=1)))
    assert cfg.method.name == "sim" and cfg.method.distance == "pseudo_huber"  # the paper's method by default


def test_validating_a_sweep_imports_no_torch(tmp_path):
    """Snakemake validates every run of a sweep when it parses the Snakefile: that must not cost `import torch`
    (sim_core/lazy.py); a run's losses still build, and fail on bad values, without it."""
    import subprocess
    import sys
    code = (
        "import sys\n"
        "from workflow.schema import load_scale\n"
        "from workflow.sweep import expand\n"
        "s = load_scale('configs/scales/toy.yaml').model_copy(update={'results_dir': sys.argv[1]})\n"
        "sweep = expand(s)\n"
        "assert len(sweep.runs) > 40, len(sweep.runs)\n"
        "from sim_core.errors import ConfigError\n"
        "from sim_core.train.config import parse_config\n"
        "cfg = dict(name='x', testbed=dict(kind='digits', teacher='t.pt'), train=dict(iterations=1),\n"
        "           method=dict(name='sim', distance='huber', distance_params=dict(delta=-1)))\n"
        "try:\n"
        "    parse_config(cfg)\n"
        "    raise SystemExit('bad distance parameter accepted')\n"
        "except ConfigError as e:\n"
        "    assert 'distance huber: delta must be a positive finite number, got -1.0' in str(e), e\n"
        "print('torch' in sys.modules)\n")
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=root, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"
