"""Statistics of a row's seeds (mean and 95% t-interval, how the seeds ended) and the paper's claims checked on
them: "better" (a row beats another on a metric) and "ratio" (a row keeps at least a fraction of another's value)."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

from workflow.report.mlflow_reader import RunReader, finite


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
    values, diverged, others, collapse = [], [], Counter(), []
    for rec in records:
        run = reader.run(rec["run_id"])
        if not reader.complete(rec):  # never averaged in: MLflow lacks part of its history
            others["incomplete in MLflow"] += 1
        elif run["status"] == "diverged":
            diverged.append(run["diverged_at"])
        elif run["status"] == "finished":
            value = reader.headline(rec["run_id"], key)
            if finite(value):
                values.append(value)
            else:
                others[f"without {key}"] += 1
        else:
            others[run["status"]] += 1
            if run["status"] == "collapsed":
                collapse.append(run.get("reason", "").split(":")[0] or "degenerate samples")
    mean, half, n = mean_ci(values)
    return dict(values=values, mean=mean, half=half, n=n, n_seeds=len(records), diverged=diverged, others=others,
                collapse=collapse)


def _steps_text(steps) -> str:
    """'step 120' or 'steps 120, 340' ('?' for a diverged run without its step)."""
    listed = ", ".join("?" if s is None else str(s) for s in steps)
    return f"step{'s' if len(steps) > 1 else ''} {listed}"


def runs_text(summary: dict) -> str:
    """How a label's seeds ended, e.g. '3/3 finished', '2/3 diverged (steps 120, 340); 1/3 failed' or
    '1/1 collapsed (saturated)'."""
    n, parts = summary["n_seeds"], []
    if summary["diverged"]:
        parts.append(f"{len(summary['diverged'])}/{n} diverged ({_steps_text(summary['diverged'])})")
    for status, k in summary["others"].items():
        why = summary.get("collapse", []) if status == "collapsed" else []
        parts.append(f"{k}/{n} {status}" + (f" ({', '.join(sorted(set(why)))})" if why else ""))
    return "; ".join(parts) or f"{n}/{n} finished"


def num(x: float, like: float | None = None) -> str:
    """A number with 2 decimals, or 3 significant digits for small magnitudes (of `like` when given)."""
    ref = abs(x if like is None else like)
    decimals = 2 if ref >= 0.1 or ref == 0 or not math.isfinite(ref) else min(6, 2 - math.floor(math.log10(ref)))
    return f"{x:.{decimals}f}"


def stat_text(summary: dict) -> str:
    """'2.10 ± 0.25', '2.10 (n=1)', 'diverged at step 120', 'failed', or how the seeds ended."""
    if summary["n"] >= 2:
        return f"{num(summary['mean'])} ± {num(summary['half'], summary['mean'])}"
    if summary["n"] == 1:
        return f"{num(summary['mean'])} (n=1)"
    if summary["diverged"] and not summary["others"]:
        return f"diverged at {_steps_text(summary['diverged'])}"
    if len(summary["others"]) == 1 and not summary["diverged"] and set(summary["others"]) <= {"failed", "collapsed"}:
        return runs_text(summary).split(" ", 1)[1]  # 'failed', or 'collapsed (saturated)'
    return f"no finished seeds ({runs_text(summary)})"


def protocol_text(records, reader: RunReader, summary: dict, key: str) -> str:
    """A single run's value the way its FID protocol reports it: 'mean ± std (SiD protocol: 10 trials)' or 'min
    (EDM protocol: 3 seed ranges)'; '' where the records average noise draws (mean ± 95% CI over seeds instead)."""
    rules = {(rec.get("protocol") or {}).get("rule") for rec in records}
    if summary["n"] != 1 or len(records) != 1 or len(rules) != 1 or rules & {None, "mean"}:
        return ""
    rule, trials = rules.pop(), records[0]["protocol"]["trials"]
    if rule == "edm":
        return f"{num(summary['mean'])} (min of {trials} seed ranges)"
    spread = reader.headline(records[0]["run_id"], f"{key}_spread")
    return f"{num(summary['mean'])} ± {num(spread, summary['mean'])} (std of {trials} trials)"


# ------------------------------------------------------------------------------------------------------ claims

def better_claim(row: dict, other: dict, row_label: str, other_label: str, lower_is_better: bool = True) -> str:
    """The paper's claim 'row is better than other' (e.g. SIM has a lower FID than DI), checked on our means and 95%
    CIs: agrees (CIs disjoint), consistent but not significant, or contradicts (significantly or not)."""
    if row is None or row["n"] == 0:
        return f"not checked vs {other_label}: no finished {row_label} seeds"
    if other is None or other["n"] == 0:
        return f"not checked vs {other_label}: no finished {other_label} seeds"
    sign = 1.0 if lower_is_better else -1.0
    a, b = sign * row["mean"], sign * other["mean"]  # smaller is better from here on
    no_ci = math.isnan(row["half"]) or math.isnan(other["half"])
    if a > b:
        if no_ci:
            return f"contradicts paper: {row_label} worse than {other_label} (too few seeds for a 95% CI)"
        if a - row["half"] > b + other["half"]:
            return f"contradicts paper: {row_label} worse than {other_label}, 95% CIs disjoint"
        return f"contradicts paper: {row_label} worse than {other_label} (95% CIs overlap: not significant)"
    if a == b:
        return f"contradicts paper: {row_label} no better than {other_label}"
    if no_ci:
        return f"consistent but not significant: {row_label} better than {other_label}, too few seeds for a 95% CI"
    if a + row["half"] >= b - other["half"]:
        return f"consistent but not significant: {row_label} better than {other_label}, 95% CIs overlap"
    return f"agrees with paper: {row_label} better than {other_label}, 95% CIs disjoint"


def ratio_claim(row: dict, ref: dict, row_label: str, ref_label: str, ratio: float, metric: str) -> str:
    """The paper's claim 'row keeps at least ``ratio`` of ref's metric' (e.g. SIM keeps 99.6% of the teacher's
    aesthetic score), checked on our means and 95% CIs: supported when even the row's lower bound reaches ratio times
    the ref's upper bound, contradicted when the row's upper bound stays below ratio times the ref's lower bound."""
    if row is None or row["n"] == 0 or ref is None or ref["n"] == 0:
        missing = row_label if row is None or row["n"] == 0 else ref_label
        return f"not checked: no finished {missing} seeds"
    kept = row["mean"] / ref["mean"] if ref["mean"] else math.nan
    said = f"{row_label} keeps {100 * kept:.1f}% of {ref_label}'s {metric} (paper: >= {100 * ratio:g}%)"
    if math.isnan(row["half"]) or math.isnan(ref["half"]):
        verdict = "agrees with paper" if kept >= ratio else "contradicts paper"
        return f"{verdict}: {said}, too few seeds for a 95% CI"
    if row["mean"] - row["half"] >= ratio * (ref["mean"] + ref["half"]):
        return f"agrees with paper: {said}, 95% CIs clear of the threshold"
    if row["mean"] + row["half"] < ratio * (ref["mean"] - ref["half"]):
        return f"contradicts paper: {said}, 95% CIs below the threshold"
    side = "consistent but not significant" if kept >= ratio else "contradicts paper (not significant)"
    return f"{side}: {said}, 95% CIs overlap the threshold"
