"""Closed-form Gaussian-mixture testbed: score, denoiser, moments, validation, serialisation."""
import json
import math

import pytest
import torch

from sim_core.testbeds.gmm.mixture import GaussianMixture, by_name, random_mixture, ring

SIGMAS = [0.0, 1e-3, 0.05, 0.5, 2.0, 80.0]


@pytest.fixture(scope="module", params=["ring", "random_mixture"])
def gmm(request):
    return by_name(request.param)


def noisy_points(gmm, sigma, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, _ = gmm.sample(n, g, dtype=torch.float64)
    return x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("sigma", SIGMAS)
def test_score_matches_autograd_of_log_prob(gmm, sigma):
    x = noisy_points(gmm, sigma).requires_grad_(True)
    (grad,) = torch.autograd.grad(gmm.log_prob(x, sigma).sum(), x)
    assert rel_err(gmm.score(x.detach(), sigma), grad) < 1e-8


@pytest.mark.parametrize("sigma", SIGMAS)
def test_log_prob_matches_torch_distributions(gmm, sigma):
    eye = torch.eye(gmm.d, dtype=torch.float64)
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=gmm.weights),
        torch.distributions.MultivariateNormal(gmm.means, covariance_matrix=gmm.covs + sigma ** 2 * eye))
    x = noisy_points(gmm, sigma)
    assert torch.allclose(gmm.log_prob(x, sigma), ref.log_prob(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sigma", SIGMAS[1:])
def test_denoiser_is_tweedie(gmm, sigma):
    x = noisy_points(gmm, sigma)
    D = gmm.denoiser(x, sigma)
    # the denoiser is computed as a posterior mean, independently of score(); the two forms must agree
    assert torch.allclose(D, x + sigma ** 2 * gmm.score(x, sigma), rtol=0, atol=1e-9 * max(1.0, sigma))


def test_denoiser_limits(gmm):
    x = noisy_points(gmm, 0.5)
    assert torch.allclose(gmm.denoiser(x, 0.0), x, rtol=0, atol=1e-12)  # E[x0 | x_t] = x_t without noise
    # As sigma -> inf the posterior tends to the prior: to first order D = E[x0] + Cov[x0] (x - E[x0]) / sigma^2,
    # with an O(1/sigma^2) remainder against an O(1/sigma) first-order term (x is of size sigma).
    s = 1e4
    far = noisy_points(gmm, s)
    first = (far - gmm.mean()) @ gmm.cov() / s ** 2
    assert rel_err(gmm.denoiser(far, s) - gmm.mean(), first) < 1e-2


def test_analytic_moments_match_monte_carlo(gmm):
    n = 200_000
    x, _ = gmm.sample(n, torch.Generator().manual_seed(123), dtype=torch.float64)
    m_hat, C_hat = x.mean(0), torch.cov(x.T)
    # Tolerance: 5 standard errors per entry, the standard errors estimated from the same draws:
    # se(mean_i) = sqrt(C_ii / n), se(C_ij) = sqrt(Var[(x_i - m_i)(x_j - m_j)] / n).
    se_mean = (C_hat.diagonal() / n).sqrt()
    c = x - m_hat
    se_cov = ((c[:, :, None] * c[:, None, :]).var(0) / n).sqrt()
    assert ((m_hat - gmm.mean()).abs() <= 5 * se_mean).all()
    assert ((C_hat - gmm.cov()).abs() <= 5 * se_cov + 1e-12).all()


def test_sampling_is_reproducible_and_weighted(gmm):
    a, ka = gmm.sample(50_000, torch.Generator().manual_seed(7))
    b, kb = gmm.sample(50_000, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and torch.equal(ka, kb) and a.dtype == torch.float32
    freq = torch.bincount(ka, minlength=gmm.K).double() / 50_000
    assert ((freq - gmm.weights).abs() <= 5 * (gmm.weights * (1 - gmm.weights) / 50_000).sqrt()).all()


def test_responsibilities_are_a_distribution(gmm):
    r = gmm.responsibilities(noisy_points(gmm, 0.3), 0.3)
    assert torch.allclose(r.sum(1), torch.ones(r.shape[0], dtype=r.dtype)) and (r >= 0).all()


def test_as_denoiser_per_sample_sigma(gmm):
    D = gmm.as_denoiser()
    x = noisy_points(gmm, 1.0, n=6)
    sigma = torch.tensor([0.0, 1e-3, 0.1, 1.0, 10.0, 80.0], dtype=torch.float64)
    rows = torch.cat([gmm.denoiser(x[i:i + 1], float(sigma[i])) for i in range(6)])
    assert torch.allclose(D(x, sigma), rows, rtol=1e-12, atol=1e-12)
    assert torch.allclose(D(x, 0.7), gmm.denoiser(x, 0.7), rtol=0, atol=0)
    x32 = x.float()
    out = D(x32, sigma.float())
    assert out.dtype == torch.float32 and torch.allclose(out, rows.float(), atol=1e-5)
    with pytest.raises(ValueError, match="unconditional"):
        D(x, 1.0, torch.zeros(6, 10))  # a cond for a denoiser that takes none


def test_ring_geometry():
    g = ring()
    assert g.K == 8 and g.d == 2
    assert torch.allclose(g.means.norm(dim=1), torch.ones(8, dtype=torch.float64))
    assert torch.allclose(g.cov(), (0.5 + 0.08 ** 2) * torch.eye(2, dtype=torch.float64))
    gap = (g.means[0] - g.means[1]).norm()
    assert gap / 0.08 > 9  # modes are well separated


def test_random_mixture_is_anisotropic_and_seeded():
    a, b, c = random_mixture(seed=0), random_mixture(seed=0), random_mixture(seed=1)
    assert a.d == 16 and a.K == 8
    assert torch.equal(a.covs, b.covs) and not torch.equal(a.covs, c.covs)
    cond = a.eigvals.amax(1) / a.eigvals.amin(1)
    assert (cond > 10).all()  # per-axis stds span most of [0.02, 0.2]
    assert a.weights.max() / a.weights.min() > 1.2


def test_bad_inputs_raise():
    mu, cov, w = torch.zeros(2, 3), torch.eye(3).expand(2, 3, 3).clone(), torch.tensor([0.5, 0.5])
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(torch.zeros(3), cov, w)
    with pytest.raises(ValueError, match="covs must have shape"):
        GaussianMixture(mu, torch.eye(3), w)
    with pytest.raises(ValueError, match="weights must have shape"):
        GaussianMixture(mu, cov, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture(mu, cov, torch.tensor([0.5, 0.6]))
    with pytest.raises(ValueError, match="positive"):
        GaussianMixture(mu, cov, torch.tensor([1.5, -0.5]))
    bad = cov.clone()
    bad[1, 2, 2] = -1.0
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture(mu, bad, w)
    asym = cov.clone()
    asym[0, 0, 1] = 0.5
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixture(mu, asym, w)
    with pytest.raises(ValueError, match="finite"):
        GaussianMixture(mu * math.nan, cov, w)
    g = GaussianMixture(mu, cov, w)
    with pytest.raises(ValueError, match=r"shape \(B, 3\)"):
        g.score(torch.zeros(4, 2), 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        g.log_prob(torch.zeros(4, 3), -1.0)
    with pytest.raises(ValueError, match="sigma must be a scalar"):
        g.denoiser(torch.zeros(4, 3), torch.ones(3))


def test_spec_round_trip(gmm):
    spec = json.loads(json.dumps(gmm.spec()))
    back = GaussianMixture.from_spec(spec)
    assert back.name == gmm.name
    for attr in ("means", "covs", "weights"):
        assert torch.equal(getattr(back, attr), getattr(gmm, attr))
    x = noisy_points(gmm, 0.2)
    assert torch.equal(back.score(x, 0.2), gmm.score(x, 0.2))
    with pytest.raises(ValueError, match="spec"):
        GaussianMixture.from_spec({"means": []})


def test_by_name_lists_valid_names():
    assert by_name("ring", K=4).K == 4
    with pytest.raises(ValueError, match="valid names: random_mixture, ring"):
        by_name("moons")
    with pytest.raises(ValueError, match="bad parameters"):
        by_name("ring", radii=2)
