"""Command line: one table or figure from the runs a manifest names.

    python -m workflow.report TARGET --manifest M.json --tracking-uri URI --out-dir DIR

TARGET: a table (workflow/paper/<table>.yaml) or a figure (figure2, fid_convergence, lr_sweep, figure3). Bad input
prints a one-line error on stderr and exits 2, writing nothing: every output is written atomically, after all inputs
are read.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim_core.errors import EXIT_BAD_INPUT
from workflow.report import TABLES, TARGETS


def run_target(target: str, manifest, tracking_uri: str, out_dir, study_dir=None) -> list[Path]:
    """Write one target's files; returns their paths."""
    if target in TABLES:
        from workflow.report.tables import write_table
        return write_table(target, manifest, tracking_uri, out_dir, study_dir)
    from workflow.report import figures
    writers = {"figure2": figures.figure2, "fid_convergence": figures.fid_convergence,
               "lr_sweep": figures.lr_sweep_figure, "figure3": figures.figure3}
    return writers[target](manifest, tracking_uri, out_dir)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are ValueErrors (so the CLI prints one line)."""

    def error(self, message):
        raise ValueError(message)


def main(argv=None) -> int:
    parser = _Parser(prog="python -m workflow.report", description=__doc__.splitlines()[0])
    parser.add_argument("target", help="one of: " + ", ".join(TARGETS))
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--study", help="a preference study folder (workflow/study) for a table's study column")
    try:
        args = parser.parse_args(argv)
        if args.target not in TARGETS:
            raise ValueError(f"unknown target {args.target!r}; choose one of {', '.join(TARGETS)}")
        from workflow.report.manifest import load_manifest
        written = run_target(args.target, load_manifest(args.manifest), args.tracking_uri, args.out_dir, args.study)
    except ValueError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return EXIT_BAD_INPUT
    print("\n".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
