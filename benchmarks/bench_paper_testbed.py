"""The paper-scale CIFAR-10 path on one device, end to end and timed: a distillation run through the real
Distiller and CIFAR-10 testbed (full-size DDPM++ teacher, batch 256), its in-training FID (one trial, as SiD's
fid50k_full), the final evaluation by a FID protocol, and a teacher row (Heun sampler). Prints seconds and
images/s measured in this one run.

    python benchmarks/bench_paper_testbed.py --device cuda [--iterations 20] [--eval-samples 50000]
    python benchmarks/bench_paper_testbed.py --tiny        # a small network on the CPU: checks that it works

NVIDIA's files cannot be fetched here, so the script writes stand-ins in the same formats (a randomly initialised
SongUNet as an EDM pickle, random Inception-v3 weights in torch-fidelity's format, reference statistics in EDM's
npz format) with the test suite's writers (tests/nvidia_format.py): timing does not depend on the weights.
Pass --assets DIR with the real files (manifest names, sim_core/assets.py) to time those instead.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


TINY = dict(img_resolution=8, in_channels=3, out_channels=3, augment_dim=9, model_channels=16, channel_mult=[1, 2],
            num_blocks=1, attn_resolutions=[4], dropout=0.13)  # --tiny: a small SongUNet, for CI on a CPU


def stand_in_assets(d: Path, label_dim: int, tiny: bool = False) -> str:
    """The three files, in their real formats; returns the Inception file's SHA-256 (not the published one)."""
    from sim_core.core.edm import EDMPrecond
    from sim_core.nets.songunet import SongUNet, cifar10_ddpmpp_kwargs

    import nvidia_format as nv
    torch.manual_seed(0)
    kwargs = dict(TINY, label_dim=label_dim) if tiny else cifar10_ddpmpp_kwargs(label_dim)
    return nv.write_stand_in_paper_assets(d, EDMPrecond(SongUNet(**kwargs), label_dim=label_dim).eval(), rank=256)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--method", default="sim")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--grad-accum", type=int, default=4)
    ap.add_argument("--eval-samples", type=int, default=50000)
    ap.add_argument("--protocol", default="edm")
    ap.add_argument("--teacher-nfe", type=int, default=35)
    ap.add_argument("--teacher-samples", type=int, default=5000)
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--assets", help="a directory with the real files (default: stand-ins written here)")
    ap.add_argument("--tiny", action="store_true", help="a small network and counts on the CPU (CI)")
    a = ap.parse_args()
    if a.tiny:
        a.device, a.iterations, a.batch, a.grad_accum = "cpu", 2, 4, 2
        a.eval_samples, a.teacher_nfe, a.teacher_samples = 4, 3, 4
    from sim_core.testbeds import load_testbed
    from sim_core.train.config import parse_config
    from sim_core.train.evaluate import evaluate_snapshot, latest_snapshot
    from sim_core.train.loop import distill
    from sim_core.train.run_dir import read_metrics
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        assets = Path(a.assets) if a.assets else tmp
        t0 = time.perf_counter()
        inception_sha = None if a.assets else stand_in_assets(tmp, 0, a.tiny)
        t_assets = time.perf_counter() - t0
        cfg = parse_config(dict(
            name="bench", scale="paper", device=a.device, threads=None,
            testbed=dict(kind="cifar10", teacher=str(assets / "edm-cifar10-32x32-uncond-vp.pkl"),
                         inception=str(assets / "weights-inception-2015-12-05-6726825d.pth"),
                         inception_sha256=inception_sha, fid_ref=str(assets / "cifar10-32x32.npz")),
            method=dict(name=a.method), optim=dict(batch_size=a.batch),
            perf=dict(grad_accum=a.grad_accum, tf32=a.tf32),
            train=dict(iterations=a.iterations, log_every=1, eval_every=0, checkpoint_every=0, progress=False),
            eval=dict(num_samples=a.eval_samples, batch_size=min(500, a.eval_samples))))
        t0 = time.perf_counter()
        tb = load_testbed(cfg.testbed)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        status = distill(cfg, tmp / "run", testbed=tb)
        t_run = time.perf_counter() - t0
        recs = read_metrics(tmp / "run")
        evals = [r for r in recs if "eval/fid" in r]
        sec_iter = [r["sec_per_iter"] for r in recs if "sec_per_iter" in r]
        sec_iter = sec_iter[2:] or sec_iter  # after warm-up, where there are enough iterations
        t0 = time.perf_counter()
        final = evaluate_snapshot(cfg, latest_snapshot(tmp / "run"), protocol=a.protocol, testbed=tb)
        t_final = time.perf_counter() - t0
        ecfg = cfg.eval.model_copy(update={"num_samples": a.teacher_samples})
        t0 = time.perf_counter()
        teacher = tb.teacher_metrics(a.teacher_nfe, 0, ecfg, protocol=a.protocol, device=torch.device(a.device))
        t_teacher = time.perf_counter() - t0
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else a.device
    print(f"device {dev}, torch {torch.__version__}, method {a.method}, batch {a.batch}, grad_accum {a.grad_accum}, "
          f"tf32 {a.tf32}, assets {'real' if a.assets else 'stand-ins (random weights)'}")
    print(f"stand-in assets written: {t_assets:.1f} s; testbed loaded (teacher pickle, Inception, ref stats): "
          f"{t_load:.1f} s")
    it_s = sum(sec_iter) / max(len(sec_iter), 1)
    print(f"distillation: {status['status']} after {status['step']} iterations in {t_run:.1f} s "
          f"(incl. {len(evals)} in-training evaluations of {a.eval_samples} samples: "
          f"{sum(r['eval/seconds'] for r in evals):.1f} s); {it_s:.3f} s/iteration = {a.batch / it_s:.0f} images/s")
    per_eval = sum(r["eval/seconds"] for r in evals) / max(len(evals), 1)
    print(f"one in-training FID+IS evaluation ({a.eval_samples} samples, SiD's one trial): {per_eval:.1f} s "
          f"= {a.eval_samples / per_eval:.0f} samples/s; its FID {evals[-1]['eval/fid']:.2f} (random networks)")
    trials = final.get("fid_trials", 0)
    print(f"final evaluation, {a.protocol} protocol ({trials} trials x {a.eval_samples}): {t_final:.1f} s; "
          f"FID {final['fid']:.2f}, spread {final['fid_spread']:.3f}")
    print(f"teacher row, Heun {a.teacher_nfe} NFE, {a.protocol} protocol ({trials} x {a.teacher_samples} samples): "
          f"{t_teacher:.1f} s = {trials * a.teacher_samples * a.teacher_nfe / t_teacher:.0f} network evaluations "
          f"per image-second; FID {teacher['fid']:.2f}")
    assert math.isfinite(final["fid"]) and math.isfinite(teacher["fid"])


if __name__ == "__main__":
    main()
