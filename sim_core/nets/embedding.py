"""The sinusoidal embedding of the noise label c_noise = ln(sigma)/4 (EDM's map_noise)."""
from __future__ import annotations

import torch
from torch import nn


class PositionalEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding: [cos(x f_i), sin(x f_i)], f_i = scale (1/max_positions)^(i/D),
    i = 0..half-1, with D = half - 1 when ``endpoint`` (the last frequency is exactly 1/max_positions) else half.
    NVIDIA's SongUNet uses endpoint=True and scale 1; the toy MLPs endpoint=False and scale 250 (c_noise spans
    about [-2, 1.5]: the factor spreads it over the phases)."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False, scale: float = 1.0):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponents = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** exponents
        if self.scale != 1.0:
            freqs = freqs * self.scale
        phases = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([phases.cos(), phases.sin()], dim=1)
