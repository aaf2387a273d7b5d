"""Loading converted weights into a network with every key accounted for: a source key nothing explains, a
parameter left without a value, a key the network does not have or a shape that differs is one CheckpointError
naming them (the public loaders these files come from pass strict=False and would ignore all four)."""
from __future__ import annotations

import torch

from sim_core.errors import CheckpointError


def _listed(keys: list[str], what: str, shown: int = 4) -> str:
    return f"{len(keys)} {what} ({', '.join(keys[:shown])}{', ...' if len(keys) > shown else ''})"


def load_exactly(module: torch.nn.Module, sd: dict, what: str, unknown=()) -> None:
    """``module.load_state_dict(sd, strict=True)`` once nothing is left over; ``what`` names the source and the
    network in the error ("SIM generator x.pt does not fit the PixArt network")."""
    expected = module.state_dict()
    problems = [(list(unknown), "unknown keys"), (sorted(set(expected) - set(sd)), "parameters without a value"),
                (sorted(set(sd) - set(expected)), "keys the network does not have"),
                ([f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in sd.items()
                  if k in expected and v.shape != expected[k].shape], "shape mismatches")]
    listed = [_listed(keys, kind) for keys, kind in problems if keys]
    if listed:
        raise CheckpointError(f"{what}: " + "; ".join(listed))
    module.load_state_dict(sd, strict=True)
