"""Harness overhead (Snakemake + submitit + MLflow) relative to the bare training it orchestrates.

Runs one experiment's distillation runs twice from the same prebuilt assets, one job at a time:
  bare:    one Python process calling sim_core's distill() and the final evaluation for each run in turn;
  harness: `snakemake <that experiment's job groups> --cores 1`, i.e. Snakemake, submitit jobs, MLflow logging.
Prints both wall times and (harness - bare) / bare. Default: table1 of the toy scale (12 runs).

    .venv/bin/python benchmarks/bench_harness_overhead.py [--scale toy] [--experiment table1]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BARE = """
import sys, time, json, torch
torch.set_num_threads(1)
from workflow.dag import load
from sim_core.config import parse_config
from sim_core.train import distill
from sim_core.evaluate import evaluate_snapshot, latest_snapshot
S, SW, _ = load({"scale": sys.argv[1], "results_dir": sys.argv[2]})
for run in SW.runs.values():
    if run.owner != sys.argv[3]:
        continue
    cfg = parse_config(run.config)
    distill(cfg, run.run_dir)
    evaluate_snapshot(cfg, latest_snapshot(run.run_dir), S.final_eval_seeds)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="toy")
    ap.add_argument("--experiment", default="table1")
    ap.add_argument("--keep", help="keep the work directory here")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from workflow.dag import load
    work = Path(a.keep or tempfile.mkdtemp(prefix="bench_overhead_"))
    bare_dir, dag_dir = work / "bare", work / "harness"
    S, SW, _ = load({"scale": a.scale, "results_dir": str(dag_dir)})
    groups = [g for g in SW.groups if g.startswith(a.experiment + "-")]
    if not groups:
        sys.exit(f"error: experiment {a.experiment!r} has no runs at scale {a.scale}")
    snakemake = [sys.executable, "-m", "snakemake"]
    config = ["--config", f"scale={a.scale}", f"results_dir={dag_dir}"]
    assets = sorted({SW.runs[n].config["testbed"][k] for g in groups for n in SW.groups[g]
                     for k in ("teacher", "classifier") if SW.runs[n].config["testbed"].get(k)})
    print(f"building assets once: {[Path(p).name for p in assets]}", flush=True)
    subprocess.run([*snakemake, *assets, f"{dag_dir}/tracking.json", "--cores", "2", "--quiet", "all", *config],
                   cwd=ROOT, check=True)
    shutil.copytree(dag_dir / "assets", bare_dir / "assets")

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", BARE, a.scale, str(bare_dir), a.experiment], cwd=ROOT, check=True)
    bare = time.perf_counter() - t0
    targets = [f"distill_{g.replace('-', '_')}" for g in groups]
    t0 = time.perf_counter()
    subprocess.run([*snakemake, *targets, "--cores", "1", "--quiet", "all", *config],
                   cwd=ROOT, check=True)
    harness = time.perf_counter() - t0
    n_runs = sum(len(SW.groups[g]) for g in groups)
    print(f"\n{a.scale}/{a.experiment}: {n_runs} runs in {len(groups)} submitit job(s), one job at a time")
    print(f"bare training + final evaluation (one process): {bare:8.1f} s")
    print(f"through Snakemake + submitit + MLflow:          {harness:8.1f} s")
    print(f"harness overhead: {(harness - bare) / bare:.3f} of the training time ({harness - bare:+.1f} s)")
    if not a.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
