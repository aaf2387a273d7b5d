"""Snakemake + submitit overhead per job: the local executor vs SLURM.

Builds a throwaway Snakefile of N independent rules, each submitting one trivial job (it returns its pid)
through workflow.launch.submit_and_wait exactly as the project's rules do, and runs it with --cores 1 (one job
at a time) once per executor. Prints seconds per job for each and their ratio. SLURM needs a reachable
controller (scripts/slurm_cluster.sh up; eval "$(scripts/slurm_cluster.sh env)").

    .venv/bin/python benchmarks/bench_job_overhead.py [--jobs 8] [--executors local slurm]
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

SNAKEFILE = """
import os, sys
sys.path.insert(0, {root!r})
from workflow.launch import submit_and_wait
N = int(config["jobs"])

rule all:
    input: [f"out/{{i}}.txt" for i in range(N)]

rule one:
    output: "out/{{i}}.txt"
    run:
        pid = submit_and_wait(os.getpid, (), f"bench-{{wildcards.i}}", "submitit", config["executor"])
        open(output[0], "w").write(str(pid))
"""


def run(executor: str, jobs: int, work: Path) -> float:
    d = work / executor
    d.mkdir(parents=True)
    (d / "Snakefile").write_text(SNAKEFILE.format(root=str(ROOT)))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--force-use-threads", "--quiet",
                        "all", "--config", f"executor={executor}", f"jobs={jobs}"], cwd=d,
                       capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"error: the {executor} run failed: {p.stderr.strip().splitlines()[-1] if p.stderr else p.returncode}")
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--executors", nargs="+", default=["local", "slurm"], choices=["local", "slurm"])
    a = ap.parse_args()
    if "slurm" in a.executors and shutil.which("sbatch") is None:
        sys.exit("error: sbatch not found: start a cluster (scripts/slurm_cluster.sh up) or use --executors local")
    work = Path(tempfile.mkdtemp(prefix="bench_jobs_"))
    try:
        per_job = {}
        for ex in a.executors:
            total = run(ex, a.jobs, work)
            per_job[ex] = total / a.jobs
            print(f"{ex:6s}: {a.jobs} trivial jobs one at a time in {total:6.1f} s = {per_job[ex]:5.2f} s per job "
                  f"(Snakemake start included once)", flush=True)
        if len(per_job) == 2:
            print(f"ratio slurm / local per job: {per_job['slurm'] / per_job['local']:.2f}")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
