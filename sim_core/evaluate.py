"""Evaluation of a run's saved EMA generator snapshots, outside the training loop."""
from __future__ import annotations

import copy
import statistics
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_checked
from .config import RunConfig
from .generator import OneStepGenerator
from .testbeds import Testbed, load_testbed


def latest_snapshot(run_dir) -> Path:
    snaps = sorted((Path(run_dir) / "snapshots").glob("ema-*.pt"))
    if not snaps:
        raise CheckpointError(f"no EMA snapshot in {run_dir}/snapshots")
    return snaps[-1]


def load_generator(path, testbed: Testbed) -> OneStepGenerator:
    from .train import SNAPSHOT_FORMAT
    s = load_checked(path, "generator snapshot", fmt=SNAPSHOT_FORMAT)
    G = OneStepGenerator(copy.deepcopy(testbed.D_teacher), s["t_star"])
    try:
        G.load_state_dict(s["G_ema"])
    except RuntimeError as e:
        raise CheckpointError(f"snapshot {path} does not match the teacher's network: {str(e).splitlines()[0][:200]}") from None
    return G.eval().requires_grad_(False)


def evaluate_snapshot(cfg: RunConfig, path, seeds=(0, 1), testbed: Testbed | None = None) -> dict:
    """Evaluate one snapshot with ``len(seeds)`` independent noise draws of eval.num_samples each; returns
    the mean of each scalar metric (key) and its standard deviation over the draws (key_std_seeds)."""
    testbed = testbed or load_testbed(cfg.testbed)
    G = load_generator(path, testbed)
    results = []
    for seed in seeds:
        ecfg = cfg.eval.model_copy(update={"seed": int(seed)})
        results.append(testbed.evaluator(ecfg, torch.device("cpu"), torch.float32)(G, -1))
    out = {}
    for k in results[0]:
        vals = [r[k] for r in results]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[k] = statistics.fmean(vals)
            if len(vals) > 1:
                out[f"{k}_std_seeds"] = statistics.stdev(vals)
    return out
