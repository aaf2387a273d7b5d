"""Score identity Distillation (Zhou et al., ICML 2024), generator loss as in the official code
(mingyuanzhou/SiD, training/sid_loss.py, generator_loss).

Per sample, with Delta = D_q(x_t) - D_psi(x_t):
    L = w Delta^T ((D_q - x0) - alpha Delta)  =  w [Delta^T (D_psi - x0) + (1 - alpha) ||Delta||^2],
w = sidwgt = 1 / mean|x0 - D_q| under stop-gradient (SiD's normaliser). Both networks see x_t with grad:
only the normaliser is stop-gradient. alpha = 1.2 is SiD's published value, 1.0 the SIM paper's reproduction.
With alpha = 1 this is half of SIM's L2 loss with the same weighting (tests/test_method_relations.py).
"""
from __future__ import annotations

from typing import Literal

from sim_core.core.losses import GeneratorLoss, NoiseDraw, per_sample_dot
from sim_core.core.methods import MethodConfig, finite
from sim_core.core.time_dists import TimeDistribution


class SiDLoss(GeneratorLoss):
    def __init__(self, time_dist: TimeDistribution, weighting: str = "sidwgt", alpha: float = 1.2,
                 loss_scale: float = 1.0):
        super().__init__(time_dist, weighting)
        self.alpha = finite("sid", float(alpha), "alpha")
        self.loss_scale = finite("sid", float(loss_scale), "loss_scale")

    def loss(self, x0, cond, D_teacher, D_psi, draw: NoiseDraw):
        sigma = draw.sigma
        x_t = draw.x_t(x0)
        D_q = D_teacher(x_t, sigma, cond)
        Delta = D_q - D_psi(x_t, sigma, cond)
        w = self.weighting(sigma, x0, D_q)
        return self.loss_scale * w * per_sample_dot(Delta, (D_q - x0) - self.alpha * Delta)

    def describe(self):
        return {**super().describe(), "alpha": self.alpha, "loss_scale": self.loss_scale}


class SiDConfig(MethodConfig):
    name: Literal["sid"] = "sid"
    time_dist: str = "karr_sid"           # SiD's code: continuous Karras draw up to tmax = 800 of 1000
    weighting: str = "sidwgt"             # SiD's code: 1 / mean|x0 - D_q| under stop-gradient
    alpha: float = 1.2                    # SiD's published value; the SIM paper reproduces alpha = 1.0
    # SiD's code multiplies the generator loss by lsg = 100 (sid_train.py), which moves Adam's effective eps
    loss_scale: float = 100.0
    nonfinite: Literal["stop", "sanitize", "sanitize_grads"] = "sanitize"  # SiD's code (docs/reference-code.md#sids-loop)

    def build(self, warn: bool = True) -> SiDLoss:
        return SiDLoss(self.time_distribution(), self.weighting, self.alpha, self.loss_scale)
