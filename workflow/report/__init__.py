"""The report: the paper's tables and figures regenerated from MLflow, with the paper's numbers beside ours.

Tables are data: ``workflow/paper/<table>.yaml`` names the paper's CSV, its metric columns, which paper row each
of our rows reproduces and the claims to check (tables.py reads them; a new table is a new file). Figures are code
(figures.py). Imports nothing heavy: the Snakefile reads the targets from here.
"""
from __future__ import annotations

from pathlib import Path

import yaml

PAPER_DIR = Path(__file__).resolve().parent.parent / "paper"
TABLES = tuple(sorted(p.stem for p in PAPER_DIR.glob("table*.yaml")))
# tables with a column a preference study fills (workflow/study): they are made again when its answers change
TABLES_WITH_STUDY = tuple(t for t in TABLES if "study" in (yaml.safe_load((PAPER_DIR / f"{t}.yaml").read_text()) or {}))
# figure target -> (the experiment whose runs it draws, the files it writes into <results>/figures/)
FIGURES = {
    "figure2": ("figure2", ("figure2.png", "figure2.pdf")),
    "fid_convergence": ("figure2", ("figure_b6_fid_convergence.png", "figure_b6_fid_convergence.pdf")),
    "lr_sweep": ("lr_sweep", ("lr_sweep.png", "lr_sweep.pdf", "lr_sweep.csv")),
    "figure3": ("table3", ("figure3.png", "figure3.pdf")),
}
EXPERIMENTS = tuple(dict.fromkeys(TABLES + tuple(exp for exp, _ in FIGURES.values())))
PAGE = "report"  # the report page of every table and figure (html.py): <results>/report.html
TARGETS = TABLES + tuple(FIGURES) + (PAGE,)
