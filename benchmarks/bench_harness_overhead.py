"""Harness overhead (Snakemake + submitit + MLflow) relative to the bare training it orchestrates.

Runs one experiment's distillation runs from the same prebuilt assets, one job at a time, in two ways:
  bare:    one Python process calling sim_core's distill() and the final evaluation for each run in turn;
  harness: `snakemake <that experiment's job groups> --cores 1`, i.e. Snakemake, submitit jobs, MLflow logging,
           starting cold (no cached sweep validation).
With --repeats N the two alternate N times (bare, harness, bare, ...) into fresh directories, since run times
drift by several percent between minutes on a shared machine. Prints, per repeat and as medians:
  vs bare:    (harness - bare) / bare;
  accounted:  (harness - compute) / compute, where compute is the training + final-evaluation time the job
              itself measured around distill() and the evaluation (done.json), so machine drift between
              the two phases cancels. MLflow runs in a tracker process; its busy time is printed too.
Default: table1 of the toy scale (12 runs, ~3.5 min of training); `--experiment all`: every distillation run
of the scale (toy: 51 runs, ~14 min), where the fixed costs (Snakemake start, the MLflow store) weigh less.

    .venv/bin/python benchmarks/bench_harness_overhead.py [--scale toy] [--experiment table1|all] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
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
from sim_core.train.config import parse_config
from sim_core.train.loop import distill
from sim_core.train.evaluate import evaluate_snapshot, latest_snapshot
S, SW, _ = load({"scale": sys.argv[1], "results_dir": sys.argv[2]})
for run in SW.runs.values():
    if sys.argv[3] != "all" and run.owner != sys.argv[3]:
        continue
    cfg = parse_config(run.config)
    distill(cfg, run.run_dir)
    evaluate_snapshot(cfg, latest_snapshot(run.run_dir), S.final_eval_seeds)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="toy")
    ap.add_argument("--experiment", default="table1")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--keep", help="keep the work directory here")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from workflow.dag import load
    work = Path(a.keep or tempfile.mkdtemp(prefix="bench_overhead_"))
    assets_dir = work / "assets-build"
    S, SW, _ = load({"scale": a.scale, "results_dir": str(assets_dir)})
    groups = [g for g in SW.groups if a.experiment == "all" or g.startswith(a.experiment + "-")]
    if not groups:
        sys.exit(f"error: experiment {a.experiment!r} has no runs at scale {a.scale}")
    snakemake = [sys.executable, "-m", "snakemake"]
    assets = sorted({SW.runs[n].config["testbed"][k] for g in groups for n in SW.groups[g]
                     for k in ("teacher", "classifier") if SW.runs[n].config["testbed"].get(k)})
    print(f"building assets once: {[Path(p).name for p in assets]}", flush=True)
    subprocess.run([*snakemake, *assets, "--cores", "2", "--quiet", "all", "--config", f"scale={a.scale}",
                    f"results_dir={assets_dir}"], cwd=ROOT, check=True)
    targets = [f"distill_{g.replace('-', '_')}" for g in groups]
    n_runs = sum(len(SW.groups[g]) for g in groups)
    rows = []
    for i in range(a.repeats):
        bare_dir, dag_dir = work / f"bare-{i}", work / f"harness-{i}"
        for d in (bare_dir, dag_dir):
            shutil.copytree(assets_dir / "assets", d / "assets")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", BARE, a.scale, str(bare_dir), a.experiment], cwd=ROOT, check=True)
        bare = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([*snakemake, *targets, "--cores", "1", "--quiet", "all", "--config", f"scale={a.scale}",
                        f"results_dir={dag_dir}"], cwd=ROOT, check=True)
        harness = time.perf_counter() - t0
        done = [json.loads(f.read_text())["seconds"] for f in sorted((dag_dir / "runs").glob("*/done.json"))]
        assert len(done) == n_runs, f"{len(done)} of {n_runs} runs done"
        compute = sum(d["distill"] + d["final_eval"] for d in done)
        tracking = sum(d.get("tracking_background", 0.0) for d in done)
        rows.append((bare, harness, compute, tracking))
        print(f"repeat {i}: bare {bare:7.1f} s | harness {harness:7.1f} s (in-job compute {compute:7.1f} s, "
              f"MLflow in its tracker process {tracking:5.1f} s) | vs bare {(harness - bare) / bare:+.3f} | "
              f"accounted {(harness - compute) / compute:+.3f}", flush=True)
    med = lambda xs: statistics.median(xs)  # noqa: E731
    print(f"\n{a.scale}/{a.experiment}: {n_runs} runs in {len(groups)} submitit job(s), one job at a time, "
          f"{a.repeats} repeat(s), medians:")
    print(f"bare training + final evaluation (one process): {med([r[0] for r in rows]):8.1f} s")
    print(f"through Snakemake + submitit + MLflow:          {med([r[1] for r in rows]):8.1f} s")
    print(f"harness overhead vs bare:  {med([(r[1] - r[0]) / r[0] for r in rows]):.3f} of the training time")
    print(f"harness overhead accounted: {med([(r[1] - r[2]) / r[2] for r in rows]):.3f} of the training time "
          f"measured inside the job")
    if not a.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
