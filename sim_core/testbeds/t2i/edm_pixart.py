"""PixArt-alpha as an EDM denoiser, the way SIM's inference code wraps it (paper eq. B.14, d(x; sigma) =
x - sigma F(x)): a table of M + 1 noise levels u[j] built from PixArt's linear beta schedule (EDM's iDDPM
construction), the network called at the DDPM timestep of the table entry nearest to sigma with input c_in x,
and only the first (epsilon) output channels kept. sigma itself stays continuous, as in EDM's iDDPMPrecond.

u[M] = 0; u[j-1] = sqrt((u[j]^2 + 1) / max(1 - beta(j), C_1) - 1), beta(j) = beta_end + (beta_start - beta_end) j / M;
index j is DDPM timestep M - 1 - j. SIM's constants give u[0] = 156.6155 and u[M-1] = 0.0100.
"""
from __future__ import annotations

import torch
from torch import nn

from sim_core.core.edm import sigma_view
from sim_core.testbeds.t2i.cond import TextCond

M = 1000           # SIM's wrapper: table size = PixArt's number of DDPM steps
C_1 = 0.001        # SIM's wrapper: floor of 1 - beta in the table recursion (EDM's iDDPM default)
BETA_START = 1e-4  # PixArt-alpha's linear schedule (its scheduler config: beta_start, beta_end)
BETA_END = 0.02


def u_table(m: int = M, c_1: float = C_1, beta_start: float = BETA_START, beta_end: float = BETA_END):
    """The M + 1 noise levels, largest first (float64)."""
    u = torch.zeros(m + 1, dtype=torch.float64)
    for j in range(m, 0, -1):
        beta = beta_end + (beta_start - beta_end) * j / m
        u[j - 1] = ((u[j] ** 2 + 1) / max(1 - beta, c_1) - 1).sqrt()
    return u


def table_index(sigma: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The index of the nearest table entry, sigma first clamped to [u[M-1], u[0]] (below ~0.005 the nearest entry
    would be u[M] = 0, timestep -1)."""
    s = sigma.to(torch.float64).clamp(float(u[-2]), float(u[0]))
    return (s.reshape(-1, 1) - u.to(s.device).reshape(1, -1)).abs().argmin(dim=1)


class PixArtEDM(nn.Module):
    """D(x; sigma) = x - sigma eps_hat(c_in x, t(sigma), text)[:, :C], c_in = 1 / sqrt(sigma^2 + 1)  (eq. B.14).

    ``model`` is a diffusers ``PixArtTransformer2DModel`` (or anything with its call signature); ``cond`` a
    :class:`~sim_core.testbeds.t2i.cond.TextCond`. With learned sigma PixArt returns 2C channels; the first C
    are epsilon."""

    def __init__(self, model: nn.Module, m: int = M, c_1: float = C_1):
        super().__init__()
        self.model = model
        self.m = int(m)
        self.register_buffer("u", u_table(m, c_1), persistent=False)

    @property
    def sigma_min(self) -> float:
        return float(self.u[-2])

    @property
    def sigma_max(self) -> float:
        return float(self.u[0])

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The DDPM timestep the network is called at: M - 1 - (index of the nearest u)."""
        return self.m - 1 - table_index(sigma, self.u)

    def forward(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        if cond is None:
            raise ValueError("PixArt needs text conditioning (a TextCond), got None")
        expected = getattr(getattr(self.model, "config", None), "in_channels", x.shape[1])
        if x.shape[1] != expected:
            raise ValueError(f"latents have {x.shape[1]} channels, the PixArt network takes {expected}")
        s = sigma_view(sigma, x)
        c_in = 1 / (s ** 2 + 1).sqrt()
        t = self.timestep(s.flatten())
        out = self.model(c_in * x, encoder_hidden_states=cond.states, timestep=t,
                         encoder_attention_mask=cond.mask, added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                         return_dict=False)[0]
        eps = out[:, :x.shape[1]]
        return x - s * eps  # c_skip = 1, c_out = -sigma


class GuidedDenoiser(nn.Module):
    """Classifier-free guidance against a fixed null caption: D_w(x; sigma, c) = D(x; sigma, null) + w (D(x; sigma, c)
    - D(x; sigma, null)). For D = x - sigma eps_hat this is PixArt's guidance of eps_hat; w = 1 is D itself. Both
    halves run as one batch, as diffusers' pipeline does."""

    def __init__(self, D: nn.Module, null: TextCond, guidance: float):
        super().__init__()
        if len(null) != 1:
            raise ValueError(f"the null caption is one conditioning, got a batch of {len(null)}")
        self.D, self.guidance = D, float(guidance)
        self.register_buffer("null_states", null.states.detach().clone(), persistent=False)
        self.register_buffer("null_mask", null.mask.detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor, sigma, cond: TextCond) -> torch.Tensor:
        if self.guidance == 1.0:
            return self.D(x, sigma, cond)
        n = x.shape[0]
        both = TextCond(torch.cat([self.null_states.to(cond.states.dtype).expand(n, -1, -1), cond.states]),
                        torch.cat([self.null_mask.to(cond.mask.dtype).expand(n, -1), cond.mask]))
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        s = torch.cat([s, s]) if s.ndim and s.shape[0] == n else s
        d_null, d_text = self.D(torch.cat([x, x]), s, both).chunk(2)
        return d_null + self.guidance * (d_text - d_null)
