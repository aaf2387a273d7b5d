"""The one-step generator g_theta(z) = D_theta(z, t*), z ~ N(0, t*^2 I) (paper eq. B.4; Table 5: t* = 2.5).

D_theta has the teacher's architecture and starts from the teacher's weights (Appendix B.2).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class OneStepGenerator(nn.Module):
    def __init__(self, D_theta: nn.Module, t_star: float = 2.5):
        super().__init__()
        if not t_star > 0:
            raise ValueError(f"t_star must be > 0, got {t_star}")
        self.D = D_theta
        self.t_star = float(t_star)

    @classmethod
    def from_teacher(cls, D_teacher: nn.Module, t_star: float = 2.5) -> "OneStepGenerator":
        return cls(copy.deepcopy(D_teacher), t_star)

    def sample_z(self, n: int, shape, rng: torch.Generator, dtype=torch.float32, device="cpu") -> torch.Tensor:
        """z ~ N(0, t*^2 I)."""
        return (self.t_star * torch.randn((n, *shape), generator=rng, dtype=dtype)).to(device)

    def forward(self, z: torch.Tensor, cond=None) -> torch.Tensor:
        return self.D(z, self.t_star, cond)  # eq. B.4

