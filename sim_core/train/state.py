"""What a checkpoint and a snapshot hold. A checkpoint is the whole training state (networks, optimisers, every
random generator, step and image count), so that a resumed run is bitwise the uninterrupted one (on CPU); a snapshot
is the EMA generator alone, for evaluation."""
from __future__ import annotations

import random

import numpy as np
import torch

# /3: networks as G, G_ema, D_psi; optimisers opt_theta, opt_psi; every RNG under rng; the count of sanitized steps
CHECKPOINT_FORMAT = "sim-harness-checkpoint/3"
SNAPSHOT_FORMAT = "sim-harness-generator/1"


def rng_state(loop_rng: torch.Generator, device: torch.device) -> dict:
    """Every generator a step draws from: the loop's own, torch's global (dropout on CPU), numpy's, Python's, and
    the device's (dropout on a GPU; every rank's matches rank 0's: same seed, same number of draws)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return dict(loop=loop_rng.get_state(), torch=torch.get_rng_state(),
                numpy=dict(name=name, keys=torch.from_numpy(keys.astype(np.int64)), pos=pos, has_gauss=has_gauss,
                           cached=cached),
                python=dict(version=version, internal=list(internal), gauss=gauss),
                cuda=torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def set_rng_state(s: dict, loop_rng: torch.Generator, device: torch.device) -> None:
    loop_rng.set_state(s["loop"])
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if device.type == "cuda" and s.get("cuda") is not None:
        torch.cuda.set_rng_state(s["cuda"], device)
