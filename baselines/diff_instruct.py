"""Diff-Instruct (Luo et al., NeurIPS 2023), generator loss as in the official code
(pkulwj1994/diff_instruct, training/di_loss.py, gloss):

    L = w (sg[D_psi(x_t)] - sg[D_q(x_t)])^T x0,   t ~ p_EDM, w = 1,

both denoisers evaluated under no-grad, so the gradient reaches theta only through the explicit x0 factor:
dL/dx0 = D_psi - D_q, which is t^2 (s_psi - s_q): the integral-KL gradient with weight t^2.
"""
from __future__ import annotations

from sim_core.lazy import torch  # imported at first use: validating a config needs no torch

from sim_core.losses import GeneratorDraw, GeneratorLoss, per_sample_dot


class DILoss(GeneratorLoss):
    def __init__(self, time_dist, weighting: str = "nowgt"):
        super().__init__(time_dist, weighting)

    def loss(self, x0, class_labels, D_teacher, D_fake, draw: GeneratorDraw):
        sigma = draw.sigma
        with torch.no_grad():
            x_t = draw.x_t_of(x0)
            D_q = D_teacher(x_t, sigma, class_labels)
            D_psi = D_fake(x_t, sigma, class_labels)
            w = self.weighting(sigma, x0, D_q)
        return w * per_sample_dot(D_psi - D_q, x0)
