"""Small raw networks for the toy testbeds, with NVIDIA SongUNet's call signature
``F(x_in, noise_labels, class_labels=None, augment_labels=None)`` so that EDMPrecond wraps them like the
CIFAR-10 networks. Constructor kwargs are stored so a network can be rebuilt from a checkpoint.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .registry import Registry

NETWORKS = Registry("network")


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of the scalar noise label c_noise = ln(sigma)/4 (as EDM's map_noise)."""

    def __init__(self, num_channels: int, max_positions: int = 10000):
        super().__init__()
        self.num_channels, self.max_positions = num_channels, max_positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / half
        freqs = (1 / self.max_positions) ** freqs
        x = x.float().outer(freqs * 250.0)  # c_noise spans about [-2, 1.5]: spread it over the phases
        return torch.cat([x.cos(), x.sin()], dim=1)


@NETWORKS.register("residual_mlp")
class ResidualMLP(nn.Module):
    """A residual MLP over the flattened sample, conditioned additively on noise level and class label."""

    def __init__(self, data_shape, hidden: int = 256, blocks: int = 3, label_dim: int = 0, emb_dim: int = 64):
        super().__init__()
        self.init_kwargs = dict(data_shape=list(data_shape), hidden=hidden, blocks=blocks,
                                label_dim=label_dim, emb_dim=emb_dim)
        self.data_shape = tuple(data_shape)
        dim = math.prod(self.data_shape)
        self.label_dim = label_dim
        self.map_noise = PositionalEmbedding(emb_dim)
        self.map_layer = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.map_label = nn.Linear(label_dim, hidden, bias=False) if label_dim else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(dict(norm=nn.LayerNorm(hidden), emb=nn.Linear(hidden, hidden),
                               fc1=nn.Linear(hidden, hidden), fc2=nn.Linear(hidden, hidden)))
            for _ in range(blocks))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        emb = self.map_layer(self.map_noise(noise_labels).to(x.dtype))
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels.to(x.dtype) * math.sqrt(self.label_dim))
        emb = torch.nn.functional.silu(emb)
        h = self.inp(x.reshape(x.shape[0], -1))
        for b in self.blocks:
            r = b["fc1"](torch.nn.functional.silu(b["norm"](h) + b["emb"](emb)))
            h = (h + b["fc2"](torch.nn.functional.silu(r))) * math.sqrt(0.5)
        return self.out(torch.nn.functional.silu(self.out_norm(h))).reshape(x.shape)


def build_network(name: str, **kwargs) -> nn.Module:
    return NETWORKS.build(name, **kwargs)


def dropout_settings(module: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    """Where a network keeps its dropout probability: every nn.Dropout's ``p`` and every numeric ``dropout``
    attribute of a submodule (NVIDIA's UNetBlock keeps ``self.dropout`` and calls F.dropout with it)."""
    found = []
    for m in module.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            found.append((m, "p"))
        v = getattr(m, "dropout", None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            found.append((m, "dropout"))
    return found


from . import songunet  # noqa: E402,F401  (registers "songunet": EDM's DDPM++ SongUNet)
