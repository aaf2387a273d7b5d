# The report page, results/report.html (workflow/report/html.py): every table and figure of the scale, the runs
# behind them with their provenance, and the preference study's answers. A submitit job like the aggregates
# (`aggregate` resources on SLURM), so this process imports neither pandas nor MLflow.

rule report_page:
    input:
        [f for t in TABLES_HERE for f in table_files(t)],
        [f for fig in FIGURES_HERE for f in figure_files(fig)],
        dag.study_inputs(S),
    output: f"{R}/report.html"
    run:
        from workflow.report.html import page_job
        dag.submit_aggregation(S, page_job, (R, dag.job_tracking_uri(S, TRACKING_URI), output[0], TABLES_HERE,
                                             FIGURES_HERE, dag.study_dir(S)), "report-page")
