"""Command line: one table or figure from the runs a manifest names, or the report page of a results folder.

    python -m workflow.report TARGET --manifest M.json --tracking-uri URI --out-dir DIR
    python -m workflow.report report --results DIR [--tracking-uri URI] [--out FILE] [--study DIR] [--mlflow-ui URL]

TARGET: a table (workflow/paper/<table>.yaml) or a figure (figure2, fid_convergence, lr_sweep, figure3). `report`
writes DIR/report.html (html.py) from the tables, figures and manifests under DIR, reading MLflow at URI (default
DIR's own store, sqlite:///DIR/mlflow.db). Bad input prints a one-line error on stderr and exits 2, writing nothing:
every output is written atomically, after all inputs are read.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim_core.errors import EXIT_BAD_INPUT
from workflow.report import PAGE, TABLES, TARGETS


def run_target(target: str, manifest, tracking_uri: str, out_dir, study_dir=None) -> list[Path]:
    """Write one target's files; returns their paths."""
    if target in TABLES:
        from workflow.report.tables import write_table
        return write_table(target, manifest, tracking_uri, out_dir, study_dir)
    from workflow.report import figures
    writers = {"figure2": figures.figure2, "fid_convergence": figures.fid_convergence,
               "lr_sweep": figures.lr_sweep_figure, "figure3": figures.figure3}
    return writers[target](manifest, tracking_uri, out_dir)


def report_page(args) -> Path:
    """The report page of --results (html.py); its own MLflow store unless --tracking-uri names another."""
    from sim_core.tracking.client import default_tracking_uri
    from workflow.report.html import write_page
    if args.results is None:
        raise ValueError("report needs --results (the results folder the DAG wrote)")
    results = Path(args.results)
    uri = args.tracking_uri or default_tracking_uri(results)
    return write_page(args.out or results / "report.html", results, uri, study_dir=args.study,
                      ui=args.mlflow_ui)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are ValueErrors (so the CLI prints one line)."""

    def error(self, message):
        raise ValueError(message)


def main(argv=None) -> int:
    parser = _Parser(prog="python -m workflow.report", description=__doc__.splitlines()[0])
    parser.add_argument("target", help="one of: " + ", ".join(TARGETS))
    parser.add_argument("--manifest", help="a table or figure: the run records (workflow/dag.py write_manifest)")
    parser.add_argument("--tracking-uri")
    parser.add_argument("--out-dir", help="a table or figure: where its files go")
    parser.add_argument("--study", help="a preference study folder (workflow/study) for a table's study column; "
                                        "report: the study it shows (default DIR/study)")
    parser.add_argument("--results", help="report: the results folder the DAG wrote")
    parser.add_argument("--out", help="report: the page (default DIR/report.html)")
    parser.add_argument("--mlflow-ui", help="report: the MLflow UI the run links open (default: an http tracking URI "
                                            "itself, else http://127.0.0.1:5000, where `mlflow ui` serves)")
    try:
        args = parser.parse_args(argv)
        if args.target not in TARGETS:
            raise ValueError(f"unknown target {args.target!r}; choose one of {', '.join(TARGETS)}")
        if args.target == PAGE:
            written = [report_page(args)]
        else:
            lacking = [f"--{k.replace('_', '-')}" for k in ("manifest", "tracking_uri", "out_dir")
                       if getattr(args, k) is None]
            if lacking:
                raise ValueError(f"{args.target} needs {', '.join(lacking)}")
            from workflow.report.manifest import load_manifest
            written = run_target(args.target, load_manifest(args.manifest), args.tracking_uri, args.out_dir,
                                 args.study)
    except ValueError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return EXIT_BAD_INPUT
    print("\n".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
