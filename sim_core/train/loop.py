"""The distillation loop shared by SIM, SiD and DI (paper Algorithm 1; Algorithm 2 in EDM form).

Each iteration: ``online.steps_per_iter`` psi-steps (denoising score matching of the online network D_psi on
detached generator samples), then one theta-step (the method's generator loss; the teacher and D_psi frozen but
differentiable in their input). Adam with the paper's betas, EMA of the generator for evaluation. Train/eval modes
as SiD's loop (docs/reference-code.md#sids-loop): psi-step with D_psi in train mode (dropout on) and the
generator's samples from eval mode under no_grad; theta-step with G in train mode and D_psi in eval mode; the
teacher always in eval.

The ``perf`` switches (sim_core/train/precision.py) change speed, not the algorithm: bf16 autocast around the
network passes, TF32, channels_last, and gradient accumulation over ``perf.grad_accum`` micro-batches of this rank's
shard, with the random draws of the global batch sliced exactly as without it.

Beside the loop: the run directory and metrics log (run_dir.py), checkpoint and RNG state (state.py), when to
evaluate, snapshot and checkpoint (schedule.py), stop signals (signals.py). A run interrupted by a signal
checkpoints and returns "interrupted"; started again it resumes and ends bitwise-identical (on CPU) to a run that was
never interrupted.
"""
from __future__ import annotations

import copy
import os
import socket
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from sim_core.core.cond import take
from sim_core.core.ema import ema_beta, ema_update
from sim_core.core.generator import OneStepGenerator
from sim_core.errors import CheckpointError, ConfigError, RunDirError
from sim_core.files import atomic_torch_save, load_checked
from sim_core.nets import dropout_settings
from sim_core.train.config import RunConfig
from sim_core.train.distributed import DistEnv, from_environment
from sim_core.train.lock import RunLock, remove_temporaries
from sim_core.train.precision import (
    autocast,
    check_grad_accum,
    checkpointing,
    configure_backends,
    micro_batches,
    to_memory_format,
)
from sim_core.train.run_dir import TERMINAL, MetricsLog, prepare_run_dir, read_metrics, read_status, write_status
from sim_core.train.schedule import Schedule
from sim_core.train.signals import StopSignals
from sim_core.train.state import CHECKPOINT_FORMAT, SNAPSHOT_FORMAT, rng_state, set_rng_state


class Distiller:
    """Owns the networks, optimisers, RNG and step counter of one run; ``run()`` trains to the end."""

    # ---- setup: teacher, generator and online network, optimisers, losses (Algorithm 1's initialisation) --------
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
        self.testbed = testbed
        self.data_shape = tuple(testbed.data_shape)
        check_dropout(cfg, testbed.D_teacher)
        torch.manual_seed(cfg.seed)
        self.D_teacher = testbed.D_teacher.to(self.device, self.dtype).eval().requires_grad_(False)
        to_memory_format(self.D_teacher, cfg.perf)
        # Generator and online network both start from the teacher (Appendix B.2): its own network, also where the
        # score the theta-step uses is a guided combination of it (text-to-image CFG).
        D_init = testbed.D_init.to(self.device, self.dtype)
        self.G = OneStepGenerator.from_teacher(D_init, cfg.generator.t_star).train().requires_grad_(True)
        self.D_psi = copy.deepcopy(D_init).train()
        for net in (self.D_teacher, self.G, self.D_psi):
            checkpointing(net, cfg.perf)
        if cfg.networks.dropout is not None:  # the teacher keeps its own (it runs in eval mode anyway)
            set_dropout(self.G, cfg.networks.dropout)
            set_dropout(self.D_psi, cfg.networks.dropout)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        o = cfg.optim
        self.opt_theta = torch.optim.Adam(self.G.parameters(), lr=o.lr_gen, betas=o.betas, eps=o.eps)
        self.opt_psi = torch.optim.Adam(self.D_psi.parameters(), lr=o.lr_online, betas=o.betas, eps=o.eps)
        self.theta_loss = cfg.method.build()
        self.psi_loss = cfg.online.loss()
        self.augment_pipe = build_augment_pipe(cfg.online.augment_p, self.data_shape, self.D_psi)
        self.rng = torch.Generator().manual_seed(cfg.seed)
        self.step, self.nimg = 0, 0
        self.nonfinite = cfg.method.nonfinite
        self.nonfinite_steps = 0  # steps whose loss was not finite or lost samples, under a sanitizing policy
        self.first_nonfinite_step = 0  # the first of them (0: none yet)
        self._step_sanitized = False
        self._psi_cond = None
        self.evaluator = None
        if self.dist.is_main:  # rank 0 evaluates and writes; the others only train
            self.evaluator = evaluator or testbed.evaluator(cfg.eval, self.device, self.dtype)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", write=self.dist.is_main)
        self.schedule = Schedule(cfg.train)

    # ---- one iteration: the psi-step, then the theta-step -----------------------------------------------------
    def _draw(self, reuse_cond=None):
        """z and the conditioning of the global batch (every rank draws them all), cut to this rank's shard; with
        ``reuse_cond`` (DI's generator step) only z is drawn and that conditioning is used again."""
        n = self.cfg.optim.batch_size
        z = self.G.sample_z(n, self.data_shape, self.rng, self.dtype, self.device)
        if reuse_cond is not None:
            return to_memory_format(z[self.shard], self.perf), reuse_cond
        cond = self.testbed.draw_cond(n, self.rng, self.dtype, self.device)
        return to_memory_format(z[self.shard], self.perf), take(cond, self.shard)

    def _noise(self, loss):
        """t and eps of the global batch (sigma first, then eps, from the run's generator), cut to this shard."""
        draw = loss.draw(self.cfg.optim.batch_size, self.data_shape, self.rng, self.dtype, self.device)[self.shard]
        draw.eps = to_memory_format(draw.eps, self.perf)
        return draw

    def _reduce(self, per_sample: torch.Tensor) -> torch.Tensor:
        """A micro-batch's mean loss. Under the "sanitize" policy (SiD's code) samples whose loss is not finite are
        dropped from the sum, which is still divided by the micro-batch size, as SiD does."""
        if self.nonfinite == "sanitize":
            finite = per_sample.isfinite()
            if not bool(finite.all()):
                self._step_sanitized = True
                return per_sample[finite].sum() / per_sample.shape[0]
        return per_sample.mean()

    def _accumulate(self, micro_loss: Callable, net: torch.nn.Module, opt: torch.optim.Optimizer) -> torch.Tensor:
        """One optimiser step on the mean loss of this rank's shard, summed over its micro-batches.

        ``micro_loss(part)`` is the per-sample loss of the micro-batch ``part`` (a slice of the shard); its network
        passes run under autocast, its backward outside. Each micro-batch contributes its mean / grad_accum, so the
        gradient is the shard mean's. The loss returned is the mean over ranks. Under the "stop" policy the
        gradients are averaged over ranks and the step taken only if it is finite (otherwise the loop reports the
        divergence); under "sanitize" and "sanitize_grads" the averaged gradients go through nan_to_num as in SiD's
        and DI's code and the step is always taken.
        """
        opt.zero_grad(set_to_none=True)
        k = len(self.micro)
        loss_local = None
        for part in self.micro:
            with autocast(self.perf, self.device):
                loss_part = self._reduce(micro_loss(part))
            if k > 1:
                loss_part = loss_part / k
            loss_part.backward()
            loss_local = loss_part.detach() if loss_local is None else loss_local + loss_part.detach()
        loss = self.dist.mean(loss_local)
        if self.nonfinite == "stop":
            if loss.isfinite():
                self.dist.average_gradients(net)
                opt.step()
            return loss
        if not loss.isfinite():
            self._step_sanitized = True
        self.dist.average_gradients(net)
        for p in net.parameters():  # SiD/DI: nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5) before Adam
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)
        opt.step()
        return loss

    def psi_step(self) -> torch.Tensor:
        """theta frozen: denoising score matching of D_psi on sg(g_theta(z)) (Algorithm 2, first half)."""
        self.G.eval()  # SiD/DI: the psi-step's samples come from G in eval mode (dropout off) under no_grad
        self.D_psi.train().requires_grad_(True)  # dropout on while the online network learns
        z, cond = self._draw()
        noise = self._noise(self.psi_loss)
        aug = None
        if self.augment_pipe is not None:  # drawn for the global batch, like every other draw of the step
            aug = self.augment_pipe.draw(self.cfg.optim.batch_size, *self.data_shape[1:], self.rng)[self.shard]

        def micro_loss(part: slice) -> torch.Tensor:
            with torch.no_grad():
                x0 = self.G(z[part], take(cond, part))
            augment = (self.augment_pipe, aug[part]) if aug is not None else None
            return self.psi_loss.loss(self.D_psi, x0, take(cond, part), noise[part], augment)
        loss = self._accumulate(micro_loss, self.D_psi, self.opt_psi)
        self.D_psi.requires_grad_(False)
        self._psi_cond = cond
        return loss

    def theta_step(self) -> torch.Tensor:
        """psi frozen: the method's generator loss (Algorithm 2, second half)."""
        self.G.train()  # SiD: G's dropout is active during its own update
        self.D_psi.eval().requires_grad_(False)  # frozen parameters, differentiable in its input
        z, cond = self._draw(self._psi_cond if self.cfg.method.reuse_psi_cond else None)
        noise = self._noise(self.theta_loss)

        def micro_loss(part: slice) -> torch.Tensor:
            x0 = self.G(z[part], take(cond, part))
            return self.theta_loss.loss(x0, take(cond, part), self.D_teacher, self.D_psi, noise[part])
        return self._accumulate(micro_loss, self.G, self.opt_theta)

    # ---- the loop -------------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, tc = self.cfg, self.cfg.train
        with StopSignals() as signals:  # the caller's, when it watches already (distill: from the start-up on)
            resumed = self._start()
            if signals.received is not None and not resumed:  # stopped during the initial evaluation: no step yet
                return self._status("interrupted", signal=signals.name())
            bar = _progress_bar(cfg, self.step)
            self._status("running", resumed=resumed, pid=os.getpid(), host=socket.gethostname())
            t_last = time.time()
            try:
                while self.step < tc.iterations:
                    diverged, t_last = self.iteration(t_last, bar)
                    if diverged is not None:
                        return diverged
                    stop = self.dist.any(signals.received is not None)  # every rank stops at the same step
                    if self.schedule.checkpoint(self.step) or stop:
                        self.metrics.flush()
                        self.save_checkpoint()
                    if stop and self.step < tc.iterations:
                        return self._status("interrupted", signal=signals.name())
                self.metrics.flush()
                return self._end()
            finally:
                self.metrics.flush()
                if bar is not None:
                    bar.close()

    def iteration(self, t_last: float, bar=None) -> tuple[dict | None, float]:
        """One iteration of the loop: the online steps, the generator step, the non-finite policy, the EMA, then the
        records the schedule asks for. Returns the run's "diverged" status (under "stop") or None, and the time of
        the last log record."""
        cfg = self.cfg
        for _ in range(cfg.online.steps_per_iter):
            loss_psi = self.psi_step()
        loss_theta = self.theta_step()
        nimg_before = self.nimg
        self.step += 1
        self.nimg += cfg.optim.batch_size  # kimg counts generator images per iteration (as SiD)
        if self.nonfinite == "stop" and not self._finite(loss_psi, loss_theta):
            return self._diverged(loss_psi, loss_theta), t_last
        if self.nonfinite != "stop" and self.dist.any(self._step_sanitized):
            self.nonfinite_steps += 1
            self.first_nonfinite_step = self.first_nonfinite_step or self.step  # where "stop" would end
        self._step_sanitized = False
        # EDM/SiD/DI: beta from the image count before this step's images (the first update copies G)
        ema_update(self.G_ema, self.G, ema_beta(nimg_before, cfg.optim.batch_size, cfg.ema.halflife_kimg,
                                                cfg.ema.rampup_ratio))
        return None, self._after_step(nimg_before, loss_psi, loss_theta, t_last, bar)

    # ---- beside the loop: start, records, divergence ----------------------------------------------------------
    def _start(self) -> bool:
        """Resume from the checkpoint, or evaluate the generator at initialisation (the reference for "improves by a
        factor"); returns whether it resumed."""
        if self.try_resume():
            return True
        self.metrics.truncate_after(-1)
        self._evaluate()
        self._save_samples("init.png")
        return False

    def _end(self) -> dict:
        """The status of a run that reached its last step: "collapsed" when the EMA generator's samples are
        degenerate (sim_core/testbeds/base.py collapse_reason), else "finished"."""
        extra = {}
        if self.nonfinite != "stop":
            extra = {"nonfinite_steps": self.nonfinite_steps, "first_nonfinite_step": self.first_nonfinite_step}
        reason = self.testbed.collapse_reason(self.G_ema, self.cfg.eval.seed) if self.dist.is_main else None
        if reason is not None:
            return self._status("collapsed", reason=reason, **extra)
        return self._status("finished", **extra)

    def _after_step(self, nimg_before: int, loss_psi, loss_theta, t_last: float, bar) -> float:
        """Log, evaluate, snapshot and draw pictures as the schedule says; returns the time of the last log."""
        s, step = self.schedule, self.step
        if s.log(step):
            now = time.time()
            rec = dict(step=step, nimg=self.nimg, loss_online=loss_psi.item(), loss_gen=loss_theta.item(),
                       sec_per_iter=round((now - t_last) / self.cfg.train.log_every, 5))
            if self.nonfinite != "stop":
                rec["nonfinite_steps"] = self.nonfinite_steps
            self.metrics.add(rec)
            t_last = now
        if s.evaluate(step, nimg_before, self.nimg):
            self._evaluate()
        if s.snapshot(step, nimg_before, self.nimg):
            self.save_snapshot(f"ema-{step:08d}.pt")
        if s.samples(step):
            self._save_samples(f"step-{step:08d}.png")
        if bar is not None:
            bar.update(1)
            if step % self.cfg.train.log_every == 0:
                bar.set_postfix(online=f"{loss_psi.item():.4g}", gen=f"{loss_theta.item():.4g}")
        return t_last

    def _finite(self, loss_psi, loss_theta) -> bool:
        self._losses_finite = bool(loss_psi.isfinite() and loss_theta.isfinite())
        return self._losses_finite and _all_finite(list(self.G.parameters()) + list(self.D_psi.parameters()))

    def _diverged(self, loss_psi, loss_theta) -> dict:
        """Figure 2 is about exactly this: record where it happened, keep the last good checkpoint."""
        self.metrics.add(dict(step=self.step, nimg=self.nimg, loss_online=float(loss_psi), loss_gen=float(loss_theta)))
        self.sync_tracker()
        return self._status("diverged", diverged_at=self.step,
                            reason="non-finite parameter" if self._losses_finite else "non-finite loss")

    def _status(self, status: str, **extra) -> dict:
        rec = dict(status=status, step=self.step, nimg=self.nimg, world_size=self.dist.world_size, **extra)
        if self.dist.is_main:
            write_status(self.run_dir, rec)
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

    # ---- state: checkpoints, snapshots, resume ----------------------------------------------------------------
    def state_dict(self) -> dict:
        return dict(format=CHECKPOINT_FORMAT, config_hash=self.cfg.hash(), step=self.step, nimg=self.nimg,
                    G=self.G.state_dict(), G_ema=self.G_ema.state_dict(), D_psi=self.D_psi.state_dict(),
                    opt_theta=self.opt_theta.state_dict(), opt_psi=self.opt_psi.state_dict(),
                    rng=rng_state(self.rng, self.device), nonfinite_steps=self.nonfinite_steps,
                    first_nonfinite_step=self.first_nonfinite_step)

    def load_state_dict(self, s: dict) -> None:
        self.G.load_state_dict(s["G"])
        self.G_ema.load_state_dict(s["G_ema"])
        self.D_psi.load_state_dict(s["D_psi"])
        self.opt_theta.load_state_dict(s["opt_theta"])
        self.opt_psi.load_state_dict(s["opt_psi"])
        set_rng_state(s["rng"], self.rng, self.device)
        self.step, self.nimg = int(s["step"]), int(s["nimg"])
        self.nonfinite_steps = int(s["nonfinite_steps"])
        self.first_nonfinite_step = int(s["first_nonfinite_step"])

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


def _all_finite(tensors) -> bool:
    tensors = list(tensors)
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all()) if tensors else True


def _progress_bar(cfg: RunConfig, initial: int):
    if not cfg.train.progress:
        return None
    from tqdm import tqdm
    return tqdm(total=cfg.train.iterations, initial=initial, desc=cfg.name, mininterval=1.0)


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
    from sim_core.train.augment import cifar10_augment_pipe
    pipe = cifar10_augment_pipe(p)
    raw = getattr(network, "model", network)  # the raw network inside EDMPrecond
    augment_dim = getattr(raw, "init_kwargs", {}).get("augment_dim", 0)  # SongUNet's constructor arguments
    if len(data_shape) != 3 or augment_dim != pipe.label_dim:
        raise ConfigError(f"online.augment_p={p}: EDM's AugmentPipe needs images and a network with "
                          f"augment_dim={pipe.label_dim}; this testbed has data of shape {list(data_shape)} and a "
                          f"{type(raw).__name__} with augment_dim={augment_dim}; set online.augment_p to 0")
    return pipe


def check_device(device: str) -> None:
    """A device this machine has: one line for a misspelt name or a GPU that is not there."""
    try:
        d = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device {device!r} is not a torch device (cpu, cuda, cuda:N)") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: this machine has no CUDA GPU; use device cpu")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    if d.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r}: the harness runs on cpu or cuda")


def distill(cfg: RunConfig, run_dir, testbed=None, evaluator=None, tracker_factory=None,
            dist: Optional[DistEnv] = None) -> dict:
    """Run (or resume, or no-op if finished) one distillation; returns the final status record.

    Everything that can be checked is checked before the run directory is touched: the device, the batch split, the
    teacher and the testbed's evaluation files, the networks' dropout and augmentation settings. Rank 0 then takes the
    run directory's lock (a second process refuses in one line; a killed one's lock is taken over), removes what a
    killed process left half-written, and alone tracks the run. Signals are watched from here on: one during the
    start-up or the initial evaluation ends the run as "interrupted" with nothing half-done. With several processes
    (torchrun or a multi-task submitit job: see sim_core/train/distributed.py) every rank calls this.
    """
    from sim_core.testbeds import load_testbed
    check_device(cfg.device)
    dist = dist or from_environment(cfg.device)
    shard = dist.shard(cfg.optim.batch_size)  # a batch that does not split evenly fails before any work
    check_grad_accum(shard.stop - shard.start, cfg.perf.grad_accum)  # so does a shard that does not split
    testbed = testbed or load_testbed(cfg.testbed)
    check_dropout(cfg, testbed.D_teacher)
    build_augment_pipe(cfg.online.augment_p, tuple(testbed.data_shape), testbed.D_teacher)
    lock = None
    with StopSignals():
        try:
            if dist.is_main:
                run_dir = prepare_run_dir(cfg, run_dir)
                status = read_status(run_dir)  # what the directory holds is read (and refused) before any write
                read_metrics(run_dir)
                if status is None or status["status"] not in TERMINAL:
                    lock = RunLock(run_dir).acquire()
                    remove_temporaries(run_dir)
            dist.barrier()
            run_dir = Path(run_dir)
            status = read_status(run_dir)
            if status is not None and status["status"] in TERMINAL:
                return status
            dist.barrier()  # no rank may see status.json change under it (rank 0 rewrites it as the run starts)
            tracker = tracker_factory() if tracker_factory and dist.is_main else None  # after the run dir exists
            d = Distiller(cfg, run_dir, testbed=testbed, evaluator=evaluator, tracker=tracker, dist=dist)
            return d.run()
        finally:
            if lock is not None:
                lock.release()
