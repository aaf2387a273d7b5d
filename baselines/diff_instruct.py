"""Diff-Instruct (Luo et al., NeurIPS 2023), generator loss as in the official code
(pkulwj1994/diff_instruct, training/di_loss.py, gloss):

    L = w (sg[D_psi(x_t)] - sg[D_q(x_t)])^T x0,   t ~ p_EDM, w = 1,

both denoisers evaluated under no-grad, so the gradient reaches theta only through the explicit x0 factor:
dL/dx0 = D_psi - D_q, which is t^2 (s_psi - s_q): the integral-KL gradient with weight t^2.

gloss puts both denoisers in train mode, so their dropout is active, and restores the RNG state between the two
calls: the teacher and the online network drop the same units (docs/reference-code.md#diff-instruct).
``train_mode_denoisers`` does the same; it changes nothing for networks without dropout (the toy testbeds).
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Literal

from sim_core.core.losses import GeneratorLoss, NoiseDraw, per_sample_dot
from sim_core.core.methods import MethodConfig
from sim_core.lazy import torch  # imported at first use: validating a config needs no torch

_DROPOUT_SETTINGS = weakref.WeakKeyDictionary()  # network -> where it keeps its dropout probabilities (found once)


def has_dropout(net) -> bool:
    """Whether ``net`` drops anything in train mode. Without dropout, train and eval mode compute the same (the
    networks here have no batch statistics), so the loss skips the mode switch and the RNG round trip, which
    cost ~13% of a toy network's theta-step (measured)."""
    settings = _DROPOUT_SETTINGS.get(net)
    if settings is None:
        from sim_core.nets import dropout_settings
        settings = _DROPOUT_SETTINGS[net] = dropout_settings(net)
    return any(getattr(m, attr) > 0 for m, attr in settings)


@contextmanager
def train_mode(*nets):
    """The nets in train mode for the block, then back in the modes they had."""
    modes = [[m.training for m in net.modules()] for net in nets]
    for net in nets:
        net.train()
    try:
        yield
    finally:
        for net, mode in zip(nets, modes):
            for m, training in zip(net.modules(), mode):
                m.training = training


def rng_state(device: torch.device):
    """The state of the generator dropout draws from on ``device`` (CPU: the default generator)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def set_rng_state(state, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


class DILoss(GeneratorLoss):
    def __init__(self, time_dist, weighting: str = "nowgt", train_mode_denoisers: bool = True):
        super().__init__(time_dist, weighting)
        self.train_mode_denoisers = bool(train_mode_denoisers)

    def denoise(self, D_teacher, D_psi, x_t, sigma, cond):
        """D_q(x_t) and D_psi(x_t); in train mode, with the same dropout masks in both (DI's gloss)."""
        if not (self.train_mode_denoisers and (has_dropout(D_teacher) or has_dropout(D_psi))):
            return D_teacher(x_t, sigma, cond), D_psi(x_t, sigma, cond)
        with train_mode(D_teacher, D_psi):
            state = rng_state(x_t.device)
            D_q = D_teacher(x_t, sigma, cond)
            set_rng_state(state, x_t.device)  # the online network draws the teacher's masks again
            D_psi_xt = D_psi(x_t, sigma, cond)
        return D_q, D_psi_xt

    def loss(self, x0, cond, D_teacher, D_psi, draw: NoiseDraw):
        sigma = draw.sigma
        with torch.no_grad():
            x_t = draw.x_t(x0)
            D_q, D_psi_xt = self.denoise(D_teacher, D_psi, x_t, sigma, cond)
            w = self.weighting(sigma, x0, D_q)
        return w * per_sample_dot(D_psi_xt - D_q, x0)


class DIConfig(MethodConfig):
    name: Literal["di"] = "di"
    time_dist: str = "p_edm"              # DI's code: EDM's log-normal (P_mean -1.2, P_std 1.2)
    weighting: str = "nowgt"              # DI's code: weight 1
    # The teacher and the online network in train mode inside the generator loss, dropout active with the same
    # masks in both, as DI's gloss. It only matters for networks with dropout (the CIFAR-10 teachers: 0.13).
    train_mode_denoisers: bool = True
    # DI's generator step reuses the psi-step's labels (its own next(dataset_iterator) is commented out)
    reuse_psi_cond: bool = True
    nonfinite: Literal["stop", "sanitize", "sanitize_grads"] = "sanitize_grads"  # DI's code: nan_to_num on gradients

    def build(self, warn: bool = True) -> DILoss:
        return DILoss(self.time_distribution(), self.weighting, self.train_mode_denoisers)
