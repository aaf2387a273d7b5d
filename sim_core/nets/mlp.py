"""The residual MLP of the toy testbeds (mixture and 8x8 digits), with the raw-network signature of
sim_core/nets/__init__.py."""
from __future__ import annotations

import math

import torch
from torch import nn

from sim_core.nets.embedding import PositionalEmbedding


class ResidualMLP(nn.Module):
    """A residual MLP over the flattened sample, conditioned additively on noise level and class label."""

    def __init__(self, data_shape, hidden: int = 256, blocks: int = 3, label_dim: int = 0, emb_dim: int = 64):
        super().__init__()
        self.init_kwargs = dict(data_shape=list(data_shape), hidden=hidden, blocks=blocks,
                                label_dim=label_dim, emb_dim=emb_dim)
        self.data_shape = tuple(data_shape)
        dim = math.prod(self.data_shape)
        self.label_dim = label_dim
        self.map_noise = PositionalEmbedding(emb_dim, scale=250.0)
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
        if self.map_label is None and class_labels is not None:
            raise ValueError("class labels given to an unconditional network")
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError(f"a conditional network ({self.label_dim} classes) needs class labels")
            if tuple(class_labels.shape) != (x.shape[0], self.label_dim):
                raise ValueError(f"class labels must have shape ({x.shape[0]}, {self.label_dim}), got "
                                 f"{tuple(class_labels.shape)}")
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels.to(x.dtype) * math.sqrt(self.label_dim))
        emb = torch.nn.functional.silu(emb)
        h = self.inp(x.reshape(x.shape[0], -1))
        for b in self.blocks:
            r = b["fc1"](torch.nn.functional.silu(b["norm"](h) + b["emb"](emb)))
            h = (h + b["fc2"](torch.nn.functional.silu(r))) * math.sqrt(0.5)
        return self.out(torch.nn.functional.silu(self.out_norm(h))).reshape(x.shape)
