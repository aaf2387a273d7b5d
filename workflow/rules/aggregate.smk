# Aggregation into the paper's tables and figures, reading MLflow; one target per table/figure.
# Each is a submitit job (`aggregate` resources on SLURM) running workflow/aggregate.py in its own process.

def experiment_inputs(experiment):
    files = SW.done_files(experiment) + [f"{R}/tracking.json"]
    if experiment in SW.teacher_rows:
        files.append(f"{R}/teacher_rows/{experiment}.json")
    return files


def aggregate(target, experiment, out_dir):
    dag.launch_aggregate(S, SW, target, experiment, TRACKING_URI, out_dir)


rule aggregate_table:
    input: lambda w: experiment_inputs(w.table)
    output: f"{R}/tables/{{table}}.csv", f"{R}/tables/{{table}}.md", f"{R}/tables/{{table}}.tex"
    wildcard_constraints: table="table1|table2"
    run:
        aggregate(wildcards.table, wildcards.table, f"{R}/tables")


rule aggregate_figure2:
    input: experiment_inputs("figure2")
    output: figure_files("figure2")
    run:
        aggregate("figure2", "figure2", f"{R}/figures")


rule aggregate_fid_convergence:
    input: experiment_inputs("figure2")
    output: figure_files("fid_convergence")
    run:
        aggregate("fid_convergence", "figure2", f"{R}/figures")


rule aggregate_lr_sweep:
    input: experiment_inputs("lr_sweep")
    output: figure_files("lr_sweep")
    run:
        aggregate("lr_sweep", "lr_sweep", f"{R}/figures")


rule table1:
    input: table_files("table1")

rule table2:
    input: table_files("table2")

rule figure2:
    input: figure_files("figure2")

rule fid_convergence:
    input: figure_files("fid_convergence")

rule lr_sweep:
    input: figure_files("lr_sweep")
