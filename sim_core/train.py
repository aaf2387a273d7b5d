"""The distillation loop shared by SIM, SiD and DI (paper Algorithm 1/2).

Each iteration: ``online.steps_per_iter`` psi-steps (denoising score matching of the online network on
detached generator samples), then one theta-step (the method's generator loss, teacher and online network
frozen but differentiable in their input). Adam with the paper's betas, EMA of the generator for evaluation.
Train/eval modes as SiD's loop (REFERENCE-CODE.md §2.1): psi-step with the online network in train mode (dropout
on) and the generator's samples from eval mode under no_grad; theta-step with G in train mode and the online
network in eval mode; the teacher always in eval mode.

The ``perf`` switches (sim_core/precision.py) change speed, not the algorithm: bf16 autocast around the network
passes, TF32, channels_last, and gradient accumulation over ``perf.grad_accum`` micro-batches of this rank's
shard, with the random draws of the global batch sliced exactly as without it (same parameters up to float
summation order).

A run directory holds: config.yaml (resolved), provenance.json, status.json, metrics.jsonl,
checkpoint.pt (full state, written atomically), snapshots/ (EMA generator), samples/.
A run interrupted by SIGTERM/SIGUSR1/SIGUSR2 checkpoints and exits; started again it resumes and ends
bitwise-identical (on CPU) to a run that was never interrupted.
"""
from __future__ import annotations

import copy
import json
import random
import signal
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import yaml

from .checkpoint import CheckpointError, atomic_torch_save, atomic_write_json, atomic_write_text, load_checked
from .config import ConfigError, RunConfig, parse_config
from .distributed import DistEnv, from_environment
from .ema import ema_beta, ema_update
from .generator import OneStepGenerator
from .losses import OnlineLoss
from .methods import build_generator_loss
from .nets import dropout_settings
from .precision import autocast, check_grad_accum, configure_backends, micro_batches, to_memory_format
from .provenance import provenance
from .time_dists import build_time_distribution

CHECKPOINT_FORMAT = "sim-harness-checkpoint/1"
SNAPSHOT_FORMAT = "sim-harness-generator/1"
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: the run checkpointed on a signal and can be resumed


class RunDirError(ValueError):
    """The run directory holds a different run."""


def _all_finite(tensors) -> bool:
    tensors = list(tensors)
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all()) if tensors else True


class MetricsLog:
    """metrics.jsonl: one JSON object per line, buffered and appended in batches. ``unsynced`` holds the
    records not yet handed to the tracker, so a sync never re-reads the file."""

    def __init__(self, path: Path, write: bool = True):
        self.path, self.buffer, self.unsynced, self.write = path, [], [], write  # write: rank 0 only

    def add(self, record: dict) -> None:
        self.buffer.append(record)
        self.unsynced.append(record)

    def flush(self) -> None:
        if self.buffer and self.write:
            with open(self.path, "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in self.buffer))
            self.buffer = []

    def truncate_after(self, step: int) -> None:
        """On resume: drop records logged after the checkpoint, so the history has no duplicated steps. The
        records kept become ``unsynced``: the tracker skips those the store already holds (up to its synced step)."""
        self.unsynced = [r for r in read_metrics(self.path.parent) if r["step"] <= step]
        if self.path.exists() and self.write:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.unsynced))


# SiD's evaluation/snapshot cadence (sid_train.py: tick 10 kimg, snap 50 ticks; sid_training_loop.py also at
# ticks 10, 20, ..., 100): every 100 kimg up to 1 Mimg, then every 500 kimg. Here on the image count itself.
SID_EVAL_STEP_EARLY, SID_EVAL_EARLY_UNTIL, SID_EVAL_STEP_LATE = 100_000, 1_000_000, 500_000


def _sid_marks_reached(nimg: int) -> int:
    """How many of SiD's evaluation marks (100k, 200k, ..., 1M, 1.5M, 2M, ...) are <= nimg."""
    early = min(nimg, SID_EVAL_EARLY_UNTIL) // SID_EVAL_STEP_EARLY
    late = max(nimg - SID_EVAL_EARLY_UNTIL, 0) // SID_EVAL_STEP_LATE
    return early + late


def sid_eval_due(nimg_before: int, nimg_after: int) -> bool:
    """True when a step that took the image count from nimg_before to nimg_after crossed (or reached) a mark of
    SiD's cadence. SiD's own ticks end at the first multiple of the batch past each 10 kimg, so its marks drift
    by up to one batch per tick; this schedule puts them at the exact image counts."""
    return _sid_marks_reached(int(nimg_after)) > _sid_marks_reached(int(nimg_before))


def set_dropout(module: torch.nn.Module, p: float) -> int:
    """Set every dropout probability of ``module`` to p; returns how many settings were changed."""
    settings = dropout_settings(module)
    for m, attr in settings:
        setattr(m, attr, float(p))
    return len(settings)


def check_dropout(cfg: RunConfig, network: torch.nn.Module) -> None:
    """networks.dropout > 0 needs a network that has dropout: a one-line error otherwise."""
    p = cfg.networks.dropout
    if p is not None and p > 0 and not dropout_settings(network):
        raw = getattr(network, "model", network)  # the raw network inside EDMPrecond
        raise ConfigError(f"networks.dropout={p}: the teacher's network ({type(raw).__name__}) has no dropout "
                          "setting; leave networks.dropout unset")


def build_augment_pipe(p: float, data_shape, network: torch.nn.Module):
    """EDM's CIFAR-10 AugmentPipe with probability p for the psi-step, or None for p = 0. The network must take
    the pipe's augment labels (EDM's map_augment), or it could not tell augmented images from generated ones:
    a one-line error otherwise."""
    if not p:
        return None
    from .augment import cifar10_augment_pipe
    pipe = cifar10_augment_pipe(p)
    raw = getattr(network, "model", network)  # the raw network inside EDMPrecond
    augment_dim = getattr(raw, "init_kwargs", {}).get("augment_dim", 0)  # SongUNet's constructor arguments
    if len(data_shape) != 3 or augment_dim != pipe.label_dim:
        raise ConfigError(f"online.augment_p={p}: EDM's AugmentPipe needs images and a network with "
                          f"augment_dim={pipe.label_dim}; this testbed has data of shape {list(data_shape)} and a "
                          f"{type(raw).__name__} with augment_dim={augment_dim}; set online.augment_p to 0")
    return pipe


def read_metrics(run_dir) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line] if p.exists() else []


class Distiller:
    """Owns the networks, optimisers, RNG and step counter of one run; ``run()`` trains to the end."""

    def __init__(self, cfg: RunConfig, run_dir, testbed, evaluator: Optional[Callable] = None, tracker=None,
                 dist: Optional[DistEnv] = None):
        self.cfg, self.run_dir, self.tracker = cfg, Path(run_dir), tracker
        self.dist = dist or DistEnv()
        self.shard = self.dist.shard(cfg.optim.batch_size)  # this rank's part of every global batch
        # micro-batches of the shard (gradient accumulation); a shard that does not split fails here, before work
        self.micro = micro_batches(self.shard.stop - self.shard.start, cfg.perf.grad_accum)
        self.perf = cfg.perf
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.dtype = getattr(torch, cfg.dtype)
        self.device = self.dist.device(cfg.device)
        self.backend_flags = configure_backends(cfg.perf, self.device)
        self.testbed = tb = testbed
        self.data_shape, self.label_dim = tuple(tb.data_shape), tb.label_dim
        check_dropout(cfg, tb.D_teacher)
        torch.manual_seed(cfg.seed)
        self.D_teacher = tb.D_teacher.to(self.device, self.dtype).eval().requires_grad_(False)
        to_memory_format(self.D_teacher, cfg.perf)
        # Generator and online network both start from the teacher (Appendix B.2).
        self.G = OneStepGenerator.from_teacher(self.D_teacher, cfg.generator.t_star).train().requires_grad_(True)
        self.D_fake = copy.deepcopy(self.D_teacher).train()
        if cfg.networks.dropout is not None:  # the teacher keeps its own (it runs in eval mode anyway)
            set_dropout(self.G, cfg.networks.dropout)
            set_dropout(self.D_fake, cfg.networks.dropout)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        o = cfg.optim
        self.opt_gen = torch.optim.Adam(self.G.parameters(), lr=o.lr_gen, betas=o.betas, eps=o.eps)
        self.opt_online = torch.optim.Adam(self.D_fake.parameters(), lr=o.lr_online, betas=o.betas, eps=o.eps)
        self.gen_loss = build_generator_loss(**cfg.method.loss_kwargs())
        self.online_loss = OnlineLoss(build_time_distribution(cfg.online.time_dist, **cfg.online.time_dist_params),
                                      cfg.online.weighting)
        self.augment_pipe = build_augment_pipe(cfg.online.augment_p, self.data_shape, self.D_fake)
        self.rng = torch.Generator().manual_seed(cfg.seed)
        self.step, self.nimg = 0, 0
        self.evaluator = None
        if self.dist.is_main:  # rank 0 evaluates and writes; the others only train
            self.evaluator = evaluator if evaluator is not None else tb.evaluator(cfg.eval, self.device, self.dtype)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", write=self.dist.is_main)
        self._stop_signal = None

    # ---- one iteration -------------------------------------------------------------------------------
    def _draw(self):
        """z and class labels of the global batch (every rank draws them all), cut to this rank's shard."""
        n = self.cfg.optim.batch_size
        z = self.G.sample_z(n, self.data_shape, self.rng, self.dtype, self.device)
        labels = self.testbed.sample_labels(n, self.rng, self.dtype, self.device)  # CIFAR-10: training images'
        return to_memory_format(z[self.shard], self.perf), (labels[self.shard] if labels is not None else None)

    def _accumulate(self, micro_loss: Callable, net: torch.nn.Module, opt: torch.optim.Optimizer) -> torch.Tensor:
        """One optimiser step on the mean loss of this rank's shard, summed over its micro-batches.

        ``micro_loss(part)`` is the mean loss of the micro-batch ``part`` (a slice of the shard); its network
        passes run under autocast, its backward outside. Each micro-batch contributes its mean / grad_accum, so the
        gradient is the shard mean's. The loss returned is the mean over ranks; only if it is finite are the
        gradients averaged over ranks and the step taken (otherwise the loop reports the divergence).
        """
        opt.zero_grad(set_to_none=True)
        k = len(self.micro)
        loss_local = None
        for part in self.micro:
            with autocast(self.perf, self.device):
                loss_part = micro_loss(part)
            if k > 1:
                loss_part = loss_part / k
            loss_part.backward()
            loss_local = loss_part.detach() if loss_local is None else loss_local + loss_part.detach()
        loss = self.dist.mean(loss_local)
        if loss.isfinite():
            self.dist.average_gradients(net)
            opt.step()
        return loss

    def online_step(self) -> torch.Tensor:
        """psi-step: theta frozen, DSM of D_psi on sg(g_theta(z)) (Algorithm 2, first half)."""
        self.G.eval()  # SiD/DI: the psi-step's samples come from G in eval mode (dropout off) under no_grad
        self.D_fake.train().requires_grad_(True)  # dropout on while the online network learns
        z, labels = self._draw()
        sigma, eps = self.online_loss.draw(self.cfg.optim.batch_size, self.data_shape, self.rng, self.dtype,
                                           self.device)
        sigma, eps = sigma[self.shard], to_memory_format(eps[self.shard], self.perf)
        aug = None
        if self.augment_pipe is not None:  # drawn for the global batch, like every other draw of the step
            aug = self.augment_pipe.draw(self.cfg.optim.batch_size, *self.data_shape[1:], self.rng)[self.shard]

        def micro_loss(part: slice) -> torch.Tensor:
            lab = labels[part] if labels is not None else None
            with torch.no_grad():
                x0 = self.G(z[part], lab)
            augment = (self.augment_pipe, aug[part]) if aug is not None else None
            return self.online_loss.loss(self.D_fake, x0, lab, sigma[part], eps[part], augment).mean()
        loss = self._accumulate(micro_loss, self.D_fake, self.opt_online)
        self.D_fake.requires_grad_(False)
        return loss

    def generator_step(self) -> torch.Tensor:
        """theta-step: psi frozen, the method's generator loss (Algorithm 2, second half)."""
        self.G.train()  # SiD: G's dropout is active during its own update
        self.D_fake.eval().requires_grad_(False)  # frozen parameters, differentiable in its input
        z, labels = self._draw()
        draw = self.gen_loss.draw_for(self.cfg.optim.batch_size, self.data_shape, self.rng, self.dtype, self.device)
        draw = draw[self.shard]
        draw.eps = to_memory_format(draw.eps, self.perf)

        def micro_loss(part: slice) -> torch.Tensor:
            lab = labels[part] if labels is not None else None
            x0 = self.G(z[part], lab)
            return self.gen_loss.loss(x0, lab, self.D_teacher, self.D_fake, draw[part]).mean()
        return self._accumulate(micro_loss, self.G, self.opt_gen)

    # ---- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return dict(format=CHECKPOINT_FORMAT, config_hash=self.cfg.hash(), step=self.step, nimg=self.nimg,
                    G=self.G.state_dict(), G_ema=self.G_ema.state_dict(), D_fake=self.D_fake.state_dict(),
                    opt_gen=self.opt_gen.state_dict(), opt_online=self.opt_online.state_dict(),
                    rng=self.rng.get_state(), torch_rng=torch.get_rng_state(),
                    numpy_rng=_numpy_state(), python_rng=_python_state(),
                    # dropout on a GPU draws from the device's generator; every rank's matches rank 0's (same
                    # seed, same number of draws), so rank 0's state restores them all
                    cuda_rng=torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None)

    def load_state_dict(self, s: dict) -> None:
        self.G.load_state_dict(s["G"])
        self.G_ema.load_state_dict(s["G_ema"])
        self.D_fake.load_state_dict(s["D_fake"])
        self.opt_gen.load_state_dict(s["opt_gen"])
        self.opt_online.load_state_dict(s["opt_online"])
        self.rng.set_state(s["rng"])
        torch.set_rng_state(s["torch_rng"])
        np.random.set_state(_numpy_from(s["numpy_rng"]))
        random.setstate(_python_from(s["python_rng"]))
        if self.device.type == "cuda" and s.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(s["cuda_rng"], self.device)
        self.step, self.nimg = int(s["step"]), int(s["nimg"])

    def save_checkpoint(self) -> None:
        if self.dist.is_main:
            atomic_torch_save(self.state_dict(), self.run_dir / "checkpoint.pt")
            self.sync_tracker()

    def sync_tracker(self) -> None:
        """Send the metrics up to the current step to the tracker (after a checkpoint: never past it)."""
        if self.tracker is not None:
            self.tracker.log_records(self.metrics.unsynced, self.step)  # the tracker retries what fails
            self.metrics.unsynced = []

    def try_resume(self) -> bool:
        path = self.run_dir / "checkpoint.pt"
        if not path.exists():
            return False
        s = load_checked(path, "checkpoint", fmt=CHECKPOINT_FORMAT)
        if s.get("config_hash") != self.cfg.hash():
            raise RunDirError(f"checkpoint {path} belongs to config {s.get('config_hash')}, not {self.cfg.hash()}")
        try:
            self.load_state_dict(s)
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path} does not match the networks: {str(e).splitlines()[0][:200]}") from None
        self.metrics.truncate_after(self.step)
        return True

    def save_snapshot(self, name: str) -> Path:
        path = self.run_dir / "snapshots" / name
        if not self.dist.is_main:
            return path
        atomic_torch_save(dict(format=SNAPSHOT_FORMAT, step=self.step, nimg=self.nimg, config_hash=self.cfg.hash(),
                               t_star=self.G.t_star, G_ema=self.G_ema.state_dict()), path)
        return path

    # ---- bookkeeping ---------------------------------------------------------------------------------
    def _status(self, status: str, **extra) -> dict:
        rec = dict(status=status, step=self.step, nimg=self.nimg, world_size=self.dist.world_size, **extra)
        if self.dist.is_main:
            atomic_write_json(self.run_dir / "status.json", rec)
        return rec

    def _evaluate(self) -> dict:
        if not self.dist.is_main:
            return {}
        t0 = time.time()
        result = self.evaluator(self.G_ema, self.step) if self.evaluator else {}
        rec = {"step": self.step, "nimg": self.nimg, **{f"eval/{k}": v for k, v in result.items()},
               "eval/seconds": round(time.time() - t0, 3)}
        self.metrics.add(rec)
        self.metrics.flush()
        return rec

    def _save_samples(self, name: str) -> None:
        if self.dist.is_main:
            self.testbed.save_samples(self.G_ema, self.run_dir / "samples" / name, self.cfg.eval.seed)

    def _on_signal(self, signum, frame):
        self._stop_signal = signum

    def _every(self, n: int) -> bool:
        return n > 0 and self.step % n == 0

    def _eval_due(self, nimg_before: int) -> bool:
        """Evaluate after this step? ('every': each eval_every steps; 'sid': SiD's cadence in images.)"""
        if self.cfg.train.eval_schedule == "sid":
            return sid_eval_due(nimg_before, self.nimg)
        return self._every(self.cfg.train.eval_every)

    def _snapshot_due(self, nimg_before: int) -> bool:
        """Save an EMA snapshot after this step? ('sid': with every evaluation, as SiD; snapshot_every adds more.)"""
        return self._every(self.cfg.train.snapshot_every) or (
            self.cfg.train.eval_schedule == "sid" and sid_eval_due(nimg_before, self.nimg))

    # ---- the loop ----------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, tc = self.cfg, self.cfg.train
        resumed = self.try_resume()
        if not resumed:
            self.metrics.truncate_after(-1)
            self._evaluate()  # the metric at initialisation, the reference for "improves by a factor"
            self._save_samples("init.png")
        old_handlers = {s: signal.signal(s, self._on_signal) for s in HANDLED_SIGNALS}
        self._status("running", resumed=resumed)
        bar = None
        if tc.progress:
            from tqdm import tqdm
            bar = tqdm(total=tc.iterations, initial=self.step, desc=cfg.name, mininterval=1.0)
        t_last = time.time()
        try:
            while self.step < tc.iterations:
                for _ in range(cfg.online.steps_per_iter):
                    loss_online = self.online_step()
                loss_gen = self.generator_step()
                losses_finite = bool(loss_online.isfinite() and loss_gen.isfinite())
                finite = losses_finite and _all_finite(list(self.G.parameters()) + list(self.D_fake.parameters()))
                nimg_before = self.nimg
                self.step += 1
                self.nimg += cfg.optim.batch_size  # kimg counts generator images per iteration (as SiD)
                if not finite:
                    # Figure 2 is about exactly this: record where it happened, keep the last good checkpoint.
                    self.metrics.add(dict(step=self.step, nimg=self.nimg, loss_online=float(loss_online),
                                          loss_gen=float(loss_gen)))
                    self.sync_tracker()
                    return self._status("diverged", diverged_at=self.step,
                                        reason="non-finite parameter" if losses_finite else "non-finite loss")
                ema_update(self.G_ema, self.G, ema_beta(self.nimg, cfg.optim.batch_size, cfg.ema.halflife_kimg,
                                                        cfg.ema.rampup_ratio))
                if self._every(tc.log_every) or self.step == tc.iterations:
                    now = time.time()
                    self.metrics.add(dict(step=self.step, nimg=self.nimg, loss_online=loss_online.item(),
                                          loss_gen=loss_gen.item(), sec_per_iter=round((now - t_last) / tc.log_every, 5)))
                    t_last = now
                if self._eval_due(nimg_before) or self.step == tc.iterations:
                    self._evaluate()
                if self._snapshot_due(nimg_before) or self.step == tc.iterations:
                    self.save_snapshot(f"ema-{self.step:08d}.pt")
                if self._every(tc.sample_every) or self.step == tc.iterations:
                    self._save_samples(f"step-{self.step:08d}.png")
                if bar is not None:
                    bar.update(1)
                    if self.step % tc.log_every == 0:
                        bar.set_postfix(online=f"{loss_online.item():.4g}", gen=f"{loss_gen.item():.4g}")
                stop = self.dist.any(self._stop_signal is not None)  # every rank stops at the same step
                if self._every(tc.checkpoint_every) or self.step == tc.iterations or stop:
                    self.metrics.flush()
                    self.save_checkpoint()
                if stop and self.step < tc.iterations:
                    name = signal.Signals(self._stop_signal).name if self._stop_signal else "signal on another rank"
                    return self._status("interrupted", signal=name)
            self.metrics.flush()
            return self._status("finished")
        finally:
            self.metrics.flush()
            if bar is not None:
                bar.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)


def _numpy_state():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return dict(name=name, keys=torch.from_numpy(keys.astype(np.int64)), pos=pos, has_gauss=has_gauss, cached=cached)


def _numpy_from(s):
    return (s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached"])


def _python_state():
    version, internal, gauss = random.getstate()
    return dict(version=version, internal=list(internal), gauss=gauss)


def _python_from(s):
    return (s["version"], tuple(s["internal"]), s["gauss"])


def prepare_run_dir(cfg: RunConfig, run_dir) -> Path:
    """Create the run directory with its provenance, or check that an existing one holds the same config."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists():
        existing = parse_config(yaml.safe_load(cfg_path.read_text()))
        if existing.hash() != cfg.hash():
            raise RunDirError(f"run directory {run_dir} holds config {existing.hash()}, not {cfg.hash()}; "
                              "use another --run-dir")
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    from .checkpoint import sha256_file
    teacher = Path(cfg.testbed.teacher)
    atomic_write_json(run_dir / "provenance.json",
                      provenance(cfg.hash(), {"teacher_sha256": sha256_file(teacher) if teacher.is_file() else None}))
    atomic_write_text(run_dir / "config_hash.txt", cfg.hash() + "\n")
    atomic_write_text(cfg_path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return run_dir


def distill(cfg: RunConfig, run_dir, testbed=None, evaluator=None, tracker_factory=None,
            dist: Optional[DistEnv] = None) -> dict:
    """Run (or resume, or no-op if finished) one distillation; returns the final status record.

    The teacher (and the classifier, for digits) are loaded and checked before the run directory is touched.
    With several processes (torchrun or a multi-task submitit job: see sim_core/distributed.py) every rank
    calls this; rank 0 prepares the run directory and alone tracks the run.
    """
    from .testbeds import load_testbed
    dist = dist or from_environment(cfg.device)
    shard = dist.shard(cfg.optim.batch_size)  # a batch that does not split evenly fails before any work
    check_grad_accum(shard.stop - shard.start, cfg.perf.grad_accum)  # so does a shard that does not split
    testbed = testbed or load_testbed(cfg.testbed)
    check_dropout(cfg, testbed.D_teacher)
    if dist.is_main:
        run_dir = prepare_run_dir(cfg, run_dir)
    dist.barrier()
    run_dir = Path(run_dir)
    status_path = run_dir / "status.json"
    if status_path.exists():
        status = json.loads(status_path.read_text())
        if status["status"] in ("finished", "diverged"):
            return status
    dist.barrier()  # no rank may see status.json change under it (rank 0 rewrites it as the run starts)
    tracker = tracker_factory() if tracker_factory and dist.is_main else None  # after the run dir exists
    d = Distiller(cfg, run_dir, testbed=testbed, evaluator=evaluator, tracker=tracker, dist=dist)
    return d.run()
