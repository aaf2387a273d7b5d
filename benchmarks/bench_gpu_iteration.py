"""Images/s of one SIM, SiD and DI iteration (psi-step + theta-step through the real Distiller) with the CIFAR-10
DDPM++ teacher architecture at the paper's batch 256, the sum of one SIM iteration's network passes timed
separately (the floor of the loop), and the peak GPU memory. Randomly initialised networks: timing does not depend
on the weights. A script, not a timed test.

    PYTHONPATH=. python benchmarks/bench_gpu_iteration.py [--device cuda] [--batch 256] [--cond] [--reps 10]
        [--tf32] [--bf16] [--channels-last] [--grad-accum N] [--dropout P]
    python benchmarks/bench_gpu_iteration.py --tiny --device cpu   # a very small network and batch (CI)

The first line printed records the machine, torch and the switches, so that numbers can be compared later.

Measured 2026-11 on one H100 80GB (torch 2.11, CUDA 13.0), unconditional, batch 256, --reps 4/5:
  - fp32 (the reference code's precision) does not fit at grad_accum 1 (> 79 GiB: the theta-step keeps the graphs
    of G, teacher and online network, ~0.3 GiB per image); grad_accum 2: SIM 81, SiD 82, DI 101 images/s, peak
    46 GiB (DI 19: no backward through the two denoisers); grad_accum 4: SIM 78 images/s, peak 24 GiB.
  - grad_accum 2 with --tf32: SIM 227, SiD 222, DI 276 images/s; with --bf16: SIM 266, SiD 262, DI 320, peak 41 GiB;
    --bf16 --channels-last: SIM 196 (channels_last is slower for this network).
  - SIM iteration / sum of its passes: 0.9-1.03 in every setting (the loop adds no measurable overhead).
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_iterations, beside this file
from bench_iterations import iteration, make_distiller, no_sync, pass_floor, report, timed  # noqa: E402

from sim_core.core.edm import EDMPrecond  # noqa: E402
from sim_core.nets import build_network  # noqa: E402
from sim_core.nets.songunet import cifar10_ddpmpp_kwargs  # noqa: E402

METHODS = ("sim", "sid", "di")


def network_kwargs(label_dim: int, tiny: bool) -> dict:
    """EDM's CIFAR-10 vp architecture (55.7 M parameters), or a very small SongUNet of the same code for --tiny."""
    kw = cifar10_ddpmpp_kwargs(label_dim)
    if tiny:  # two 8x8 levels of 16 channels, one block each, attention at 4x4: runs in milliseconds on a CPU
        kw.update(img_resolution=8, model_channels=16, channel_mult=[1, 1], num_blocks=1, attn_resolutions=[4])
    return kw


def build_teacher(label_dim: int, tiny: bool):
    torch.manual_seed(0)
    kw = network_kwargs(label_dim, tiny)
    D = EDMPrecond(build_network("songunet", **kw), label_dim=label_dim)
    meta = dict(data_shape=[kw["in_channels"], kw["img_resolution"], kw["img_resolution"]], label_dim=label_dim)
    return D, meta


def config_line(a, device: torch.device, n_params: int) -> str:
    if device.type == "cuda":
        name = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"
    else:
        name = f"cpu ({torch.get_num_threads()} threads)"
    net = "songunet tiny" if a.tiny else "songunet cifar10 ddpmpp"
    return (f"config: device={name} torch={torch.__version__} network={net} params={n_params:,} "
            f"cond={a.cond} batch={a.batch} reps={a.reps} tf32={a.tf32} bf16={a.bf16} "
            f"channels_last={a.channels_last} grad_accum={a.grad_accum} cudnn_benchmark={not a.no_cudnn_benchmark} "
            f"dropout={'teacher' if a.dropout is None else a.dropout} augment_p={a.augment_p}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=256, help="global batch (Table 5: 256)")
    ap.add_argument("--cond", action="store_true", help="class-conditional network (label_dim 10)")
    ap.add_argument("--reps", type=int, default=10, help="timed iterations per method (after --warmup)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--no-cudnn-benchmark", action="store_true")
    ap.add_argument("--dropout", type=float, help="networks.dropout for G and the online network; default: the "
                                                   "teacher's 0.13")
    ap.add_argument("--augment-p", type=float, default=0.12, help="online.augment_p (EDM's AugmentPipe on the "
                                                                  "psi-step's images); 0.12 as configs/scales/paper.yaml")
    ap.add_argument("--tiny", action="store_true", help="a very small SongUNet and batch 8 (checks the script)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    a = ap.parse_args()
    if a.tiny and a.batch == 256:
        a.batch = 8
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu_iteration: --device cuda but no CUDA device is visible; use --device cpu (with --tiny)")
    sync = torch.cuda.synchronize if device.type == "cuda" else no_sync
    label_dim = 10 if a.cond else 0
    D, meta = build_teacher(label_dim, a.tiny)
    over = dict(device=a.device, threads=a.threads,
                testbed=dict(kind="digits", teacher="unused.pt", conditional=a.cond),
                perf=dict(tf32=a.tf32, bf16=a.bf16, channels_last=a.channels_last, grad_accum=a.grad_accum,
                          cudnn_benchmark=not a.no_cudnn_benchmark),
                online=dict(augment_p=a.augment_p))
    if a.dropout is not None:
        over["networks"] = dict(dropout=a.dropout)
    torch.set_num_threads(a.threads)
    print(config_line(a, device, sum(p.numel() for p in D.parameters())), flush=True)

    per_iter, peak = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        # One method at a time, so that each one's peak memory is its own (4 networks + 2 Adam states).
        for m in METHODS:
            d = make_distiller(m, D, meta, a.batch, tmp, **over)
            for _ in range(a.warmup):
                iteration(d)
            if device.type == "cuda":
                sync()
                torch.cuda.reset_peak_memory_stats(device)
            per_iter[m] = timed(lambda: iteration(d), a.reps, warmup=0, sync=sync)
            peak[m] = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
            print(f"  {m}: {1000 * per_iter[m]:.1f} ms/iter", flush=True)
            del d
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        d = make_distiller("sim", D, meta, a.batch, tmp, **over)
        iteration(d)  # Adam state exists, as in the loop
        floor = pass_floor(d, a.reps, sync, warmup=a.warmup)

    report({m: per_iter[m] for m in METHODS}, floor, a.batch, peak)


if __name__ == "__main__":
    try:
        main()
    except torch.OutOfMemoryError:
        sys.exit("bench_gpu_iteration: out of GPU memory; split the batch with --grad-accum (SiD itself runs batch "
                 "256 as 4 GPUs x 4 rounds of 16)")
