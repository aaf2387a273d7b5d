# The paper's Tables 1-2 and Figure 2, regenerated: `snakemake --cores 2 all_tables` (toy scale, the default),
# `--config scale=smoke` for CI, `--profile slurm` on a cluster. Rules live in workflow/rules/.
import sys

from sim_core.config import ConfigError
from workflow import dag

try:
    S, SW, TRACKING_URI = dag.load(config)
except ConfigError as e:  # a bad sweep config fails here, before any job, with one line naming the key
    sys.stderr.write(f"error: {e}\n")
    sys.exit(2)

R = S.results_dir
TABLES = ["table1", "table2"]
FIGURES = {"figure2": ["figure2.png", "figure2.pdf"],
           "fid_convergence": ["figure_b6_fid_convergence.png", "figure_b6_fid_convergence.pdf"],
           "lr_sweep": ["lr_sweep.png", "lr_sweep.pdf", "lr_sweep.csv"]}


def table_files(t):
    return [f"{R}/tables/{t}.{ext}" for ext in ("csv", "md", "tex")]


def figure_files(f):
    return [f"{R}/figures/{name}" for name in FIGURES[f]]


rule all_tables:
    input:
        [f for t in TABLES if t in S.experiments for f in table_files(t)],
        [f for fig, exp in (("figure2", "figure2"), ("fid_convergence", "figure2"), ("lr_sweep", "lr_sweep"))
         if exp in S.experiments for f in figure_files(fig)],


include: "workflow/rules/assets.smk"
include: "workflow/rules/paper_assets.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/aggregate.smk"
