# The paper's tables and figures, regenerated: `snakemake --cores 2 all_tables` (toy scale, the default),
# `--config scale=smoke` for CI, `--profile slurm` on a cluster. Rules live in workflow/rules/; the tables and
# figures they write are listed in workflow/report/__init__.py.
import sys

from sim_core.errors import EXIT_BAD_INPUT, ConfigError
from workflow import dag
from workflow.report import FIGURES, TABLES, TABLES_WITH_STUDY

try:
    S, SW, TRACKING_URI = dag.load(config)
except ConfigError as e:  # a bad sweep config fails here, before any job, with one line naming the key
    sys.stderr.write(f"error: {e}\n")
    sys.exit(EXIT_BAD_INPUT)

R = S.results_dir
TABLES_HERE = [t for t in TABLES if t in S.experiments]
FIGURES_HERE = [f for f, (experiment, _) in FIGURES.items() if experiment in S.experiments]


def table_files(t):
    return [f"{R}/tables/{t}.{ext}" for ext in ("csv", "md", "tex")]


def figure_files(f):
    return [f"{R}/figures/{name}" for name in FIGURES[f][1]]


rule all_tables:
    input:
        [f for t in TABLES_HERE for f in table_files(t)],
        [f for fig in FIGURES_HERE for f in figure_files(fig)],
        f"{R}/report.html",


include: "workflow/rules/assets.smk"
include: "workflow/rules/paper_assets.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/study.smk"
