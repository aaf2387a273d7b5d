"""SIM's EDM form of PixArt-alpha (eq. B.14) on a tiny diffusers PixArtTransformer2DModel: the noise-level table
and its timesteps as SIM's inference code gives them, D(x; sigma) against a hand computation, the text mask, and
gradients to the input through frozen weights."""
from __future__ import annotations

import diffusers
import pytest
import torch

from sim_core.testbeds.t2i.cond import TextCond
from sim_core.testbeds.t2i.edm_pixart import PixArtEDM, table_index, u_table


def tiny_pixart(seed=0):
    """diffusers' own pipeline-test configuration of PixArt-alpha (32,360 parameters)."""
    torch.manual_seed(seed)
    return diffusers.PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6).eval()


def text(batch=2, length=6, pad=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[:, length - pad:] = 0
    return TextCond(torch.randn(batch, length, 32, generator=g), mask)


def test_the_table_and_its_timesteps_are_sims():
    u = u_table()
    assert u.shape == (1001,) and float(u[-1]) == 0.0
    assert round(float(u[0]), 4) == 156.6155 and round(float(u[999]), 4) == 0.0100
    D = PixArtEDM(tiny_pixart())
    assert (D.sigma_max, D.sigma_min) == (float(u[0]), float(u[999]))
    sigma = torch.tensor([2.5, 0.01, 0.5, 80.0, 156.6155, 1e-3, 1e3])
    assert table_index(sigma, u).tolist() == [559, 999, 855, 69, 0, 999, 0]  # clamped at both ends
    assert D.timestep(sigma).tolist() == [440, 0, 144, 930, 999, 0, 999]
    # against PixArt's own scheduler (sigma_t = sqrt((1 - abar_t) / abar_t)): the two constructions differ by <= 0.5%
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    abar = sched.alphas_cumprod.to(torch.float64)
    sigma_ddpm = ((1 - abar) / abar).sqrt().flip(0)  # index j <-> timestep 999 - j
    rel = (u[:1000] / sigma_ddpm - 1).abs()
    assert 0.004 < float(rel.max()) <= 0.0051 and round(float(sigma_ddpm[0]), 4) == 157.4073


def test_denoiser_is_x_minus_sigma_eps_at_the_rounded_timestep():
    net = tiny_pixart()
    D = PixArtEDM(net)
    cond = text()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * 3
    sigma = torch.tensor([2.5, 0.5])
    with torch.no_grad():
        got = D(x, sigma, cond)
        c_in = (1 / torch.sqrt(torch.tensor([2.5 ** 2 + 1, 0.5 ** 2 + 1]))).reshape(2, 1, 1, 1)
        out = net(c_in * x, encoder_hidden_states=cond.states, timestep=torch.tensor([440, 144]),
                  encoder_attention_mask=cond.mask, added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                  return_dict=False)[0]
        assert out.shape == (2, 8, 8, 8)  # learned sigma: 2 x 4 channels, the first 4 are epsilon
        expected = x - sigma.reshape(2, 1, 1, 1) * out[:, :4]
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)
    with torch.no_grad():  # sigma is continuous: 2.5 and 2.501 share a timestep but not a denoiser output
        near = D(x, torch.tensor([2.501, 0.5]), cond)
    assert D.timestep(torch.tensor([2.501])).item() == 440
    assert not torch.equal(near[0], got[0])


def test_padded_text_positions_change_nothing():
    D = PixArtEDM(tiny_pixart())
    cond = text(pad=2)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    changed_pad = cond.states.clone()
    changed_pad[:, -2:] = torch.randn(2, 2, 32) * 10
    changed_real = cond.states.clone()
    changed_real[:, 0] += 1.0
    with torch.no_grad():
        ref = D(x, 2.5, cond)
        pad = D(x, 2.5, TextCond(changed_pad, cond.mask))
        real = D(x, 2.5, TextCond(changed_real, cond.mask))
    assert (pad - ref).abs().max().item() == 0.0
    assert (real - ref).abs().max().item() > 1e-4  # a real token does matter: the check above can fail


def test_gradients_reach_the_input_through_frozen_weights():
    D = PixArtEDM(tiny_pixart()).requires_grad_(False)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    D(x, torch.tensor([2.5, 10.0]), text()).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in D.parameters())


def test_text_conditioning_is_cut_like_the_batch_and_checked():
    cond = text(batch=4)
    part = cond[1:3]
    assert part.states.shape == (2, 6, 32) and part.mask.shape == (2, 6) and len(part) == 2
    assert torch.equal(part.states, cond.states[1:3])
    with pytest.raises(ValueError, match=r"states \(B, L, C\) and a mask \(B, L\)"):
        TextCond(torch.zeros(2, 6, 32), torch.ones(2, 5))
    D = PixArtEDM(tiny_pixart())
    with pytest.raises(ValueError, match="latents have 3 channels, the PixArt network takes 4"):
        D(torch.zeros(2, 3, 8, 8), 2.5, cond[:2])
    with pytest.raises(ValueError, match="needs text conditioning"):
        D(torch.zeros(2, 4, 8, 8), 2.5, None)
