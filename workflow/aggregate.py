"""Aggregate finished distillation runs (tracked in MLflow) into the paper's Tables 1-2 and Figure 2,
the Appendix B.6 FID-convergence figure and a learning-rate sweep, with the paper's numbers side by side.

Runs are named by a JSON manifest (a list of run records, see `validate_records`); each record's MLflow run
gives the status tags and metric histories. Every output is written atomically, and only after all inputs
were read, so bad input writes nothing.

CLI: python -m workflow.aggregate {table1|table2|figure2|fid_convergence|lr_sweep}
         --manifest M.json --tracking-uri URI --out-dir DIR
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from sim_core.checkpoint import atomic_savefig, atomic_write_text

PAPER_DIR = Path(__file__).resolve().parent / "paper"
PAPER_CSV = {"table1": "table1_cifar10_uncond.csv", "table2": "table2_cifar10_cond.csv"}
PAPER_TITLE = {"table1": "Table 1 (paper: CIFAR-10 unconditional)", "table2": "Table 2 (paper: CIFAR-10 class-conditional)"}
from workflow.schema import EXPERIMENTS  # noqa: E402  (one list of experiment names)
METHODS = ("sim", "sid", "di", "teacher")
REQUIRED_KEYS = ("name", "experiment", "label", "method", "seed", "run_id")
# testbed -> (headline metric, second metric), logged as eval/<key> and final/<key>
METRICS = {"digits": ("fid", "isc"), "digits_cond": ("fid", "isc"), "gmm": ("fd", "modes_covered"),
           "cifar10": ("fid", "isc"), "cifar10_cond": ("fid", "isc")}
METRIC_NAMES = {"fid": "FID", "isc": "Inception Score", "fd": "FD", "modes_covered": "modes covered"}
LOWER_IS_BETTER = {"fid", "fd", "kid", "mode_mass_tv"}
# our label -> (paper method, reproduced_by_authors or None for either); teacher rows map to EDM at equal NFE
LABEL_TO_PAPER = {
    "table1": {"SIM": ("SIM (ours)", "yes"), "SiD (alpha=1.0)": ("SiD (alpha=1.0)", "yes"),
               "SiD (alpha=1.2)": ("SiD (alpha=1.2)", "no"), "DI": ("DI", "yes")},
    "table2": {"SIM": ("SIM (ours)", "yes"), "SiD (alpha=1.0)": ("SiD (alpha=1.0)", "yes"),
               "SiD (alpha=1.2)": ("SiD (alpha=1.2)", "no"), "DI": ("Diff-Instruct", None)},
}
# the paper's claims per table: SIM has a lower FID than each of these labels
CLAIMS = {"table1": ("SiD (alpha=1.0)", "DI"), "table2": ("SiD (alpha=1.0)",)}
COLUMNS = ["source", "group", "method", "nfe", "reproduced_by_authors", "paper_fid", "paper_row", "fid",
           "fid_mean", "fid_ci95", "n_seeds", "n_finished", "runs", "is", "is_mean", "is_ci95",
           "scale", "dataset", "protocol", "flag"]
DISPLAY = [("source", "Source"), ("method", "Method"), ("nfe", "NFE"), ("paper_fid", "Paper FID"),
           ("reproduced_by_authors", "Repro. by SIM authors"), ("paper_row", "Paper row compared"),
           ("fid", "Our FID (mean ± 95% CI)"), ("n_seeds", "Seeds"), ("runs", "Runs"),
           ("is", "Our IS (mean ± 95% CI)"), ("scale", "Scale"), ("dataset", "Dataset"),
           ("protocol", "Protocol"), ("flag", "Flag")]
FAMILY_COLOUR = {"sim": 0, "sid": 1, "di": 2, "teacher": 7}  # index into seaborn's "deep" palette
LINESTYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (6, 3))]
BAND = "min-max over seeds"
TEX_ESCAPES = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
               "±": r"$\pm$", "α": r"$\alpha$", "×": r"$\times$"}


# ----------------------------------------------------------------------------------------------- manifest

def load_manifest(path) -> list[dict]:
    """Read and validate a manifest: a JSON list of run records."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest not found: {path}")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"manifest {path} is not valid JSON: {exc}") from None
    validate_records(records)
    return records


def validate_records(records) -> None:
    """Check run records: a list of dicts with the interface's keys and known experiment/method/testbed."""
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError("manifest must be a JSON list of run records (objects)")
    seen = set()
    for i, rec in enumerate(records):
        missing = [k for k in REQUIRED_KEYS if k not in rec]
        if missing:
            raise ValueError(f"manifest record {i} lacks {', '.join(missing)}")
        if rec["experiment"] not in EXPERIMENTS:
            raise ValueError(f"record {rec['name']!r}: unknown experiment {rec['experiment']!r}")
        if rec["method"] not in METHODS:
            raise ValueError(f"record {rec['name']!r}: unknown method {rec['method']!r}")
        if rec.get("testbed") not in (None, *METRICS):
            raise ValueError(f"record {rec['name']!r}: unknown testbed {rec['testbed']!r}")
        if rec.get("lr") is not None and not isinstance(rec["lr"], (int, float)):
            raise ValueError(f"record {rec['name']!r}: lr must be a number or null, got {rec['lr']!r}")
        if (rec["experiment"], rec["name"]) in seen:
            raise ValueError(f"record name {rec['name']!r} repeats in experiment {rec['experiment']}")
        seen.add((rec["experiment"], rec["name"]))


def select(records, experiment: str, need_lr: bool = False) -> list[dict]:
    """The records of one experiment (manifest order); ValueError when there are none."""
    validate_records(records)
    chosen = [r for r in records if r["experiment"] == experiment]
    if not chosen:
        raise ValueError(f"manifest has no runs for experiment {experiment!r}")
    if need_lr and any(r.get("lr") is None for r in chosen):
        raise ValueError(f"every {experiment} record needs an lr (record {next(r['name'] for r in chosen if r.get('lr') is None)!r} has none)")
    return chosen


def by_label(records) -> dict[str, list[dict]]:
    """Group records by label, keeping the manifest's order of first appearance."""
    groups: dict[str, list[dict]] = {}
    for rec in records:
        groups.setdefault(rec["label"], []).append(rec)
    return groups


def metric_keys(records) -> tuple[str, str]:
    """(headline, second) metric keys for the records' testbed (digits when none is given)."""
    testbeds = {r.get("testbed") or "digits" for r in records}
    if len({METRICS[t] for t in testbeds}) > 1:
        raise ValueError(f"runs mix testbeds with different metrics: {sorted(testbeds)}")
    return METRICS[testbeds.pop()]


# ------------------------------------------------------------------------------------------------- MLflow

def _check_store(tracking_uri: str) -> None:
    """Refuse a local tracking store that does not exist (MLflow would silently create an empty one)."""
    if not isinstance(tracking_uri, str) or not tracking_uri:
        raise ValueError("tracking URI must be a non-empty string")
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
    elif tracking_uri.startswith("file://") or "://" not in tracking_uri:
        path = Path(tracking_uri.removeprefix("file://"))
    else:
        return
    if not path.exists():
        raise ValueError(f"MLflow tracking store not found: {tracking_uri}")


def _finite(value) -> bool:
    """Finite and not MLflow's stand-in for infinity (it stores inf as the largest double)."""
    return value is not None and math.isfinite(value) and abs(value) < 1e300


class RunReader:
    """Reads runs from one MLflow tracking store, caching each run and metric history by run_id."""

    def __init__(self, tracking_uri: str):
        _check_store(tracking_uri)
        from mlflow import MlflowClient
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._runs: dict[str, dict] = {}
        self._histories: dict[tuple[str, str], list[tuple[int, float]]] = {}

    def run(self, run_id: str) -> dict:
        """status ("finished", "diverged", "failed", or "unknown" without the tag), diverged_at, metric keys."""
        if run_id not in self._runs:
            from mlflow.exceptions import MlflowException
            try:
                run = self.client.get_run(str(run_id))
            except MlflowException:
                raise ValueError(f"run_id {run_id!r} not found in MLflow store {self.tracking_uri}") from None
            tags = run.data.tags
            step = tags.get("diverged_at")
            self._runs[run_id] = dict(status=tags.get("status", "unknown").strip().lower(),
                                      diverged_at=int(float(step)) if step not in (None, "") else None,
                                      keys=set(run.data.metrics))
        return self._runs[run_id]

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """[(step, value)] sorted by step; non-finite values become NaN."""
        if (run_id, key) not in self._histories:
            hist = []
            if key in self.run(run_id)["keys"]:
                metrics = sorted(self.client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
                hist = [(m.step, m.value if _finite(m.value) else math.nan) for m in metrics]
            self._histories[(run_id, key)] = hist
        return self._histories[(run_id, key)]

    def headline(self, run_id: str, key: str) -> float:
        """final/<key> if logged, else the last eval/<key>; NaN when neither exists."""
        for name in (f"final/{key}", f"eval/{key}"):
            hist = self.history(run_id, name)
            if hist:
                return hist[-1][1]
        return math.nan


# --------------------------------------------------------------------------------------------- statistics

def mean_ci(values) -> tuple[float, float, int]:
    """(mean, half-width of the 95% t-interval, n); the half-width is NaN for fewer than two values."""
    from scipy import stats
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(values[0]), math.nan, 1
    half = stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return float(values.mean()), float(half), n


def summarize_label(records, reader: RunReader, key: str) -> dict:
    """A label's seeds: headline `key` of its finished seeds, diverged steps, and other statuses counted."""
    values, diverged, others = [], [], Counter()
    for rec in records:
        run = reader.run(rec["run_id"])
        if run["status"] == "diverged":
            diverged.append(run["diverged_at"])
        elif run["status"] == "finished":
            value = reader.headline(rec["run_id"], key)
            if _finite(value):
                values.append(value)
            else:
                others[f"without {key}"] += 1
        else:
            others[run["status"]] += 1
    mean, half, n = mean_ci(values)
    return dict(values=values, mean=mean, half=half, n=n, n_seeds=len(records), diverged=diverged, others=others)


def _steps_text(steps) -> str:
    """'step 120' or 'steps 120, 340' ('?' for a diverged run without its step)."""
    listed = ", ".join("?" if s is None else str(s) for s in steps)
    return f"step{'s' if len(steps) > 1 else ''} {listed}"


def runs_text(summary: dict) -> str:
    """How a label's seeds ended, e.g. '3/3 finished' or '2/3 diverged (steps 120, 340); 1/3 failed'."""
    n, parts = summary["n_seeds"], []
    if summary["diverged"]:
        parts.append(f"{len(summary['diverged'])}/{n} diverged ({_steps_text(summary['diverged'])})")
    parts += [f"{k}/{n} {status}" for status, k in summary["others"].items()]
    return "; ".join(parts) or f"{n}/{n} finished"


def _num(x: float, like: float | None = None) -> str:
    """A number with 2 decimals, or 3 significant digits for small magnitudes (of `like` when given)."""
    ref = abs(x if like is None else like)
    decimals = 2 if ref >= 0.1 or ref == 0 or not math.isfinite(ref) else min(6, 2 - math.floor(math.log10(ref)))
    return f"{x:.{decimals}f}"


def stat_text(summary: dict) -> str:
    """'2.10 ± 0.25', '2.10 (n=1)', 'diverged at step 120', 'failed', or how the seeds ended."""
    if summary["n"] >= 2:
        return f"{_num(summary['mean'])} ± {_num(summary['half'], summary['mean'])}"
    if summary["n"] == 1:
        return f"{_num(summary['mean'])} (n=1)"
    if summary["diverged"] and not summary["others"]:
        return f"diverged at {_steps_text(summary['diverged'])}"
    if set(summary["others"]) == {"failed"} and not summary["diverged"]:
        return "failed"
    return f"no finished seeds ({runs_text(summary)})"


PROTOCOL_RULES = ("EDM protocol: min of 3 seed ranges", "SiD protocol: mean ± std of 10 trials")  # workflow/sweep.py


def protocol_text(records, reader: "RunReader", summary: dict) -> str:
    """A single CIFAR-10 run's FID the way its protocol reports it, naming the protocol in the cell:
    '2.06 ± 0.02 (SiD protocol: mean ± std of 10 trials)' or '1.98 (EDM protocol: min of 3 seed ranges)';
    '' where the records carry no FID protocol (toy scales: mean ± 95% CI over seeds)."""
    rules = {rule for rec in records for rule in PROTOCOL_RULES if rule in rec.get("protocol", "")}
    if summary["n"] != 1 or len(rules) != 1 or len(records) != 1:
        return ""
    rule = rules.pop()
    if rule.startswith("EDM"):
        return f"{_num(summary['mean'])} ({rule})"
    spread = reader.headline(records[0]["run_id"], "fid_spread")
    return f"{_num(summary['mean'])} ± {_num(spread, summary['mean'])} ({rule})"


def claim_flag(sim: dict, other: dict, other_label: str) -> str:
    """The paper's claim 'SIM has lower FID than <other_label>', checked on our means and 95% CIs."""
    if sim is None or sim["n"] == 0:
        return f"not checked vs {other_label}: no finished SIM seeds"
    if other is None or other["n"] == 0:
        return f"not checked vs {other_label}: no finished {other_label} seeds"
    if sim["mean"] > other["mean"]:
        if math.isnan(sim["half"]) or math.isnan(other["half"]):
            return f"contradicts paper: SIM worse than {other_label} (too few seeds for a 95% CI)"
        if sim["mean"] - sim["half"] > other["mean"] + other["half"]:
            return f"contradicts paper: SIM worse than {other_label}, 95% CIs disjoint"
        return f"contradicts paper: SIM worse than {other_label} (95% CIs overlap: not significant)"
    if sim["mean"] == other["mean"]:
        return f"contradicts paper: SIM no better than {other_label}"
    if math.isnan(sim["half"]) or math.isnan(other["half"]):
        return f"consistent but not significant: SIM better than {other_label}, too few seeds for a 95% CI"
    if sim["mean"] + sim["half"] >= other["mean"] - other["half"]:
        return f"consistent but not significant: SIM better than {other_label}, 95% CIs overlap"
    return f"agrees with paper: SIM better than {other_label}, 95% CIs disjoint"


# ------------------------------------------------------------------------------------------------- tables

def read_paper(which: str) -> pd.DataFrame:
    """The paper's table as data (first line of the CSV is a '# Source' comment)."""
    return pd.read_csv(PAPER_DIR / PAPER_CSV[which], comment="#")


def paper_match(which: str, label: str, records, paper: pd.DataFrame):
    """The paper row our label reproduces (LABEL_TO_PAPER; teachers: EDM at the same NFE), or None."""
    if all(r["method"] == "teacher" for r in records):
        nfes = {r.get("nfe") for r in records}
        rows = paper[(paper["method"] == "EDM") & (paper["nfe"] == nfes.pop())] if len(nfes) == 1 else paper.iloc[:0]
    elif label in LABEL_TO_PAPER[which]:
        method, reproduced = LABEL_TO_PAPER[which][label]
        rows = paper[paper["method"] == method]
        if reproduced is not None:
            rows = rows[rows["reproduced_by_authors"] == reproduced]
    else:
        return None
    return rows.iloc[0] if len(rows) else None


def _joined(records, key: str) -> str:
    """The distinct values of one record field, joined with '; '."""
    return "; ".join(dict.fromkeys(str(r[key]) for r in records if r.get(key) is not None))


def _paper_rows(paper: pd.DataFrame) -> list[dict]:
    """The paper's rows in table form."""
    return [dict(source="paper", group=row["group"], method=row["method"], nfe=str(row["nfe"]),
                 reproduced_by_authors=row["reproduced_by_authors"], paper_fid=float(row["fid"]))
            for _, row in paper.iterrows()]


def _our_row(which: str, label: str, records, reader: RunReader, paper: pd.DataFrame) -> tuple[dict, dict]:
    """One reproduced row (and its FID summary, for the flags)."""
    fid_key, is_key = metric_keys(records)
    fid, isc = summarize_label(records, reader, fid_key), summarize_label(records, reader, is_key)
    match = paper_match(which, label, records, paper)
    fid_text = protocol_text(records, reader, fid) or stat_text(fid)
    row = dict(source="ours", group="reproduced here", method=label, nfe=_joined(records, "nfe"),
               reproduced_by_authors="", paper_fid=math.nan if match is None else float(match["fid"]),
               paper_row="" if match is None else f"{match['method']} (NFE {match['nfe']}"
               f"{', reproduced by SIM authors' if match['reproduced_by_authors'] == 'yes' else ''})",
               fid=fid_text, fid_mean=fid["mean"], fid_ci95=fid["half"], n_seeds=fid["n_seeds"],
               n_finished=fid["n"], runs=runs_text(fid), scale=_joined(records, "scale"),
               dataset=_joined(records, "dataset"), protocol=_joined(records, "protocol"), flag="")
    row.update({"is": stat_text(isc) if isc["n"] else "", "is_mean": isc["mean"], "is_ci95": isc["half"]})
    return row, fid


def build_table(which: str, manifest_records, tracking_uri: str) -> pd.DataFrame:
    """The paper's rows, then one reproduced row per label with FID/IS mean ± 95% CI and the claim flags."""
    if which not in PAPER_CSV:
        raise ValueError(f"unknown table {which!r}; choose table1 or table2")
    records = select(manifest_records, which)
    paper, reader = read_paper(which), RunReader(tracking_uri)
    ours = {label: _our_row(which, label, recs, reader, paper) for label, recs in by_label(records).items()}
    if "SIM" in ours:
        ours["SIM"][0]["flag"] = "; ".join(claim_flag(ours["SIM"][1], ours.get(o, (None, None))[1], o)
                                           for o in CLAIMS[which])
    frame = pd.DataFrame(_paper_rows(paper) + [row for row, _ in ours.values()], columns=COLUMNS)
    frame[["n_seeds", "n_finished"]] = frame[["n_seeds", "n_finished"]].astype("Int64")
    return frame


def caption(which: str, frame: pd.DataFrame) -> str:
    """The one-line caption: toy scale, different dataset, only orderings comparable."""
    ours = frame[frame["source"] == "ours"]
    datasets = "; ".join(dict.fromkeys(d for d in ours["dataset"] if isinstance(d, str) and d)) or "unknown"
    scales = "; ".join(dict.fromkeys(s for s in ours["scale"] if isinstance(s, str) and s)) or "unknown"
    if scales == "paper":
        return (f"{PAPER_TITLE[which]} with our reproduction at paper scale ({datasets}, NVIDIA's EDM teachers): "
                f"directly comparable with the paper's numbers where the budget and protocol match; each of our "
                f"cells names its FID protocol. Diverged runs are listed, never dropped.")
    return (f"{PAPER_TITLE[which]} with our reproduction: our numbers are at {scales} scale on a different dataset "
            f"({datasets}) and are NOT comparable in absolute value to the paper's CIFAR-10 FIDs; only orderings "
            f"are compared. Ours: mean ± 95% t-interval over seeds; diverged seeds are listed, never dropped.")


def _display_cells(frame: pd.DataFrame) -> list[list[str]]:
    """The table's display columns as strings (blank for missing values)."""
    def cell(key, value):
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            return ""
        return f"{value:.2f}" if key == "paper_fid" else str(value)
    return [[cell(key, row[key]) for key, _ in DISPLAY] for _, row in frame.iterrows()]


def to_markdown(frame: pd.DataFrame, title: str) -> str:
    """A padded pipe table with a caption line on top."""
    header = [name for _, name in DISPLAY]
    rows = [[c.replace("|", "\\|") for c in r] for r in _display_cells(frame)]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([f"*{title}*", "", line(header), rule, *map(line, rows)]) + "\n"


def tex_escape(text: str) -> str:
    """Escape LaTeX specials (_ % & # $ { } ~ ^ \\) and write ± as $\\pm$."""
    return "".join(TEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(frame: pd.DataFrame, title: str) -> str:
    """A booktabs tabular: the paper's rows, a rule, then ours; the caption as a comment on top."""
    cells = _display_cells(frame)
    align = "".join("r" if key in ("nfe", "paper_fid", "n_seeds") else "l" for key, _ in DISPLAY)
    row = lambda cs: " & ".join(tex_escape(c) for c in cs) + r" \\"  # noqa: E731
    lines = [f"% {tex_escape(title)}", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             row([name for _, name in DISPLAY]), r"\midrule"]
    for i, (source, cs) in enumerate(zip(frame["source"], cells)):
        if i and source != frame["source"].iloc[i - 1]:
            lines.append(r"\midrule")
        lines.append(row(cs))
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def tables(which: str, manifest_records, tracking_uri: str, out_dir) -> list[Path]:
    """Write out_dir/{which}.csv, .md and .tex; returns the paths written."""
    frame = build_table(which, manifest_records, tracking_uri)
    title = caption(which, frame)
    texts = {".csv": frame.to_csv(index=False), ".md": to_markdown(frame, title), ".tex": to_latex(frame, title)}
    out = _out_dir(out_dir)
    return [atomic_write_text(out / f"{which}{ext}", text) for ext, text in texts.items()]


# ------------------------------------------------------------------------------------------------ writing

def _out_dir(out_dir) -> Path:
    """Create the output folder (only once everything to write is ready)."""
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _save_figure(fig, out_dir, stem: str) -> list[Path]:
    """Write out_dir/<stem>.png and .pdf."""
    out = _out_dir(out_dir)
    return [atomic_savefig(fig, out / f"{stem}{ext}", bbox_inches="tight", dpi=150) for ext in (".png", ".pdf")]


# ------------------------------------------------------------------------------------------------ figures

def _new_figure(rows: int, cols: int, size: tuple[float, float]):
    """A constrained-layout Figure (Agg, no pyplot state) with seaborn's whitegrid theme, and its axes grid."""
    import matplotlib
    matplotlib.use("Agg")
    import seaborn as sns
    from matplotlib.figure import Figure
    sns.set_theme(style="whitegrid")
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def lr_text(lr: float) -> str:
    """1e-4 rather than 0.0001 or 1e-04."""
    return np.format_float_scientific(lr, trim="-", exp_digits=1)


def line_styles(records) -> dict[str, dict]:
    """label -> colour (a shade of its method family's colour) and line style (one per variant in the family);
    the label naming the plain method (e.g. "SIM") gets the full colour and a solid line."""
    import seaborn as sns
    palette = sns.color_palette("deep")
    families: dict[str, list[str]] = {}
    for label, recs in by_label(records).items():
        families.setdefault(recs[0]["method"], []).append(label)
    styles = {}
    for method, labels in families.items():
        labels = sorted(labels, key=lambda lb: " / " in lb or "(" in lb)  # plain method label first, stable
        base = np.array(palette[FAMILY_COLOUR[method]])
        for i, label in enumerate(labels):
            lighten = 0.55 * i / max(1, len(labels) - 1) if len(labels) > 1 else 0.0
            styles[label] = dict(color=tuple(base + (1 - base) * lighten), linestyle=LINESTYLES[i % len(LINESTYLES)])
    return styles


def curve(records, reader: RunReader, key: str):
    """Mean, min and max of eval/<key> over a label's finished and diverged seeds at each step, and the
    last finite point (step, value) of each diverged seed."""
    series, marks = [], []
    for rec in records:
        run = reader.run(rec["run_id"])
        if run["status"] not in ("finished", "diverged"):
            continue
        hist = dict(reader.history(rec["run_id"], f"eval/{key}"))
        values = pd.Series(list(hist.values()), index=list(hist.keys()), dtype=float)
        series.append(values)
        finite = values.dropna()
        if run["status"] == "diverged" and len(finite):
            marks.append((finite.index[-1], finite.iloc[-1]))
    if not series:
        return pd.Series(dtype=float), pd.Series(dtype=float), pd.Series(dtype=float), marks
    frame = pd.concat(series, axis=1).sort_index()
    return frame.mean(axis=1).dropna(), frame.min(axis=1).dropna(), frame.max(axis=1).dropna(), marks


def draw_curve(ax, records, reader: RunReader, key: str, style: dict):
    """One label's mean line, min-max band and diverged marks on `ax`; returns the line (or None)."""
    mean, low, high, marks = curve(records, reader, key)
    if mean.empty:
        return None
    (line,) = ax.plot(mean.index, mean.values, lw=1.6, **style)
    ax.fill_between(low.index, low.values, high.reindex(low.index).values, color=style["color"], alpha=0.15, lw=0)
    for step, value in marks:
        ax.plot([step], [value], marker="x", ms=10, mew=2.5, color=style["color"], linestyle="none", zorder=5)
    return line


def _legend_label(label: str, records, reader: RunReader) -> str:
    """The label, plus how many seeds diverged or failed at which learning rate."""
    notes = []
    for status in ("diverged", "failed"):
        for lr in sorted({r["lr"] for r in records}, reverse=True):
            at_lr = [r for r in records if r["lr"] == lr]
            k = sum(reader.run(r["run_id"])["status"] == status for r in at_lr)
            if k:
                notes.append(f"{status} {k}/{len(at_lr)} at lr={lr_text(lr)}")
    return label + (f" ({'; '.join(notes)})" if notes else "")


def _curve_panels(records, reader: RunReader, keys, axes, styles, log_y: bool = False) -> dict:
    """Draw every label on a (metric x lr) grid of axes; returns label -> a line handle."""
    lrs = sorted({r["lr"] for r in records}, reverse=True)
    handles = {}
    for j, lr in enumerate(lrs):
        groups = by_label([r for r in records if r["lr"] == lr])
        for i, key in enumerate(keys):
            ax = axes[i][j]
            for label, recs in groups.items():
                line = draw_curve(ax, recs, reader, key, styles[label])
                if line is not None:
                    handles.setdefault(label, line)
            if log_y:
                from matplotlib.ticker import FormatStrFormatter
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
                ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
            ax.set_title(f"lr = {lr_text(lr)}" if i == 0 else "")
            better = "lower" if key in LOWER_IS_BETTER else "higher"
            ax.set_ylabel(f"{METRIC_NAMES.get(key, key)} ({better} is better)" if j == 0 else "")
            ax.set_xlabel("training iteration" if i == len(keys) - 1 else "")
    return handles


def _figure_legend(fig, handles: dict, records, reader: RunReader) -> None:
    """One legend outside the axes, one entry per label, explaining band and 'x' in its title."""
    labels = [lb for lb in by_label(records) if lb in handles]
    fig.legend([handles[lb] for lb in labels], [_legend_label(lb, by_label(records)[lb], reader) for lb in labels],
               loc="outside right center", fontsize=8, title_fontsize=8,
               title=f"line: mean over seeds\nshaded: {BAND}\nx: diverged run's last finite point")


def build_figure2(manifest_records, tracking_uri: str):
    """Figure 2: FID (top) and IS (bottom) vs training iterations, one column per lr (higher lr left)."""
    records = select(manifest_records, "figure2", need_lr=True)
    reader, keys = RunReader(tracking_uri), metric_keys(records)
    lrs = {r["lr"] for r in records}
    fig, axes = _new_figure(2, len(lrs), (4.6 * len(lrs) + 3.2, 7.0))
    handles = _curve_panels(records, reader, keys, axes, line_styles(records))
    _figure_legend(fig, handles, records, reader)
    fig.suptitle(f"Figure 2 ({records[0]['scale']}-scale reproduction on {records[0]['dataset']}; paper: CIFAR-10): {METRIC_NAMES[keys[0]]} and "
                 f"{METRIC_NAMES[keys[1]]} vs training iterations; mean over seeds, band = {BAND}", fontsize=10)
    return fig


def figure2(manifest_records, tracking_uri: str, out_dir) -> list[Path]:
    """Write out_dir/figure2.png and .pdf."""
    return _save_figure(build_figure2(manifest_records, tracking_uri), out_dir, "figure2")


def build_fid_convergence(manifest_records, tracking_uri: str):
    """Appendix B.6: SIM vs SiD FID vs iterations (log y), from figure2's default-variant runs, one panel per lr."""
    records = [r for r in select(manifest_records, "figure2", need_lr=True) if r["label"] in ("SIM", "SiD")]
    if not records:
        raise ValueError("experiment figure2 has no runs labelled SIM or SiD")
    reader, key = RunReader(tracking_uri), metric_keys(records)[0]
    lrs = {r["lr"] for r in records}
    fig, axes = _new_figure(1, len(lrs), (4.6 * len(lrs) + 3.2, 3.8))
    handles = _curve_panels(records, reader, (key,), axes, line_styles(records), log_y=True)
    _figure_legend(fig, handles, records, reader)
    fig.suptitle(f"Appendix B.6 ({records[0]['scale']}-scale reproduction): SIM vs SiD {METRIC_NAMES[key]} convergence", fontsize=10)
    return fig


def fid_convergence(manifest_records, tracking_uri: str, out_dir) -> list[Path]:
    """Write out_dir/figure_b6_fid_convergence.png and .pdf."""
    return _save_figure(build_fid_convergence(manifest_records, tracking_uri), out_dir, "figure_b6_fid_convergence")


def lr_sweep_table(records, reader: RunReader, key: str) -> pd.DataFrame:
    """One row per (label, lr): final FID mean over finished seeds, seeds, diverged and failed counts."""
    rows = []
    for label, recs in by_label(records).items():
        for lr in sorted({r["lr"] for r in recs}):
            summary = summarize_label([r for r in recs if r["lr"] == lr], reader, key)
            rows.append(dict(method=label, lr=lr, fid_mean=summary["mean"], n_seeds=summary["n_seeds"],
                             n_diverged=len(summary["diverged"]), n_failed=summary["others"].get("failed", 0)))
    return pd.DataFrame(rows, columns=["method", "lr", "fid_mean", "n_seeds", "n_diverged", "n_failed"])


def build_lr_sweep(manifest_records, tracking_uri: str):
    """Final FID vs learning rate per method (log x); diverged (label, lr) cells as red 'x' at the top."""
    from matplotlib.transforms import blended_transform_factory
    records = select(manifest_records, "lr_sweep", need_lr=True)
    reader, key = RunReader(tracking_uri), metric_keys(records)[0]
    table = lr_sweep_table(records, reader, key)
    styles = line_styles(records)
    fig, axes = _new_figure(1, 1, (7.5, 4.2))
    ax, top = axes[0][0], blended_transform_factory(axes[0][0].transData, axes[0][0].transAxes)
    marked = False
    for i, (label, rows) in enumerate(table.groupby("method", sort=False)):
        done = rows.dropna(subset=["fid_mean"])
        ax.plot(done["lr"], done["fid_mean"], marker="o", label=label, **styles[label])
        for lr in rows.loc[rows["n_diverged"] > 0, "lr"]:
            y = 0.97 - 0.06 * i
            ax.plot([lr], [y], transform=top, marker="x", ms=10, mew=2.5, color="red", linestyle="none",
                    clip_on=False, label="_diverged" if marked else "diverged")
            marked = True
            ax.annotate(label, (lr, y), xycoords=top, xytext=(6, -3), textcoords="offset points", fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"final {METRIC_NAMES[key]} (mean over finished seeds)")
    ax.set_title("Learning-rate sweep: red x = at least one seed diverged at that lr", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda k: labels[k] == "diverged")  # "diverged" last
    fig.legend([handles[k] for k in order], [labels[k] for k in order], loc="outside right center", fontsize=8)
    return fig, table


def lr_sweep_figure(manifest_records, tracking_uri: str, out_dir) -> list[Path]:
    """Write out_dir/lr_sweep.png, .pdf and lr_sweep.csv."""
    fig, table = build_lr_sweep(manifest_records, tracking_uri)
    paths = _save_figure(fig, out_dir, "lr_sweep")
    return paths + [atomic_write_text(Path(out_dir) / "lr_sweep.csv", table.to_csv(index=False))]


# ---------------------------------------------------------------------------------------------------- CLI

TARGETS = {"table1": lambda m, u, o: tables("table1", m, u, o), "table2": lambda m, u, o: tables("table2", m, u, o),
           "figure2": figure2, "fid_convergence": fid_convergence, "lr_sweep": lr_sweep_figure}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are ValueErrors (so the CLI prints one line)."""

    def error(self, message):
        raise ValueError(message)


def main(argv=None) -> int:
    """Run one target; bad input prints a one-line error on stderr and returns 2, writing nothing."""
    parser = _Parser(prog="python -m workflow.aggregate", description=__doc__.splitlines()[0])
    parser.add_argument("target", help="one of: " + ", ".join(TARGETS))
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--out-dir", required=True)
    try:
        args = parser.parse_args(argv)
        if args.target not in TARGETS:
            raise ValueError(f"unknown target {args.target!r}; choose one of {', '.join(TARGETS)}")
        written = TARGETS[args.target](load_manifest(args.manifest), args.tracking_uri, args.out_dir)
    except ValueError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    print("\n".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
