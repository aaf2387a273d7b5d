# One rule per submitit job group of distillation runs (configs/scales/*.yaml: runs_per_job), and the
# teacher rows of each table. A run's done.json appears when it has ended (finished, diverged or collapsed), been
# evaluated and MLflow holds all of it; the group's marker (the rule's output) when every run of the group has one.

def job_resources(kind):
    """What each submitit job asks for (workflow/schema.py Resources), shown by `snakemake -n` as the rule's
    resources; Snakemake itself schedules by cores only (each rule just waits on its job)."""
    r = S.job_resources(kind)
    return dict(job_tasks=r.tasks_per_node, job_gpus=r.gpus_per_node, job_cpus_per_task=r.cpus_per_task,
                job_mem_gb=r.mem_gb, job_timeout_min=r.timeout_min)


for _group in SW.groups:
    rule:
        name: f"distill_{_group.replace('-', '_')}"
        input: SW.group_inputs(_group) + [f"{R}/tracking.json"]  # built assets, or the verified downloads
        output: SW.group_marker(_group, R)
        params: group=_group
        threads: 1
        resources: **job_resources("distill")
        priority: len(SW.groups[_group])  # longest jobs first, so that no long job ends up running alone
        run:
            dag.launch_group(S, SW, params.group, TRACKING_URI, output[0])


rule teacher_rows:
    input: lambda w: SW.teacher_row_inputs(w.experiment) + [f"{R}/tracking.json"]
    output: f"{R}/teacher_rows/{{experiment}}.json"
    wildcard_constraints: experiment="|".join(SW.teacher_rows) or "none"
    threads: 1
    resources: **job_resources("teacher_rows")
    run:
        dag.launch_teacher_rows(S, SW, wildcards.experiment, TRACKING_URI, output[0])
