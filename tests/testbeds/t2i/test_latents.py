"""Decoding as SIM's inference code does (truncation to uint8), on diffusers' AutoencoderKL and on the toy
testbed's exact pixel-unshuffle latents."""
from __future__ import annotations

import pytest
import torch

from sim_core.testbeds.t2i.latents import PixelUnshuffleVAE, decode_to_uint8


def test_the_toy_latents_are_exact_and_decode_by_truncation():
    vae = PixelUnshuffleVAE()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = vae.encode(x).latent_dist.sample()
    assert z.shape == (3, 4, 4, 4) and torch.equal(vae.decode(z).sample, x)  # lossless
    assert torch.equal(z[0, :, 0, 0], x[0, 0, :2, :2].flatten())  # a 2x2 patch becomes the 4 channels of a pixel
    images = decode_to_uint8(vae, z)
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.uint8
    assert torch.equal(images[:, 0], images[:, 2])  # one channel shown as grey RGB
    expected = ((x / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8)[:, 0]  # truncation: 254.9 -> 254
    assert torch.equal(images[:, 0], expected)
    edge = torch.full((1, 4, 1, 1), 1 - 1e-3)  # x = 0.999 -> 254.87 -> 254 (EDM's rounding would give 255)
    assert decode_to_uint8(vae, edge).unique().tolist() == [254]
    with pytest.raises(ValueError, match="decodes 4-channel latents, got 3"):
        vae.decode(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"takes \(1, H, W\) images with H and W divisible by 2"):
        vae.encode(torch.zeros(1, 1, 7, 8))


def test_a_diffusers_autoencoder_decodes_with_its_scaling_factor():
    import diffusers
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(latent_channels=4, layers_per_block=1, norm_num_groups=4,
                                  block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64,
                                  scaling_factor=0.18215).eval()
    z = torch.randn(2, 4, 8, 8)
    images = decode_to_uint8(vae, z)
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.uint8  # factor-8 decoder
    with torch.no_grad():
        x = vae.decode(z / 0.18215).sample
    assert torch.equal(images, ((x / 2 + 0.5).clamp(0, 1) * 255).clip(0, 255).to(torch.uint8))
