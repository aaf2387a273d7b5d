# `snakemake study`: Appendix B.4's preference study from the runs of the table with a study column (Table 3),
# written to <results>/study once. Not part of all_tables: answers come from people. The study folder is not a
# Snakemake output (Snakemake deletes outputs before it reruns a job, and the folder holds the answers): the rule
# writes a receipt, and the job leaves a study of the same runs as it is and refuses to replace one of other runs.

STUDY_TABLES = [t for t in TABLES_WITH_STUDY if t in TABLES_HERE]

if STUDY_TABLES:
    rule study:
        input: experiment_inputs(STUDY_TABLES[0])
        output: f"{R}/manifests/study-{STUDY_TABLES[0]}.built.json"
        params: table=STUDY_TABLES[0]
        run:
            dag.launch_study(S, SW, params.table, TRACKING_URI, output[0])
