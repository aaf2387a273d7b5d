"""Weightings w(t) by name, in EDM denoiser space (paper Appendix B.2). Each returns shape (B,)."""
from __future__ import annotations

from sim_core.core import SIGMA_DATA
from sim_core.lazy import torch  # imported at first use: validating a config needs no torch
from sim_core.registry import Registry

WEIGHTINGS = Registry("weighting")


@WEIGHTINGS.register("lambda_edm")
def lambda_edm(sigma: torch.Tensor, x0=None, D_teacher=None, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """lambda_EDM(t) = (t^2 + sigma_d^2) / (t sigma_d)^2  (eq. B.7)."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


@WEIGHTINGS.register("sidwgt")
def sidwgt(sigma: torch.Tensor, x0=None, D_teacher=None, floor: float = 1e-5) -> torch.Tensor:
    """SiD's generator weight (eq. B.11) in denoiser space: C / ||x0 - D_q(x_t)||_1 = 1 / mean|x0 - D_q(x_t)|,
    under stop-gradient; the mean is clipped at 1e-5 as in SiD's training/sid_loss.py. (In score space the
    same weight carries a factor t^4.)"""
    if x0 is None or D_teacher is None:
        raise ValueError("weighting sidwgt needs x0 and the teacher's denoiser output")
    with torch.no_grad():
        mean_abs = (x0 - D_teacher).abs().reshape(x0.shape[0], -1).mean(1).clamp_min(floor)
    return 1.0 / mean_abs  # a constant per sample: it multiplies a loss whose graph is built outside


@WEIGHTINGS.register("nowgt")
def nowgt(sigma: torch.Tensor, x0=None, D_teacher=None) -> torch.Tensor:
    """Constant weight 1 (SIM's generator step, Table 5)."""
    return torch.ones_like(sigma)


def get_weighting(name: str):
    return WEIGHTINGS.get(name)
