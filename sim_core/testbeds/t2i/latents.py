"""Latents to images, as SIM's inference code does it, and the toy testbed's exact latent space.

Decoding: ``vae.decode(z / scaling_factor).sample`` in [-1, 1], then ``(x / 2 + 0.5).clamp(0, 1)``, saved as
``(x * 255).clip(0, 255)`` cast to uint8: truncation, where EDM's code rounds (+0.5). The distillation itself is
data-free in latent space; the VAE only decodes for evaluation.

The toy testbed's "VAE" is exact: ``pixel_unshuffle(2)`` folds each 2x2 patch of a 1-channel image into 4 channels
(PixArt's 4 latent channels at half the resolution) and ``pixel_shuffle(2)`` unfolds it, behind the small part of
diffusers' ``AutoencoderKL`` interface that the harness uses (``encode(x).latent_dist``, ``decode(z).sample``,
``config.scaling_factor``, ``config.latent_channels``)."""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def decode_to_uint8(vae, z: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents to (B, 3, H, W) uint8 images; one-channel images are repeated to RGB for the scorers."""
    x = vae.decode(z / vae.config.scaling_factor).sample
    x = (x / 2 + 0.5).clamp(0, 1)
    images = (x * 255).clip(0, 255).to(torch.uint8)  # SIM's inference code: truncation, not rounding
    return images.expand(-1, 3, -1, -1).contiguous() if images.shape[1] == 1 else images


@dataclass
class _Dist:
    """A point mass: what AutoencoderKL's latent_dist offers, for an exact encoder."""
    mean: torch.Tensor

    def sample(self, generator=None) -> torch.Tensor:
        return self.mean

    def mode(self) -> torch.Tensor:
        return self.mean


class PixelUnshuffleVAE(nn.Module):
    """The toy testbed's exact, parameter-free autoencoder: (B, 1, H, W) in [-1, 1] <-> (B, 4, H/2, W/2)."""

    def __init__(self, scaling_factor: float = 1.0, factor: int = 2, image_channels: int = 1):
        super().__init__()
        self.factor = int(factor)
        self.config = SimpleNamespace(scaling_factor=float(scaling_factor), in_channels=image_channels,
                                      latent_channels=image_channels * factor ** 2)

    def encode(self, x: torch.Tensor):
        if x.shape[1] != self.config.in_channels or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"the pixel-unshuffle VAE takes ({self.config.in_channels}, H, W) images with H and W "
                             f"divisible by {self.factor}, got {tuple(x.shape[1:])}")
        return SimpleNamespace(latent_dist=_Dist(F.pixel_unshuffle(x, self.factor)))

    def decode(self, z: torch.Tensor):
        if z.shape[1] != self.config.latent_channels:
            raise ValueError(f"the pixel-unshuffle VAE decodes {self.config.latent_channels}-channel latents, "
                             f"got {z.shape[1]}")
        return SimpleNamespace(sample=F.pixel_shuffle(z, self.factor))
