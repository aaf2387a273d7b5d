"""Every training and evaluation job goes through submitit: on this machine (cluster='local') by default,
on SLURM with the slurm profile. Each run directory records its job id, so a DAG restarted while SLURM jobs
run waits for them instead of submitting duplicates."""
from __future__ import annotations

import json
import time
from pathlib import Path

from sim_core.files import atomic_write_json

LOCAL_POLL_S = 0.1  # a local job is a child process: checking it is cheap (submitit's own wait polls every 1 s)
ACTIVE_SLURM_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}


def _reattach(job_files, folder, cluster):
    """A still-running SLURM job recorded in one of the run directories, or None."""
    if cluster != "slurm":
        return None  # a local job died with the process that waited on it; the new job resumes its checkpoints
    import submitit
    for f in job_files:
        if Path(f).exists():
            info = json.loads(Path(f).read_text())
            if info.get("cluster") == "slurm":
                job = submitit.SlurmJob(folder=info["folder"], job_id=info["job_id"])
                if job.state in ACTIVE_SLURM_STATES:
                    return job
    return None


def slurm_parameters(r) -> dict:
    """submitit's SLURM parameters for a Resources entry (workflow/schema.py)."""
    params = dict(cpus_per_task=r.cpus_per_task, mem_gb=r.mem_gb, nodes=r.nodes)
    if r.gpus_per_node:
        params["slurm_gres"] = f"gpu:{r.gpu_type}:{r.gpus_per_node}" if r.gpu_type else f"gpu:{r.gpus_per_node}"
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(r, key):
            params[f"slurm_{key}"] = getattr(r, key)
    if r.sbatch_extra:
        params["slurm_additional_parameters"] = dict(r.sbatch_extra)
    if r.setup:
        params["slurm_setup"] = list(r.setup)
    return params


def submit_and_wait(fn, args: tuple, name: str, folder, cluster: str = "local", resources=None, job_files=()):
    """Run fn(*args) as a submitit job and return its result; a remote failure raises with its traceback."""
    import submitit
    folder = Path(folder)
    job = _reattach(job_files, folder, cluster)
    if job is None:
        r = resources
        ctor = {"slurm_max_num_timeout": r.max_requeues} if cluster == "slurm" and r is not None else {}
        ex = submitit.AutoExecutor(folder=folder, cluster=cluster, **ctor)
        params = dict(timeout_min=r.timeout_min if r else 60, name=name, tasks_per_node=r.tasks_per_node if r else 1)
        if cluster == "slurm" and r is not None:
            params.update(slurm_parameters(r))
        ex.update_parameters(**params)
        job = ex.submit(fn, *args)
        record = {"job_id": str(job.job_id), "cluster": cluster, "folder": str(folder.resolve()),
                  "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for f in job_files:
            Path(f).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(f, record)
    if cluster == "local":
        while not job.done():
            time.sleep(LOCAL_POLL_S)
    return job.results()[0]  # task 0's result (a multi-task job returns one per task)
