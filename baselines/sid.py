"""Score identity Distillation (Zhou et al., ICML 2024), generator loss as in the official code
(mingyuanzhou/SiD, training/sid_loss.py, generator_loss).

Per sample, with Delta = D_q(x_t) - D_psi(x_t):
    L = w Delta^T ((D_q - x0) - alpha Delta)  =  w [Delta^T (D_psi - x0) + (1 - alpha) ||Delta||^2],
w = sidwgt = 1 / mean|x0 - D_q| under stop-gradient (SiD's normaliser). Both networks see x_t with grad:
only the normaliser is stop-gradient. alpha = 1.2 is SiD's published value, 1.0 the SIM paper's reproduction.
With alpha = 1 this is half of SIM's L2 loss with the same weighting (tests/test_method_relations.py).
"""
from __future__ import annotations

import math

from sim_core.losses import GeneratorDraw, GeneratorLoss, per_sample_dot
from sim_core.time_dists import TimeDistribution


class SiDLoss(GeneratorLoss):
    def __init__(self, time_dist: TimeDistribution, weighting: str = "sidwgt", alpha: float = 1.2):
        super().__init__(time_dist, weighting)
        if not math.isfinite(alpha):
            raise ValueError(f"method sid: alpha must be finite, got {alpha}")
        self.alpha = float(alpha)

    def loss(self, x0, class_labels, D_teacher, D_fake, draw: GeneratorDraw):
        sigma = draw.sigma
        x_t = draw.x_t_of(x0)
        D_q = D_teacher(x_t, sigma, class_labels)
        D_psi = D_fake(x_t, sigma, class_labels)
        Delta = D_q - D_psi
        w = self.weighting(sigma, x0, D_q)
        return w * per_sample_dot(Delta, (D_q - x0) - self.alpha * Delta)

    def describe(self):
        return {**super().describe(), "alpha": self.alpha}
