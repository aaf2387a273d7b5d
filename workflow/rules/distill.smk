# One rule per submitit job group of distillation runs (configs/scales/*.yaml: runs_per_job), and the
# teacher rows of each table. A run's done.json appears when it has finished (or diverged) and been evaluated.

def group_inputs(group):
    needed = {SW.runs[n].config["testbed"]["teacher"] for n in SW.groups[group]}
    needed |= {SW.runs[n].config["testbed"].get("classifier") for n in SW.groups[group]} - {None}
    if any(SW.runs[n].config["testbed"]["kind"] == "cifar10" for n in SW.groups[group]):
        return [f"{R}/assets/verified.json", f"{R}/tracking.json"]  # downloaded files: checked, not built
    return sorted(needed) + [f"{R}/tracking.json"]


def job_resources(kind):
    """What each submitit job asks for (workflow/schema.py Resources), shown by `snakemake -n` as the rule's
    resources; Snakemake itself schedules by cores only (each rule just waits on its job)."""
    r = S.job_resources(kind)
    return dict(job_tasks=r.tasks_per_node, job_gpus=r.gpus_per_node, job_cpus_per_task=r.cpus_per_task,
                job_mem_gb=r.mem_gb, job_timeout_min=r.timeout_min)


for _group in SW.groups:
    rule:
        name: f"distill_{_group.replace('-', '_')}"
        input: group_inputs(_group)
        output: SW.group_done_files(_group)
        params: group=_group
        threads: 1
        resources: **job_resources("distill")
        priority: len(SW.groups[_group])  # longest jobs first, so that no long job ends up running alone
        run:
            dag.launch_group(S, SW, params.group, TRACKING_URI)


def teacher_row_inputs(experiment):
    rows = SW.teacher_rows[experiment]
    if any(r["testbed_config"]["kind"] == "cifar10" for r in rows):
        return [f"{R}/assets/verified.json", f"{R}/tracking.json"]
    return sorted({r[k] for r in rows for k in ("teacher", "classifier") if r[k]}) + [f"{R}/tracking.json"]


rule teacher_rows:
    input: lambda w: teacher_row_inputs(w.experiment)
    output: f"{R}/teacher_rows/{{experiment}}.json"
    wildcard_constraints: experiment="table1|table2"
    threads: 1
    resources: **job_resources("teacher_rows")
    run:
        dag.launch_teacher_rows(S, SW, wildcards.experiment, TRACKING_URI, output[0])
