# One rule per submitit job group of distillation runs (configs/scales/*.yaml: runs_per_job), and the
# teacher rows of each table. A run's done.json appears when it has finished (or diverged) and been evaluated.

def group_inputs(group):
    needed = {SW.runs[n].config["testbed"]["teacher"] for n in SW.groups[group]}
    needed |= {SW.runs[n].config["testbed"].get("classifier") for n in SW.groups[group]} - {None}
    return sorted(needed) + [f"{R}/tracking.json"]


for _group in SW.groups:
    rule:
        name: f"distill_{_group.replace('-', '_')}"
        input: group_inputs(_group)
        output: SW.group_done_files(_group)
        params: group=_group
        threads: 1
        priority: len(SW.groups[_group])  # longest jobs first, so that no long job ends up running alone
        run:
            dag.launch_group(S, SW, params.group, TRACKING_URI)


rule teacher_rows:
    input:
        lambda w: sorted({r[k] for r in SW.teacher_rows[w.experiment] for k in ("teacher", "classifier") if r[k]})
        + [f"{R}/tracking.json"]
    output: f"{R}/teacher_rows/{{experiment}}.json"
    wildcard_constraints: experiment="table1|table2"
    threads: 1
    run:
        dag.launch_teacher_rows(S, SW, wildcards.experiment, TRACKING_URI, output[0])
