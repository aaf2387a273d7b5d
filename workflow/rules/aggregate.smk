# Aggregation into the paper's tables and figures, reading MLflow; one target per table/figure.

def experiment_inputs(experiment):
    files = SW.done_files(experiment) + [f"{R}/tracking.json"]
    if experiment in SW.teacher_rows:
        files.append(f"{R}/teacher_rows/{experiment}.json")
    return files


rule aggregate_table:
    input: lambda w: experiment_inputs(w.table)
    output: f"{R}/tables/{{table}}.csv", f"{R}/tables/{{table}}.md", f"{R}/tables/{{table}}.tex"
    wildcard_constraints: table="table1|table2"
    run:
        from workflow import aggregate
        records = dag.write_manifest(S, SW, wildcards.table, f"{R}/manifests/{wildcards.table}.json")
        aggregate.tables(wildcards.table, records, TRACKING_URI, f"{R}/tables")


rule aggregate_figure2:
    input: experiment_inputs("figure2")
    output: figure_files("figure2")
    run:
        from workflow import aggregate
        records = dag.write_manifest(S, SW, "figure2", f"{R}/manifests/figure2.json")
        aggregate.figure2(records, TRACKING_URI, f"{R}/figures")


rule aggregate_fid_convergence:
    input: experiment_inputs("figure2")
    output: figure_files("fid_convergence")
    run:
        from workflow import aggregate
        records = dag.write_manifest(S, SW, "figure2", f"{R}/manifests/fid_convergence.json")
        aggregate.fid_convergence(records, TRACKING_URI, f"{R}/figures")


rule aggregate_lr_sweep:
    input: experiment_inputs("lr_sweep")
    output: figure_files("lr_sweep")
    run:
        from workflow import aggregate
        records = dag.write_manifest(S, SW, "lr_sweep", f"{R}/manifests/lr_sweep.json")
        aggregate.lr_sweep_figure(records, TRACKING_URI, f"{R}/figures")


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
