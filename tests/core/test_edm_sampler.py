"""EDM formulation and the Heun sampler, checked against the Gaussian mixture's exact denoiser."""
from __future__ import annotations

import math

import torch

from sim_core.core.edm import EDMPrecond, add_noise, karras_sigmas, precond_coefficients, score_from_denoiser
from sim_core.core.sampler import heun_sampler, nfe
from sim_core.nets.mlp import ResidualMLP
from sim_core.testbeds.gmm.mixture import ring


def test_precond_coefficients_at_t_star():
    # docs/reference-code.md#edm-machinery: at sigma = 2.5, c_skip ~ 0.0385, c_out ~ 0.490, c_in ~ 0.392.
    c_skip, c_out, c_in, c_noise = precond_coefficients(torch.tensor(2.5, dtype=torch.float64))
    assert abs(c_skip - 0.25 / 6.5) < 1e-12 and abs(c_skip - 0.0385) < 1e-4
    assert abs(c_out - 2.5 * 0.5 / math.sqrt(6.5)) < 1e-12 and abs(c_out - 0.490) < 1e-3
    assert abs(c_in - 1 / math.sqrt(6.5)) < 1e-12 and abs(c_in - 0.392) < 1e-3
    assert abs(c_noise - math.log(2.5) / 4) < 1e-12


def test_precond_wraps_raw_network_exactly():
    torch.manual_seed(0)
    net = ResidualMLP((2,), hidden=16, blocks=1).double()
    D = EDMPrecond(net)
    x, sigma = torch.randn(5, 2, dtype=torch.float64), torch.rand(5, dtype=torch.float64) * 3 + 0.01
    s = sigma[:, None]
    expected = 0.25 / (s ** 2 + 0.25) * x + s * 0.5 / (s ** 2 + 0.25).sqrt() * net(
        x / (s ** 2 + 0.25).sqrt(), sigma.log() / 4)
    assert torch.allclose(D(x, sigma), expected, atol=1e-14, rtol=0)


def test_score_from_exact_denoiser_is_the_score():
    gmm = ring()
    x = torch.randn(100, 2, dtype=torch.float64)
    for sigma in (0.05, 0.5, 5.0):
        s = score_from_denoiser(gmm.denoiser(x, sigma), x, sigma)
        assert torch.allclose(s, gmm.score(x, sigma), rtol=1e-10, atol=1e-10)
    assert torch.equal(add_noise(x, 2.0, torch.ones_like(x)), x + 2.0)


def test_karras_grid():
    s = karras_sigmas(1000)
    assert abs(s[0] - 80) < 1e-9 and abs(s[-1] - 0.002) < 1e-12 and bool((s[1:] < s[:-1]).all())
    # The paper's Karr draws k in {0..800}: sigma_800 ~ 0.084 (DIGEST section 3).
    assert abs(s[800].item() - 0.0842) < 5e-4


def test_heun_sampler_second_order_convergence():
    """Error against a 1024-step reference falls ~4x per doubling of steps (second order) on the exact
    mixture denoiser, and 18 steps = 35 NFE."""
    gmm = ring()
    D = gmm.as_denoiser()
    latents = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = heun_sampler(D, latents, num_steps=1024, net_dtype=torch.float64)
    errs = {n: (heun_sampler(D, latents, num_steps=n, net_dtype=torch.float64) - ref).norm(dim=1).mean().item()
            for n in (32, 64, 128)}
    r1, r2 = errs[32] / errs[64], errs[64] / errs[128]
    assert 3.0 < r1 < 5.5 and 3.0 < r2 < 5.5, errs
    assert nfe(18) == 35
    # 35-NFE samples of the exact denoiser are samples of the mixture: every mode, correct spread.
    x = heun_sampler(D, torch.randn(4000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64),
                     num_steps=18, net_dtype=torch.float64)
    from sim_core.testbeds.gmm.metrics import gmm_metrics
    m = gmm_metrics(x, gmm)
    assert m["modes_covered"] == 8 and m["fd"] < 5e-3, m
