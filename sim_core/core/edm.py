"""EDM formulation (Karras et al. 2022): preconditioned denoiser, score from denoiser, VE forward noising.

Every teacher, generator and online network in the project is a module with the signature
``D(x, sigma, cond=None) -> x0_hat``. Raw networks wrapped by :class:`EDMPrecond` have the signature
``F(x_in, c_noise, cond=None, augment_labels=None)`` (NVIDIA's SongUNet's, with ``cond`` its class labels), so the
paper-scale CIFAR-10 networks plug into the same loop. ``cond`` is passed through unopened (sim_core/core/cond.py).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from sim_core.core import SIGMA_DATA


def sigma_view(sigma, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or per-sample sigma of shape (B,) against a batch x of shape (B, ...)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or of shape ({x.shape[0]},), got {tuple(sigma.shape)}")
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


def precond_coefficients(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA):
    """c_skip, c_out, c_in, c_noise of EDM's preconditioning (Karras et al. 2022, Table 1)."""
    c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
    c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()
    c_in = 1 / (sigma_data ** 2 + sigma ** 2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


class EDMPrecond(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)  (EDM eq. 7; paper Appendix B, eq. B.1)."""

    def __init__(self, model: nn.Module, sigma_data: float = SIGMA_DATA, label_dim: int = 0):
        super().__init__()
        self.model = model
        self.sigma_data = float(sigma_data)
        self.label_dim = int(label_dim)  # what the network was trained with (teacher files record it); not checked here

    def forward(self, x: torch.Tensor, sigma, cond=None, augment_labels=None) -> torch.Tensor:
        s = sigma_view(sigma, x)
        c_skip, c_out, c_in, c_noise = precond_coefficients(s, self.sigma_data)
        F_x = self.model(c_in * x, c_noise.flatten(), cond, augment_labels=augment_labels)
        if F_x.shape != x.shape:
            raise ValueError(f"raw network returned shape {tuple(F_x.shape)} for input {tuple(x.shape)}")
        return c_skip * x + c_out * F_x


def score_from_denoiser(D_x: torch.Tensor, x: torch.Tensor, sigma) -> torch.Tensor:
    """s(x; sigma) = (D(x; sigma) - x) / sigma^2  (Tweedie; EDM eq. 3)."""
    return (D_x - x) / sigma_view(sigma, x) ** 2


def add_noise(x0: torch.Tensor, sigma, eps: torch.Tensor) -> torch.Tensor:
    """Variance-exploding forward process x_t = x0 + t * eps  (paper eq. B.3)."""
    return x0 + sigma_view(sigma, x0) * eps


def conditional_score(x_t: torch.Tensor, x0: torch.Tensor, sigma) -> torch.Tensor:
    """grad_{x_t} log q_t(x_t | x0) = -(x_t - x0) / t^2."""
    return -(x_t - x0) / sigma_view(sigma, x_t) ** 2


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  dtype=torch.float64) -> torch.Tensor:
    """sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i = 0..N-1 (EDM eq. 5)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    i = torch.arange(num_steps, dtype=dtype)
    frac = i / max(num_steps - 1, 1)
    return (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def flat_dim(x: torch.Tensor) -> int:
    """C*H*W: the per-sample dimension over which norms are taken."""
    return int(math.prod(x.shape[1:]))
