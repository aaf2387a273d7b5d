"""Iterations per second of SIM, SiD and DI on the digits teacher, and how close one SIM iteration is to the
sum of its network passes timed separately (the floor of the loop). Prints ratios measured in one run.

    .venv/bin/python benchmarks/bench_iterations.py [--batch 64] [--teacher results/assets/teacher_digits.pt]

Without --teacher, a randomly initialised network of the toy digits teacher's architecture is used (timing
does not depend on the weights). One torch thread, as the toy jobs run.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from sim_core.core.edm import EDMPrecond
from sim_core.core.ema import ema_beta, ema_update
from sim_core.nets.mlp import ResidualMLP
from sim_core.testbeds.base import Testbed
from sim_core.testbeds.digits.testbed import TEACHER_DEFAULTS
from sim_core.testbeds.edm_teacher import load_teacher
from sim_core.train.config import parse_config
from sim_core.train.loop import Distiller
from sim_core.train.precision import autocast, to_memory_format


def no_sync() -> None:
    """CPU work is done when a call returns; on CUDA pass ``torch.cuda.synchronize`` instead."""


def timed(fn, reps: int, warmup: int = 5, sync=no_sync) -> float:
    """Median seconds per call (``sync`` waits for queued device work before and after each timed call)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_distiller(method: str, D, meta, batch: int, run_dir: str, **over) -> Distiller:
    """A Distiller on a teacher built in memory; ``over`` sets other top-level config keys (device, perf, ...)."""
    raw = dict(name=f"bench_{method}", testbed=dict(kind="digits", teacher="unused.pt"), method=dict(name=method),
               optim=dict(batch_size=batch, lr_gen=1e-5, lr_online=1e-5),
               train=dict(iterations=10 ** 9, progress=False))
    raw.update(over)
    return Distiller(parse_config(raw), run_dir, Testbed(D, meta), evaluator=lambda G, step: {})


def iteration(d: Distiller):
    d.psi_step()
    d.theta_step()
    d.nimg += d.cfg.optim.batch_size
    ema_update(d.G_ema, d.G, ema_beta(d.nimg, d.cfg.optim.batch_size))


def pass_floor(d: Distiller, reps: int, sync=no_sync, warmup: int = 5) -> dict:
    """Each network pass of one SIM iteration, timed on its own: on the run's device, in the loop's train/eval
    modes, under its perf switches; with gradient accumulation each pass runs once per micro-batch."""
    n, k, shape = d.micro[0].stop - d.micro[0].start, len(d.micro), d.data_shape
    rng = torch.Generator().manual_seed(0)
    z = to_memory_format(d.G.sample_z(n, shape, rng, d.dtype, d.device), d.perf)
    labels = d.testbed.draw_cond(n, rng, d.dtype, d.device)
    sigma = (torch.rand(n, generator=rng, dtype=d.dtype) + 0.1).to(d.device)
    x_t = to_memory_format(torch.randn((n, *shape), generator=rng, dtype=d.dtype).to(d.device), d.perf)

    def gen_nograd():
        d.G.eval()
        for _ in range(k):
            with torch.no_grad(), autocast(d.perf, d.device):
                d.G(z, labels)

    def psi_train():  # psi-step forward + backward to the parameters
        d.D_psi.train().requires_grad_(True)
        for _ in range(k):
            with autocast(d.perf, d.device):
                loss = (d.D_psi(x_t, sigma, labels) - z).pow(2).sum()
            loss.backward()
        d.D_psi.requires_grad_(False)

    def adam_online():
        d.opt_psi.step()

    def gen_fwd_bwd():  # the generator's share of the theta-step
        d.G.train()
        for _ in range(k):
            with autocast(d.perf, d.device):
                loss = (d.G(z, labels) * x_t).sum()
            loss.backward()

    def frozen_fwd_bwd_input(net):
        def f():
            net.eval()
            for _ in range(k):
                x = x_t.clone().requires_grad_(True)
                with autocast(d.perf, d.device):
                    loss = net(x, sigma, labels).sum()
                loss.backward()
        return f

    def adam_gen():
        d.opt_theta.step()

    def ema():
        ema_update(d.G_ema, d.G, 0.999)

    # Adam needs gradients to exist to do its work
    psi_train()
    gen_fwd_bwd()
    parts = dict(gen_forward_nograd=gen_nograd, online_forward_backward=psi_train, adam_online=adam_online,
                 gen_forward_backward=gen_fwd_bwd, teacher_forward_backward_to_input=frozen_fwd_bwd_input(d.D_teacher),
                 online_forward_backward_to_input=frozen_fwd_bwd_input(d.D_psi), adam_gen=adam_gen, ema=ema)
    return {name: timed(f, reps, warmup, sync) for name, f in parts.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--teacher", help="a digits teacher file; default: random weights, toy architecture")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.teacher:
        D, meta = load_teacher(a.teacher)
    else:
        hp = TEACHER_DEFAULTS
        torch.manual_seed(0)
        D = EDMPrecond(ResidualMLP((1, 8, 8), hidden=hp["hidden"], blocks=hp["blocks"]))
        meta = dict(data_shape=[1, 8, 8], label_dim=0)
    n_params = sum(p.numel() for p in D.parameters())
    print(f"digits teacher: {n_params:,} parameters, batch {a.batch}, {a.threads} thread(s), {a.reps} timed reps")
    with tempfile.TemporaryDirectory() as tmp:
        # Interleave the methods rep by rep so that drift in machine speed hits all of them alike.
        ds = {m: make_distiller(m, D, meta, a.batch, tmp) for m in ("sim", "sid", "di")}
        times = {m: [] for m in ds}
        for rep in range(a.reps + 5):
            for m, d in ds.items():
                t0 = time.perf_counter()
                iteration(d)
                if rep >= 5:  # warm-up
                    times[m].append(time.perf_counter() - t0)
        per_iter = {m: statistics.median(t) for m, t in times.items()}
        d = make_distiller("sim", D, meta, a.batch, tmp)
        floor = pass_floor(d, a.reps)
    report(per_iter, floor, a.batch)


def report(per_iter: dict, floor: dict, batch: int, peak_gib: dict | None = None) -> None:
    """Print seconds per iteration of each method (and its peak GPU memory), the SIM iteration's passes timed
    separately, and the ratios."""
    print("\nmethod  ms/iter  iter/s  images/s" + ("  peak_GiB" if peak_gib is not None else " (generator)"))
    for m, s in per_iter.items():
        peak = f" {peak_gib[m]:9.2f}" if peak_gib is not None else ""
        print(f"{m:6s} {1000 * s:8.2f} {1 / s:7.3f} {batch / s:9.1f}{peak}")
    total = sum(floor.values())
    print("\nSIM iteration, its passes timed separately (ms):")
    for k, v in floor.items():
        print(f"  {k:36s} {1000 * v:8.2f}")
    print(f"  {'sum of passes (floor)':36s} {1000 * total:8.2f}")
    print(f"\nratio SIM iteration / floor: {per_iter['sim'] / total:.3f}")
    print(f"ratio SiD / SIM: {per_iter['sid'] / per_iter['sim']:.3f}   DI / SIM: {per_iter['di'] / per_iter['sim']:.3f}")


if __name__ == "__main__":
    main()
