"""EMA of the generator as in EDM, SiD and DI (training_loop.py):
half-life = min(halflife_nimg, rampup_ratio * cur_nimg); beta = 0.5^(batch / max(half-life, 1e-8));
p_ema <- lerp(p, p_ema, beta). ``cur_nimg`` is the image count before the step's images are added: the reference
loops update the EMA and then count, so the first update (cur_nimg = 0, beta = 0) copies the generator."""
from __future__ import annotations

import torch
from torch import nn


def ema_beta(cur_nimg: int, batch_size: int, halflife_kimg: float = 500.0, rampup_ratio: float | None = 0.05) -> float:
    halflife_nimg = halflife_kimg * 1000
    if rampup_ratio is not None:
        halflife_nimg = min(halflife_nimg, cur_nimg * rampup_ratio)
    return 0.5 ** (batch_size / max(halflife_nimg, 1e-8))


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, beta: float) -> None:
    for p_ema, p in zip(ema.parameters(), net.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)
