"""The iteration benchmark runs and prints its ratios (timings themselves are not asserted: benchmarks are
scripts, not timed tests)."""
from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_iterations_prints_ratios():
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_iterations.py"), "--batch", "8",
                        "--reps", "3"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    ratio = float(re.search(r"ratio SIM iteration / floor: ([0-9.]+)", p.stdout).group(1))
    assert 0.3 < ratio < 10  # the loop is its passes plus bookkeeping: neither free nor an order of magnitude off
    for m in ("sim", "sid", "di"):
        assert re.search(rf"^{m}\s+[0-9.]+\s+[0-9.]+", p.stdout, re.M)


def test_bench_gpu_iteration_tiny_on_cpu():
    """The GPU benchmark's --tiny mode (a very small SongUNet, batch 8) on CPU, with the switches passed through:
    it prints its configuration line, images/s of each method and the floor ratio."""
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu_iteration.py"), "--tiny", "--device", "cpu",
                        "--reps", "2", "--warmup", "1", "--cond", "--bf16", "--channels-last", "--grad-accum", "2"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    config = re.search(r"^config: device=cpu .*$", p.stdout, re.M).group(0)
    for switch in ("torch=2.", "network=songunet tiny", "cond=True", "batch=8", "tf32=False", "bf16=True",
                   "channels_last=True", "grad_accum=2", "cudnn_benchmark=True"):
        assert switch in config, switch
    for m in ("sim", "sid", "di"):
        ms, per_s, images_s = (float(v) for v in re.search(rf"^{m}\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+nan",
                                                            p.stdout, re.M).groups())
        assert ms > 0 and abs(images_s - 8 * per_s) <= 0.01 * images_s + 0.1  # images/s = batch x iterations/s
    passes = re.findall(r"^  (\w+)\s+([0-9.]+)$", p.stdout, re.M)
    assert [k for k, _ in passes] == ["gen_forward_nograd", "online_forward_backward", "adam_online",
                                      "gen_forward_backward", "teacher_forward_backward_to_input",
                                      "online_forward_backward_to_input", "adam_gen", "ema"]
    floor = float(re.search(r"sum of passes \(floor\)\s+([0-9.]+)", p.stdout).group(1))
    assert abs(floor - sum(float(v) for _, v in passes)) < 0.05 * floor + 0.1
    ratio = float(re.search(r"ratio SIM iteration / floor: ([0-9.]+)", p.stdout).group(1))
    assert 0.05 < ratio < 20  # an iteration is its passes plus bookkeeping (wide: a shared CPU is noisy)


def test_bench_paper_testbed_tiny_on_cpu():
    """The paper-scale testbed benchmark runs end to end on stand-in files (small network, CPU) and prints its
    timings; the full-size run is for GPUs (numbers in the README)."""
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_paper_testbed.py"), "--tiny"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    it = re.search(r"distillation: finished after 2 iterations in ([0-9.]+) s .*; ([0-9.]+) s/iteration = "
                   r"([0-9.]+) images/s", p.stdout)
    total, per_it, images = (float(v) for v in it.groups())
    assert per_it <= total and images == pytest.approx(4 / per_it, rel=0.05, abs=1)  # batch 4
    ev = re.search(r"one in-training FID\+IS evaluation \(4 samples, SiD's one trial\): ([0-9.]+) s = ([0-9.]+) "
                   r"samples/s; its FID ([0-9.]+)", p.stdout)
    seconds, rate, fid_trial = (float(v) for v in ev.groups())
    assert rate == pytest.approx(4 / seconds, rel=0.1, abs=1)
    final = re.search(r"final evaluation, edm protocol \(3 trials x 4\): ([0-9.]+) s; FID ([0-9.]+), spread "
                      r"([0-9.]+)", p.stdout)
    _, fid, spread = (float(v) for v in final.groups())
    # the EDM protocol reports the minimum of its 3 trials; its spread is their range, which covers the minimum
    assert math.isfinite(fid) and fid > 0 and spread >= 0
    teacher = float(re.search(r"teacher row, Heun 3 NFE, edm protocol \(3 x 4 samples\): [0-9.]+ s = [0-9.]+ "
                              r"network evaluations per image-second; FID ([0-9.]+)", p.stdout).group(1))
    assert math.isfinite(teacher) and teacher != fid  # another sampler, other samples


def test_bench_vs_sid_refuses_a_path_that_is_no_sid_checkout(tmp_path):
    """SiD's code is never part of the project (nor fetched here): without a checkout the script says so in one
    line, exit code 2, before building anything."""
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_vs_sid.py"), "--sid", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [f"error: --sid {tmp_path}: no training/sid_training_loop.py there (a "
                                             "checkout of mingyuanzhou/SiD?)"]


def test_bench_t2i_audits_the_papers_budget_on_the_real_configs():
    """The FLOP audit on the meta device (no memory): PixArt-XL-2-512's forward and the SIM iteration in units of
    it, held against 4 A100 x 2 days; then the tiny configs timed on the CPU."""
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_t2i.py")], capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "DiT 610,856,096 parameters; T5 4,762,310,656" in p.stdout
    assert "DiT forward, one sample (F): 1.236 TFLOP" in p.stdout
    ratios = {k: float(v) for k, v in re.findall(r"^  (\w+): [0-9.]+ TFLOP = ([0-9.]+) F$", p.stdout, re.M)}
    assert ratios["forward_no_graph"] == 1.0 and 2.8 < ratios["backward_to_weights"] < 3.2  # backward ~ 2 forwards
    assert 1.8 < ratios["backward_to_input"] < ratios["backward_to_weights"]  # no weight gradients
    need = re.search(r"it needs (\d+)% of peak \((\d+)% with checkpointing\)", p.stdout)
    assert need and 95 < int(need.group(1)) < int(need.group(2))
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_t2i.py"), "--tiny", "--device", "cpu",
                        "--micro-batches", "1,2", "--reps", "1"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    assert re.search(r"^micro-batch 2: SIM iteration [0-9.]+ s = [0-9.]+ images/s", p.stdout, re.M), p.stdout
