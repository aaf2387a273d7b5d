"""The paper's tables with our rows beside them, as csv, md and tex. A table is a data file
(workflow/paper/<table>.yaml, read as :class:`TableSpec`): the paper's CSV, its metric columns, which paper row each
of our rows reproduces, and the claims to check. Our values come from MLflow (the runs a manifest names); the
testbed's metric for each column fills it (sim_core/testbeds/*/__init__.py)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Optional

import pandas as pd
import yaml
from pydantic import Field, ValidationError

from sim_core.files import atomic_write_text
from sim_core.schema import Strict, format_error
from sim_core.testbeds.spec import Protocol
from workflow.report import PAPER_DIR, TABLES
from workflow.report.manifest import by_label, select, testbed_spec
from workflow.report.mlflow_reader import RunReader
from workflow.report.stats import better_claim, protocol_text, ratio_claim, runs_text, stat_text, summarize_label

TEX_ESCAPES = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
               "±": r"$\pm$", "α": r"$\alpha$", "×": r"$\times$", "≥": r"$\geq$"}


class MetricColumn(Strict):
    column: str                         # the report column; a testbed's metric with this column fills it
    name: str                           # the paper's name for it
    paper: Optional[str] = None         # the paper CSV's column, if the paper reports it
    lower_is_better: bool
    decimals: int = 2                   # how the paper's values are printed
    optional: bool = False              # left out where the testbed has no metric for it


class PaperColumns(Strict):
    method: str                         # the paper CSV's columns that name a row, its step count, its group, and
    steps: str                          # (Tables 1-2) whether the SIM authors reproduced it
    group: Optional[str] = None
    reproduced: Optional[str] = None


class PaperRow(Strict):
    method: str
    reproduced: Optional[str] = None    # the paper's reproduced-by-authors value the row must have; None: either


class Claim(Strict):
    kind: Literal["better", "ratio"]
    column: str
    row: str                            # our row label the claim is about
    than: Optional[str] = None          # better: the other row
    of: Optional[str] = None            # ratio: the reference row ("teacher": our teacher row at the table's steps)
    ratio: Optional[float] = None


class StudyColumn(Strict):
    """A column filled from a human-preference study (workflow/study): the paper's values as it prints them, ours
    from the study's answers, never simulated."""
    column: str = "user_pref"
    paper: str                          # the paper CSV's column
    missing: str                        # the caption line while no study has answers
    # what `snakemake study` builds the study from (workflow/study/from_runs.py)
    a: str = "SIM"                      # our row whose one-step images are A (B.4: SIM's)
    teacher_steps: int = 20             # B: our teacher row at these steps (the Table 3 caption: 20-step PixArt-alpha)
    prompts: int = Field(17, ge=1)      # B.4: 17 random prompts
    raters: int = Field(30, ge=1)       # invitations made (B.4: about 30 responses)
    seed: int = 0                       # which prompts are drawn and each rater's order (the paper is silent)


class TableSpec(Strict):
    title: str
    paper_csv: str
    paper_columns: PaperColumns
    steps_name: str = "steps"
    group_name: Optional[str] = None    # shown as a column of the md/tex tables under this header; None: not shown
    metrics: list[MetricColumn] = Field(..., min_length=1)
    rows: dict[str, PaperRow] = Field(default_factory=dict)
    teacher: Optional[PaperRow] = None  # our teacher rows reproduce this paper method at the same step count
    claims: list[Claim] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)  # caption lines
    study: Optional[StudyColumn] = None

    def for_testbed(self, tb) -> "TableSpec":
        """The spec without the optional columns the testbed has no metric for."""
        kept = [m for m in self.metrics if not m.optional or tb.for_column(m.column) is not None]
        return self.model_copy(update={"metrics": kept})


def table_spec(which: str) -> TableSpec:
    if which not in TABLES:
        raise ValueError(f"unknown table {which!r}; choose one of {', '.join(TABLES)}")
    path = PAPER_DIR / f"{which}.yaml"
    try:
        return TableSpec.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as e:
        raise ValueError(f"table spec {path}: {format_error(e)}") from None


def read_paper(which: str) -> pd.DataFrame:
    """The paper's table as data (the CSV's first line is a '# Source' comment)."""
    return pd.read_csv(PAPER_DIR / table_spec(which).paper_csv, comment="#", dtype={"reproduced_by_authors": str})


def columns(spec: TableSpec) -> list[str]:
    steps = spec.paper_columns.steps
    out = ["source", "group", "method", steps, "reproduced_by_authors", "paper_row"]
    for m in spec.metrics:
        out += ([f"paper_{m.column}"] if m.paper else []) + [m.column, f"{m.column}_mean", f"{m.column}_ci95"]
    if spec.study:
        out += [f"paper_{spec.study.column}", spec.study.column]
    return out + ["n_seeds", "n_finished", "runs", "scale", "dataset", "protocol", "flag"]


def paper_match(spec: TableSpec, label: str, records, paper: pd.DataFrame):
    """The paper row our label reproduces (spec.rows; teacher rows: spec.teacher at the same step count), or None."""
    pc = spec.paper_columns
    if all(r["method"] == "teacher" for r in records):
        steps = {r.get("nfe") for r in records}
        if spec.teacher is None or len(steps) != 1:
            return None
        want, rows = spec.teacher, paper[paper[pc.steps] == steps.pop()]
    elif label in spec.rows:
        want, rows = spec.rows[label], paper
    else:
        return None
    rows = rows[rows[pc.method] == want.method]
    if want.reproduced is not None and pc.reproduced:
        rows = rows[rows[pc.reproduced] == want.reproduced]
    return rows.iloc[0] if len(rows) else None


def _joined(values) -> str:
    return "; ".join(dict.fromkeys(str(v) for v in values if v is not None and v != ""))


def _paper_rows(spec: TableSpec, paper: pd.DataFrame) -> list[dict]:
    pc, out = spec.paper_columns, []
    for _, row in paper.iterrows():
        rec = dict(source="paper", group=row[pc.group] if pc.group else "", method=row[pc.method],
                   reproduced_by_authors=row[pc.reproduced] if pc.reproduced else "")
        rec[pc.steps] = str(row[pc.steps])
        for m in spec.metrics:
            if m.paper:
                rec[f"paper_{m.column}"] = _float(row[m.paper])
        if spec.study:
            value = row[spec.study.paper]
            rec[f"paper_{spec.study.column}"] = "" if pd.isna(value) else str(value)
        out.append(rec)
    return out


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def protocol_of(records) -> str:
    return _joined(Protocol(**r["protocol"]).text() for r in records if r.get("protocol"))


def _our_row(spec: TableSpec, label: str, records, reader: RunReader, paper: pd.DataFrame, metrics) -> tuple:
    """One reproduced row, and the summary of each metric column (for the claims)."""
    pc, match = spec.paper_columns, paper_match(spec, label, records, paper)
    summaries = {m.column: summarize_label(records, reader, metrics[m.column].key) for m in spec.metrics}
    head = summaries[spec.metrics[0].column]
    steps = _joined(r.get("nfe") for r in records)
    row = dict(source="ours", group="reproduced here", method=label, reproduced_by_authors="",
               paper_row="" if match is None else f"{match[pc.method]} ({spec.steps_name} {match[pc.steps]}"
               + (", reproduced by SIM authors" if pc.reproduced and match[pc.reproduced] == "yes" else "") + ")",
               n_seeds=head["n_seeds"], n_finished=head["n"], runs=runs_text(head),
               scale=_joined(r.get("scale") for r in records), dataset=_joined(r.get("dataset") for r in records),
               protocol=protocol_of(records), flag="")
    row[pc.steps] = steps
    for m in spec.metrics:
        s, key = summaries[m.column], metrics[m.column].key
        if m.paper:
            row[f"paper_{m.column}"] = math.nan if match is None else _float(match[m.paper])
        row[m.column] = (protocol_text(records, reader, s, key) or stat_text(s)) if s["n"] or m is spec.metrics[0] \
            else ""
        row[f"{m.column}_mean"], row[f"{m.column}_ci95"] = s["mean"], s["half"]
    return row, summaries


def _flags(spec: TableSpec, ours: dict, metrics) -> dict[str, list[str]]:
    """Each claim's verdict, by the row it is about."""
    flags: dict[str, list[str]] = {}
    for c in spec.claims:
        if c.row not in ours:
            continue
        summary = lambda label: ours[label][1][c.column] if label in ours else None  # noqa: E731
        if c.kind == "better":
            text = better_claim(summary(c.row), summary(c.than), c.row, c.than, metrics[c.column].lower_is_better)
        else:
            ref = c.of
            text = ratio_claim(summary(c.row), summary(ref), c.row, ref, c.ratio, metrics[c.column].name)
        flags.setdefault(c.row, []).append(text)
    return flags


def study_text(result: dict) -> str:
    """A study's result as a cell: A's win rate with its Wilson 95% interval, answers and raters."""
    return (f"{100 * result['rate_a']:.1f}% [{100 * result['wilson95_low']:.1f}, {100 * result['wilson95_high']:.1f}] "
            f"vs {result['label_b']} ({result['total']} answers, {result['raters_answered']} raters)")


def read_study(spec: TableSpec, study_dir) -> Optional[dict]:
    """The study's result when the table has a study column and the folder holds a study with answers."""
    if spec.study is None or study_dir is None or not (Path(study_dir) / "study.json").is_file():
        return None
    from workflow.study.results import study_result
    result = study_result(study_dir)
    return result if result["total"] else None


def build_table(which: str, manifest_records, tracking_uri: str, study: Optional[dict] = None) -> pd.DataFrame:
    """The paper's rows, then one reproduced row per label with each metric's mean ± 95% CI and the claim flags;
    ``study`` (workflow/study/results.py) fills the study column of the row named like its image set A."""
    spec = table_spec(which)
    records = select(manifest_records, which)
    tb = testbed_spec(records)
    spec = spec.for_testbed(tb)
    metrics = {m.column: tb.for_column(m.column) for m in spec.metrics}
    missing = [c for c, m in metrics.items() if m is None]
    if missing:
        raise ValueError(f"testbed {tb.name} has no metric for the column(s) {missing} of {which}")
    paper, reader = read_paper(which), RunReader(tracking_uri)
    ours = {label: _our_row(spec, label, recs, reader, paper, metrics) for label, recs in by_label(records).items()}
    for label, texts in _flags(spec, ours, metrics).items():
        ours[label][0]["flag"] = "; ".join(texts)
    if spec.study and study is not None and study["label_a"] in ours:
        ours[study["label_a"]][0][spec.study.column] = study_text(study)
    frame = pd.DataFrame(_paper_rows(spec, paper) + [row for row, _ in ours.values()], columns=columns(spec))
    frame[["n_seeds", "n_finished"]] = frame[["n_seeds", "n_finished"]].astype("Int64")
    return frame


def caption(which: str, frame: pd.DataFrame, records, study: Optional[dict] = None) -> list[str]:
    """The caption lines: what our rows are (scale, dataset, how comparable), how they were measured (once), and
    the study's result or that there is none yet."""
    spec = table_spec(which)
    ours = frame[frame["source"] == "ours"]
    datasets = _joined(d for d in ours["dataset"] if isinstance(d, str)) or "unknown"
    scales = _joined(s for s in ours["scale"] if isinstance(s, str)) or "unknown"
    if scales == "paper":
        lines = [f"{spec.title} with our reproduction at paper scale ({datasets}): directly comparable with the "
                 "paper's numbers where the budget and protocol match. Single runs show the protocol's own spread. "
                 "Diverged runs are listed, never dropped."]
    else:
        lines = [f"{spec.title} with our reproduction: our numbers are at {scales} scale on a different dataset "
                 f"({datasets}) and are NOT comparable in absolute value to the paper's; only orderings are "
                 "compared. Ours: mean ± 95% t-interval over seeds; diverged seeds are listed, never dropped."]
    mine = [r for r in select(records, which) if r["method"] != "teacher"]
    teacher = [r for r in select(records, which) if r["method"] == "teacher"]
    if mine:
        lines.append(f"Protocol: {protocol_of(mine)}.")
    if teacher:
        p = Protocol(**teacher[0]["protocol"])
        tb = testbed_spec(teacher)
        draws = f"{p.trials} noise draw per seed" if p.rule == "mean" else f"{p.trials} trials"
        lines.append(f"Teacher rows: the teacher's {tb.teacher_sampler} at the row's {spec.steps_name}, {draws}, "
                     "otherwise the same protocol.")
    if spec.study:
        lines.append(f"User preference (a study of side-by-side pairs, workflow/study): {study['label_a']} chosen in "
                     f"{study_text(study)}." if study else spec.study.missing)
    return lines + spec.notes


def display(spec: TableSpec, metrics) -> list[tuple[str, str]]:
    """(column, header) of the md/tex tables: scale, dataset and protocol are in the caption instead."""
    steps = spec.paper_columns.steps
    out = [("source", "Source")] + ([("group", spec.group_name)] if spec.group_name else []) + \
        [("method", "Method"), (steps, spec.steps_name)]
    if spec.paper_columns.reproduced:
        out.append(("reproduced_by_authors", "Repro. by SIM authors"))
    for m in spec.metrics:
        if m.paper:
            out.append((f"paper_{m.column}", f"Paper {m.name}"))
        out.append((m.column, f"Our {metrics[m.column].name} (mean ± 95% CI)"))
    if spec.study:
        out += [(f"paper_{spec.study.column}", "Paper user preference"),
                (spec.study.column, "Our user preference (Wilson 95%)")]
    return out + [("n_seeds", "Seeds"), ("runs", "Runs"), ("paper_row", "Paper row compared"), ("flag", "Flag")]


def _cells(frame: pd.DataFrame, spec: TableSpec, cols) -> list[list[str]]:
    decimals = {f"paper_{m.column}": m.decimals for m in spec.metrics}

    def cell(key, value):
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return ""
        return f"{value:.{decimals[key]}f}" if key in decimals else str(value)
    return [[cell(key, row[key]) for key, _ in cols] for _, row in frame.iterrows()]


def to_markdown(frame: pd.DataFrame, spec: TableSpec, cols, lines: list[str]) -> str:
    """A padded pipe table with the caption lines on top."""
    header = [name for _, name in cols]
    rows = [[c.replace("|", "\\|") for c in r] for r in _cells(frame, spec, cols)]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([*(f"*{t}*" for t in lines), "", line(header), rule, *map(line, rows)]) + "\n"


def tex_escape(text: str) -> str:
    """Escape LaTeX specials (_ % & # $ { } ~ ^ \\) and write ± as $\\pm$."""
    return "".join(TEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(frame: pd.DataFrame, spec: TableSpec, cols, lines: list[str]) -> str:
    """A booktabs tabular: the paper's rows, a rule, then ours; the caption as comments on top."""
    cells = _cells(frame, spec, cols)
    numeric = {spec.paper_columns.steps, "n_seeds"} | {f"paper_{m.column}" for m in spec.metrics}
    align = "".join("r" if key in numeric else "l" for key, _ in cols)
    row = lambda cs: " & ".join(tex_escape(c) for c in cs) + r" \\"  # noqa: E731
    out = [*(f"% {tex_escape(t)}" for t in lines), rf"\begin{{tabular}}{{{align}}}", r"\toprule",
           row([name for _, name in cols]), r"\midrule"]
    for i, (source, cs) in enumerate(zip(frame["source"], cells)):
        if i and source != frame["source"].iloc[i - 1]:
            out.append(r"\midrule")
        out.append(row(cs))
    return "\n".join(out + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def write_table(which: str, manifest_records, tracking_uri: str, out_dir, study_dir=None) -> list[Path]:
    """Write out_dir/{which}.csv, .md and .tex (only once everything is read); returns the paths written.
    ``study_dir``: a preference study (workflow/study) whose answers fill the table's study column, if it has one."""
    spec = table_spec(which)
    study = read_study(spec, study_dir)
    frame = build_table(which, manifest_records, tracking_uri, study)
    tb = testbed_spec(select(manifest_records, which))
    spec = spec.for_testbed(tb)
    cols = display(spec, {m.column: tb.for_column(m.column) for m in spec.metrics})
    lines = caption(which, frame, manifest_records, study)
    texts = {".csv": frame.to_csv(index=False), ".md": to_markdown(frame, spec, cols, lines),
             ".tex": to_latex(frame, spec, cols, lines)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [atomic_write_text(out / f"{which}{ext}", text) for ext, text in texts.items()]
