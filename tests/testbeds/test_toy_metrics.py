"""Fréchet distance and the mixture metrics (mode coverage, off-mode mass, NLL gap)."""
import math

import numpy as np
import pytest
import torch

from sim_core.testbeds.gmm.metrics import frechet_distance, gmm_metrics, mixture_entropy, mode_assignment
from sim_core.testbeds.gmm.mixture import random_mixture, ring

N = 10_000


def test_frechet_1d_closed_form():
    # two 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0, rel=1e-12)


def test_frechet_diagonal_closed_form():
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 1.0])
    expected = ((m1 - m2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)


def test_frechet_general_properties():
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    S1, S2 = A @ A.T + 0.1 * np.eye(5), B @ B.T + 0.1 * np.eye(5)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    assert frechet_distance(m1, S1, m1, S1) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(m1, S1, m2, S2) == pytest.approx(frechet_distance(m2, S2, m1, S1), rel=1e-9)
    # a rotation of both Gaussians leaves the distance unchanged
    Q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    rot = frechet_distance(Q @ m1, Q @ S1 @ Q.T, Q @ m2, Q @ S2 @ Q.T)
    assert rot == pytest.approx(frechet_distance(m1, S1, m2, S2), rel=1e-8)
    with pytest.raises(ValueError, match="need means"):
        frechet_distance(m1, S1, m2[:3], S2)


@pytest.fixture(scope="module", params=["ring", "random_mixture"])
def gmm(request):
    return ring() if request.param == "ring" else random_mixture()


def own_samples(gmm, n=N, seed=1):
    return gmm.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_perfect_generator(gmm):
    x, _ = own_samples(gmm)
    m = gmm_metrics(x, gmm)
    # FD of an n-sample estimate: E|m_hat - m|^2 = tr(C)/n plus an O(d tr(C)/n) covariance term; bound d tr(C)/n.
    assert 0 <= m["fd"] < gmm.d * float(gmm.cov().trace()) / N
    assert m["modes_covered"] == gmm.K
    # by construction 0.1% of true draws fall outside the 99.9% Mahalanobis ball: 10 +- 3 of 10k samples
    assert m["off_mode_fraction"] < 0.003
    # TV between the mode histogram and w: per mode E|m_k - w_k| ~ sqrt(w_k(1 - w_k)/n) ~ 0.003, 8 modes -> ~0.01
    assert m["mode_mass_tv"] < 0.03
    # nll is a mean of n i.i.d. -log p(x); the entropy a mean over 200k draws: 4 combined standard errors
    lp = gmm.log_prob(x).double()
    se = math.sqrt(float(lp.var()) / N + float(lp.var()) / 200_000)
    assert abs(m["nll_gap"]) < 4 * se
    assert m["nll"] == pytest.approx(mixture_entropy(gmm) + m["nll_gap"], rel=1e-12)


def test_mode_collapse_is_visible():
    g = ring()
    x, k = own_samples(g)
    collapsed = x[k < 3]  # Diff-Instruct-like: only 3 of the 8 modes survive
    m = gmm_metrics(collapsed, g)
    assert m["modes_covered"] == 3
    assert all(v == 0 for v in m["mode_mass"][3:])
    # exact value 0.5 (3 |1/3 - 1/8| + 5/8) = 0.625, up to the ~0.1% off-mode draws
    assert m["mode_mass_tv"] == pytest.approx(0.625, abs=0.01)
    assert m["fd"] > 0.5
    # the dropped modes are invisible to the NLL gap: the kept ones are reproduced exactly
    assert abs(m["nll_gap"]) < 0.1


def test_mode_centre_collapse_gives_negative_nll_gap():
    g = ring()
    x = g.means.repeat(100, 1)  # every mode, but no spread
    m = gmm_metrics(x, g)
    assert m["modes_covered"] == 8 and m["mode_mass_tv"] < 1e-9
    assert m["nll_gap"] < -0.5  # H(q) << H(p): the gap is not a divergence
    # FD hardly notices: per axis (sqrt(0.5) - sqrt(0.5 + 0.08^2))^2 ~ 2e-5
    assert m["fd"] < 1e-3


def test_off_mode_noise_is_counted():
    g = ring()
    x, _ = own_samples(g, n=8000)
    centre = 0.05 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    m = gmm_metrics(torch.cat([x, centre]), g)  # the ring's centre is 12 std from every mode
    assert m["off_mode_fraction"] == pytest.approx(0.2, abs=0.005)
    assert m["modes_covered"] == 8
    assert m["mode_mass_tv"] == pytest.approx(0.2, abs=0.02)
    assert (mode_assignment(centre, g) == -1).all()

    h = random_mixture()
    noise = 2 * torch.rand(2000, h.d, generator=torch.Generator().manual_seed(4), dtype=torch.float64) - 1
    mh = gmm_metrics(noise, h)
    assert mh["off_mode_fraction"] > 0.99 and mh["modes_covered"] == 0


def test_bad_samples_raise():
    g = ring()
    with pytest.raises(ValueError, match="non-finite"):
        gmm_metrics(torch.full((10, 2), math.nan), g)
    with pytest.raises(ValueError, match=r"shape \(N >= 2, 2\)"):
        gmm_metrics(torch.zeros(10, 3), g)
