"""Evaluation of a run's saved EMA generator snapshots, outside the training loop."""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from sim_core.core.generator import OneStepGenerator
from sim_core.errors import CheckpointError
from sim_core.files import load_checked
from sim_core.testbeds import load_testbed
from sim_core.testbeds.base import Testbed
from sim_core.train.config import RunConfig
from sim_core.train.state import SNAPSHOT_FORMAT


def latest_snapshot(run_dir) -> Path:
    snaps = sorted((Path(run_dir) / "snapshots").glob("ema-*.pt"))
    if not snaps:
        raise CheckpointError(f"no EMA snapshot in {run_dir}/snapshots")
    return snaps[-1]


def load_generator(path, testbed: Testbed) -> OneStepGenerator:
    s = load_checked(path, "generator snapshot", fmt=SNAPSHOT_FORMAT)
    G = OneStepGenerator(copy.deepcopy(testbed.D_init), s["t_star"])
    try:
        G.load_state_dict(s["G_ema"])
    except RuntimeError as e:
        raise CheckpointError(f"snapshot {path} does not match the teacher's network: "
                              f"{str(e).splitlines()[0][:200]}") from None
    return G.eval().requires_grad_(False)


def evaluate_snapshot(cfg: RunConfig, path, seeds=(0, 1), testbed: Testbed | None = None,
                      protocol: str | None = None) -> dict:
    """Evaluate one snapshot: for the toy testbeds with ``len(seeds)`` independent noise draws of
    eval.num_samples each (the mean of each scalar metric, and its standard deviation over the draws as key_std_seeds);
    for CIFAR-10 by the named FID protocol (sim_core/testbeds/cifar10/image_metrics.py), on cfg.device."""
    testbed = testbed or load_testbed(cfg.testbed)
    device = torch.device(cfg.device)
    G = load_generator(path, testbed).to(device)
    return testbed.final_metrics(G, cfg.eval, seeds, protocol=protocol, device=device)
