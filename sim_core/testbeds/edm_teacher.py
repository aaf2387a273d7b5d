"""Teachers trained here with the EDM loss (the toy testbeds): their files (a raw network by name + its EDM
preconditioning, with the metadata needed to rebuild and check it: data shape, label count, testbed), their training,
and loading one for a run config. Paper-scale teachers (NVIDIA's EDM pickles) have their own loader
(sim_core/testbeds/cifar10/edm_pickle.py); both give the same (D, meta) pair.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Callable, Optional

import torch

from sim_core.core import SIGMA_DATA
from sim_core.core.edm import EDMPrecond
from sim_core.core.losses import edm_denoising_loss
from sim_core.core.time_dists import build_time_distribution
from sim_core.core.weightings import lambda_edm
from sim_core.errors import CheckpointError, ConfigError
from sim_core.files import atomic_torch_save, load_checked
from sim_core.nets import build_network, network_name

TEACHER_FORMAT = "sim-harness-teacher/1"


def save_teacher(path, D: EDMPrecond, testbed: str, data_shape, testbed_spec: Optional[dict] = None,
                 train_info: Optional[dict] = None) -> str:
    """Write a teacher file atomically; returns its SHA-256."""
    model = D.model
    obj = dict(format=TEACHER_FORMAT, testbed=testbed, data_shape=list(data_shape), label_dim=D.label_dim,
               sigma_data=D.sigma_data,
               network=dict(name=network_name(model), kwargs=model.init_kwargs),
               state_dict={k: v.detach().cpu().clone() for k, v in D.state_dict().items()},
               testbed_spec=testbed_spec or {}, train=train_info or {})
    return atomic_torch_save(obj, path)


def load_teacher(path, sha256: Optional[str] = None, expect_testbed: Optional[str] = None):
    """Rebuild a teacher denoiser from its file. Returns (D, meta); fails with one line on any mismatch."""
    obj = load_checked(path, "teacher file", fmt=TEACHER_FORMAT, sha256=sha256)
    if expect_testbed is not None and obj.get("testbed") != expect_testbed:
        raise CheckpointError(f"teacher file {path} is for testbed {obj.get('testbed')!r}, not {expect_testbed!r}")
    try:
        net = build_network(obj["network"]["name"], **obj["network"]["kwargs"])
        D = EDMPrecond(net, sigma_data=obj["sigma_data"], label_dim=obj["label_dim"])
        D.load_state_dict(obj["state_dict"], strict=True)
    except (KeyError, RuntimeError, ValueError) as e:
        msg = str(e).strip().splitlines()[0][:200]
        raise CheckpointError(f"teacher file {path} does not rebuild its network: {msg}") from None
    D.eval().requires_grad_(False)
    meta = {k: v for k, v in obj.items() if k != "state_dict"}
    return D, meta


def train_edm_teacher(net: torch.nn.Module, sample_data: Callable, label_dim: int, iterations: int,
                      batch_size: int, lr: float = 1e-3, ema_decay: float = 0.999, seed: int = 0,
                      warmup: int = 200, progress: bool = False, log: Optional[Callable] = None):
    """Train D = EDMPrecond(net) with the EDM loss (t ~ p_EDM, weight lambda_EDM; EDM training/loss.py).

    ``sample_data(n, rng) -> (x0, one-hot class labels or None)``. Adam (0.9, 0.999) with warm-up then cosine decay;
    returns the EMA of the weights (EDM evaluates its EMA) and a dict of training facts.
    """
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    D = EDMPrecond(net, sigma_data=SIGMA_DATA, label_dim=label_dim)
    D_ema = copy.deepcopy(D).requires_grad_(False)
    opt = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.9, 0.999))
    p_edm = build_time_distribution("p_edm")
    start, losses = time.time(), []
    it = range(iterations)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="teacher", mininterval=2.0)
    for step in it:
        for g in opt.param_groups:  # linear warm-up, then cosine decay to 0
            g["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / iterations))
        x0, labels = sample_data(batch_size, rng)
        sigma = p_edm.sample(batch_size, rng)
        eps = torch.randn(x0.shape, generator=rng)
        loss = edm_denoising_loss(D, x0, sigma, eps, lambda_edm(sigma), labels).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p_e, p in zip(D_ema.parameters(), D.parameters()):
                p_e.lerp_(p, 1 - ema_decay)
        losses.append(loss.item())
        if log is not None and (step + 1) % 500 == 0:
            log(step + 1, sum(losses[-500:]) / len(losses[-500:]))
    info = dict(iterations=iterations, batch_size=batch_size, lr=lr, ema_decay=ema_decay, seed=seed,
                seconds=round(time.time() - start, 1), final_loss=sum(losses[-200:]) / len(losses[-200:]))
    return D_ema.eval(), info


def load_for(cfg):
    """The teacher of a run config's testbed section, checked against it: testbed, checksum and conditioning."""
    D, meta = load_teacher(cfg.teacher, sha256=cfg.teacher_sha256, expect_testbed=cfg.kind)
    if cfg.conditional and meta["label_dim"] == 0:
        raise CheckpointError(f"testbed.conditional is true but teacher {cfg.teacher} is unconditional")
    if not cfg.conditional and meta["label_dim"] > 0:
        raise CheckpointError(f"teacher {cfg.teacher} is conditional ({meta['label_dim']} classes); "
                              "set testbed.conditional: true")
    return D, meta


def build_mlp_teacher(testbed: str, out, data_shape, label_dim: int, sample_data: Callable, testbed_spec: dict,
                      defaults: dict, seed: int = 0, progress: bool = False, conditional: bool = False,
                      **overrides) -> dict:
    """Train a ResidualMLP teacher with the EDM loss and write it atomically to ``out``; ``defaults`` are the
    testbed's sizes and budget (hidden, blocks, iterations, batch_size, lr), ``overrides`` replace some of them.
    Returns the training facts and the file's checksum."""
    from sim_core.nets.mlp import ResidualMLP
    bad = set(overrides) - set(defaults)
    if bad:
        raise ConfigError(f"unknown teacher setting(s) {sorted(bad)}; valid: {sorted(defaults)}")
    hp = {**defaults, **{k: v for k, v in overrides.items() if v is not None}}
    torch.manual_seed(seed)
    net = ResidualMLP(data_shape, hidden=hp["hidden"], blocks=hp["blocks"], label_dim=label_dim)
    D, info = train_edm_teacher(net, sample_data, label_dim, hp["iterations"], hp["batch_size"], lr=hp["lr"],
                                seed=seed, progress=progress)
    info.update(hidden=hp["hidden"], blocks=hp["blocks"], conditional=conditional)
    info["sha256"] = save_teacher(out, D, testbed, data_shape, testbed_spec, info)
    return info
