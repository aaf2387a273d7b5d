# Aggregation into the paper's tables and figures, reading MLflow; one target per table/figure.
# Each is a submitit job (`aggregate` resources on SLURM) running workflow/report in its own process.

def experiment_inputs(experiment):
    files = SW.experiment_markers(experiment, R) + [f"{R}/tracking.json"]
    if experiment in SW.teacher_rows:
        files.append(f"{R}/teacher_rows/{experiment}.json")
    return files


if TABLES_HERE:
    rule aggregate_table:
        input: lambda w: experiment_inputs(w.table) + (dag.study_inputs(S) if w.table in TABLES_WITH_STUDY else [])
        output: f"{R}/tables/{{table}}.csv", f"{R}/tables/{{table}}.md", f"{R}/tables/{{table}}.tex"
        wildcard_constraints: table="|".join(TABLES_HERE)
        run:
            dag.launch_aggregate(S, SW, wildcards.table, wildcards.table, TRACKING_URI, f"{R}/tables")


for _figure in FIGURES_HERE:
    rule:
        name: f"aggregate_{_figure}"
        input: experiment_inputs(FIGURES[_figure][0])
        output: figure_files(_figure)
        params: figure=_figure
        run:
            dag.launch_aggregate(S, SW, params.figure, FIGURES[params.figure][0], TRACKING_URI, f"{R}/figures")


for _target in TABLES_HERE + FIGURES_HERE:  # `snakemake table1`, `snakemake figure2`, ...
    rule:
        name: _target
        input: table_files(_target) if _target in TABLES_HERE else figure_files(_target)
