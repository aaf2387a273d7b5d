"""Text conditioning as the core sees it: an opaque, sliceable batch of encoder states and their key masks."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TextCond:
    """T5 encoder states (B, L, C) and their attention mask (B, L), 1 = a real token, 0 = padding."""
    states: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self):
        if self.states.ndim != 3 or self.mask.shape != self.states.shape[:2]:
            raise ValueError(f"text conditioning needs states (B, L, C) and a mask (B, L), got "
                             f"{tuple(self.states.shape)} and {tuple(self.mask.shape)}")

    def __getitem__(self, part) -> "TextCond":
        return TextCond(self.states[part], self.mask[part])

    def __len__(self) -> int:
        return self.states.shape[0]

    def to(self, *args, **kwargs) -> "TextCond":
        """Moves both; a dtype applies to the states only (the mask stays integer)."""
        device = next((a for a in args if isinstance(a, (str, torch.device))), kwargs.get("device"))
        return TextCond(self.states.to(*args, **kwargs), self.mask.to(device) if device is not None else self.mask)
