"""SIM's generator loss (Theorem 3.1; Algorithm 2, eq. B.13) for any distance of Table 4.

Denoiser space (the paper's eq. B.13, default): y = D_psi(x_t) - D_q(x_t) and
    L(theta) = -w(t) d'(y)^T (D_psi(x_t) - x0).
This is Theorem 3.1's surrogate for the score-space distance d_t(y_s) = d(t^2 y_s): with s = (D - x)/t^2,
s_psi - s_q = y/t^2 and s_psi - grad log q_t(x_t|x0) = (D_psi - x0)/t^2, so -d_t'(y_s)^T(...) is the line above.
Score space (the theorem read literally): y_s = y / t^2 and L = -w(t) d'(y_s)^T (D_psi - x0) / t^2.

Autograd flows through x_t = g_theta(z) + t eps everywhere: into the teacher, into the online network (whose
parameters are frozen by the loop), and inside d'(y). ``detach_direction=True`` is an ablation that stops
the gradient through d'(y); it is not the paper's method.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from sim_core.core.distances import Distance, build_distance
from sim_core.core.losses import GeneratorLoss, NoiseDraw, per_sample_dot
from sim_core.core.methods import MethodConfig
from sim_core.core.time_dists import TimeDistribution
from sim_core.lazy import edm, torch  # imported at first use: validating a config needs no torch

SPACES = ("denoiser", "score")


class SIMLoss(GeneratorLoss):
    def __init__(self, distance: Distance, time_dist: TimeDistribution, weighting: str = "nowgt",
                 space: str = "denoiser", detach_direction: bool = False):
        super().__init__(time_dist, weighting)
        if space not in SPACES:
            raise ValueError(f"unknown distance space {space!r}; valid names: {', '.join(SPACES)}")
        self.distance, self.space, self.detach_direction = distance, space, bool(detach_direction)

    def loss(self, x0, cond, D_teacher, D_psi, draw: NoiseDraw) -> torch.Tensor:
        sigma = draw.sigma
        x_t = draw.x_t(x0)
        D_q = D_teacher(x_t, sigma, cond)         # grad flows through x_t
        D_psi_xt = D_psi(x_t, sigma, cond)        # parameters frozen, grad flows through x_t
        y = D_psi_xt - D_q
        scale = edm.sigma_view(sigma, x0) ** 2 if self.space == "score" else 1.0
        u = self.distance.grad(y / scale)         # d'(y_t), differentiated through x_t
        if self.detach_direction:
            u = u.detach()
        w = self.weighting(sigma, x0, D_q)
        return -w * per_sample_dot(u, (D_psi_xt - x0) / scale)   # eq. B.13 (Theorem 3.1 in EDM form)

    def describe(self):
        return {**super().describe(), "distance": repr(self.distance), "space": self.space,
                "detach_direction": self.detach_direction}


class SIMConfig(MethodConfig):
    name: Literal["sim"] = "sim"
    time_dist: str = "p_sim"              # Table 5 / eq. B.9-B.10: SIM's generator step on CIFAR-10
    weighting: str = "nowgt"              # Table 5: weight 1
    distance: str = "pseudo_huber"        # eq. B.13
    distance_params: dict = Field(default_factory=dict)  # pseudo_huber's c defaults to 1e-3: SIM authors, SIM issue #5
    space: Literal["denoiser", "score"] = "denoiser"     # eq. B.13 works in denoiser space
    detach_direction: bool = False        # ablation: stop the gradient through d'(y); not the paper's method
    # the paper is silent and the authors released no training code; SIM is read as SiD's loop with SIM's loss
    # (docs/reference-code.md#sim), so SiD's handling of non-finite values
    nonfinite: Literal["stop", "sanitize", "sanitize_grads"] = "sanitize"

    def build(self, warn: bool = True) -> SIMLoss:
        return SIMLoss(build_distance(self.distance, warn=warn, **self.distance_params), self.time_distribution(),
                       self.weighting, self.space, self.detach_direction)
