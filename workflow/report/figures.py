"""The paper's figures regenerated from MLflow: Figure 2 (FID and IS vs iterations at two learning rates, with the
ablations), the Appendix B.6 FID-convergence figure, and a learning-rate sweep beyond the paper. The testbed's
metrics for the "fid" and "is" columns are plotted (sim_core/testbeds/*/__init__.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sim_core.files import atomic_savefig, atomic_write_text
from workflow.report.manifest import by_label, column_metrics, select
from workflow.report.mlflow_reader import RunReader
from workflow.report.stats import summarize_label

FAMILY_COLOUR = {"sim": 0, "sid": 1, "di": 2, "teacher": 7}  # index into seaborn's "deep" palette
LINESTYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (6, 3))]
BAND = "min-max over seeds"


def _save_figure(fig, out_dir, stem: str) -> list[Path]:
    """Write out_dir/<stem>.png and .pdf."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [atomic_savefig(fig, out / f"{stem}{ext}", bbox_inches="tight", dpi=150) for ext in (".png", ".pdf")]


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


MARKERS = {"diverged": "x", "collapsed": "s", "sanitized": "^"}  # the last finite point of a run that ended so


def curve(records, reader: RunReader, key: str):
    """Mean, min and max of eval/<key> over a label's finished, diverged and collapsed seeds at each step, and the
    last finite point (step, value, status) of each diverged or collapsed seed."""
    series, marks = [], []
    for rec in records:
        run = reader.run(rec["run_id"])
        if run["status"] not in ("finished", "diverged", "collapsed") or not reader.complete(rec):
            continue  # an incomplete history is not drawn: the legend says how many
        hist = dict(reader.history(rec["run_id"], f"eval/{key}"))
        values = pd.Series(list(hist.values()), index=list(hist.keys()), dtype=float)
        series.append(values)
        finite = values.dropna()
        if run["status"] in MARKERS and len(finite):
            marks.append((finite.index[-1], finite.iloc[-1], run["status"]))
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
    for step, value, status in marks:
        ax.plot([step], [value], marker=MARKERS[status], ms=9, mew=2.5, color=style["color"], linestyle="none",
                zorder=5, fillstyle="none")
    return line


def _legend_label(label: str, records, reader: RunReader) -> str:
    """The label, plus how many seeds diverged, collapsed or failed at which learning rate."""
    notes = []
    for status in ("diverged", "collapsed", "failed", "incomplete in MLflow, not drawn"):
        for lr in sorted({r["lr"] for r in records}, reverse=True):
            at_lr = [r for r in records if r["lr"] == lr]
            k = sum((not reader.complete(r)) if status.startswith("incomplete") else
                    reader.run(r["run_id"])["status"] == status for r in at_lr)
            if k:
                notes.append(f"{status} {k}/{len(at_lr)} at lr={lr_text(lr)}")
    return label + (f" ({'; '.join(notes)})" if notes else "")


def _curve_panels(records, reader: RunReader, metrics, axes, styles, log_y: bool = False) -> dict:
    """Draw every label on a (metric x lr) grid of axes; returns label -> a line handle."""
    lrs = sorted({r["lr"] for r in records}, reverse=True)
    handles = {}
    for j, lr in enumerate(lrs):
        groups = by_label([r for r in records if r["lr"] == lr])
        for i, metric in enumerate(metrics):
            ax = axes[i][j]
            for label, recs in groups.items():
                line = draw_curve(ax, recs, reader, metric.key, styles[label])
                if line is not None:
                    handles.setdefault(label, line)
            if log_y:
                from matplotlib.ticker import FormatStrFormatter
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
                ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
            ax.set_title(f"lr = {lr_text(lr)}" if i == 0 else "")
            better = "lower" if metric.lower_is_better else "higher"
            ax.set_ylabel(f"{metric.name} ({better} is better)" if j == 0 else "")
            ax.set_xlabel("training iteration" if i == len(metrics) - 1 else "")
    return handles


def _figure_legend(fig, handles: dict, records, reader: RunReader) -> None:
    """One legend outside the axes, one entry per label, explaining band and 'x' in its title."""
    labels = [lb for lb in by_label(records) if lb in handles]
    fig.legend([handles[lb] for lb in labels], [_legend_label(lb, by_label(records)[lb], reader) for lb in labels],
               loc="outside right center", fontsize=8, title_fontsize=8,
               title=f"line: mean over seeds\nshaded: {BAND}\nx: diverged run's last finite point\n"
                     "square: collapsed run's last point")


def _curves_figure(records, tracking_uri: str, columns, height: float, title: str, log_y: bool = False):
    """The testbed's metric of each column (a row of panels each) vs training iterations, one column of panels per
    lr (higher lr left), one legend for all. ``title`` is formatted with the metric names, scale and dataset."""
    reader, metrics = RunReader(tracking_uri), column_metrics(records, columns)
    lrs = {r["lr"] for r in records}
    fig, axes = _new_figure(len(metrics), len(lrs), (4.6 * len(lrs) + 3.2, height))
    handles = _curve_panels(records, reader, metrics, axes, line_styles(records), log_y=log_y)
    _figure_legend(fig, handles, records, reader)
    fig.suptitle(title.format(*(m.name for m in metrics), scale=records[0]["scale"], dataset=records[0]["dataset"]),
                 fontsize=10)
    return fig


def build_figure2(manifest_records, tracking_uri: str):
    """Figure 2: FID (top) and IS (bottom) vs training iterations, one column per lr (higher lr left)."""
    records = select(manifest_records, "figure2", need_lr=True)
    return _curves_figure(records, tracking_uri, ("fid", "is"), 7.0,
                          "Figure 2 ({scale}-scale reproduction on {dataset}; paper: CIFAR-10): {0} and {1} vs "
                          f"training iterations; mean over seeds, band = {BAND}")


def figure2(manifest_records, tracking_uri: str, out_dir) -> list[Path]:
    """Write out_dir/figure2.png and .pdf."""
    return _save_figure(build_figure2(manifest_records, tracking_uri), out_dir, "figure2")


def build_fid_convergence(manifest_records, tracking_uri: str):
    """Appendix B.6: SIM vs SiD FID vs iterations (log y), from figure2's default-variant runs, one panel per lr."""
    records = [r for r in select(manifest_records, "figure2", need_lr=True) if r["label"] in ("SIM", "SiD")]
    if not records:
        raise ValueError("experiment figure2 has no runs labelled SIM or SiD")
    return _curves_figure(records, tracking_uri, ("fid",), 3.8,
                          "Appendix B.6 ({scale}-scale reproduction): SIM vs SiD {0} convergence", log_y=True)


def fid_convergence(manifest_records, tracking_uri: str, out_dir) -> list[Path]:
    """Write out_dir/figure_b6_fid_convergence.png and .pdf."""
    return _save_figure(build_fid_convergence(manifest_records, tracking_uri), out_dir, "figure_b6_fid_convergence")


LR_SWEEP_COLUMNS = ["method", "lr", "fid_mean", "n_seeds", "n_diverged", "n_collapsed", "n_failed", "nonfinite_steps",
                    "stop_would_diverge_at"]


def lr_sweep_table(records, reader: RunReader, key: str) -> pd.DataFrame:
    """One row per (label, lr): final FID mean over finished seeds, seeds, how many diverged, collapsed or failed,
    the steps a sanitizing non-finite policy repaired (summed over seeds) and the first of them, where the "stop"
    policy would have ended the run as diverged (the two policies are the same run up to there)."""
    rows = []
    for label, recs in by_label(records).items():
        for lr in sorted({r["lr"] for r in recs}):
            at_lr = [r for r in recs if r["lr"] == lr]
            summary = summarize_label(at_lr, reader, key)
            rows.append(dict(method=label, lr=lr, fid_mean=summary["mean"], n_seeds=summary["n_seeds"],
                             n_diverged=len(summary["diverged"]), n_collapsed=summary["others"].get("collapsed", 0),
                             n_failed=summary["others"].get("failed", 0),
                             nonfinite_steps=sum(reader.run(r["run_id"])["nonfinite_steps"] for r in at_lr),
                             stop_would_diverge_at=min((s for s in (reader.run(r["run_id"])["first_nonfinite_step"]
                                                                    for r in at_lr) if s), default=None)))
    frame = pd.DataFrame(rows, columns=LR_SWEEP_COLUMNS)
    frame["stop_would_diverge_at"] = frame["stop_would_diverge_at"].astype("Int64")
    return frame


def build_lr_sweep(manifest_records, tracking_uri: str):
    """Final FID vs learning rate per method (log x); diverged (label, lr) cells as red 'x' at the top."""
    from matplotlib.transforms import blended_transform_factory
    records = select(manifest_records, "lr_sweep", need_lr=True)
    reader, metric = RunReader(tracking_uri), column_metrics(records, ("fid",))[0]
    table = lr_sweep_table(records, reader, metric.key)
    styles = line_styles(records)
    fig, axes = _new_figure(1, 1, (7.5, 4.2))
    ax, top = axes[0][0], blended_transform_factory(axes[0][0].transData, axes[0][0].transAxes)
    marked = set()
    for i, (label, rows) in enumerate(table.groupby("method", sort=False)):
        done = rows.dropna(subset=["fid_mean"])
        ax.plot(done["lr"], done["fid_mean"], marker="o", label=label, **styles[label])
        for status, colour, column in (("diverged", "red", "n_diverged"), ("collapsed", "purple", "n_collapsed"),
                                       ("sanitized", "orange", "nonfinite_steps")):
            for lr in rows.loc[rows[column] > 0, "lr"]:
                y = 0.97 - 0.06 * i
                ax.plot([lr], [y], transform=top, marker=MARKERS[status], ms=10, mew=2.5, color=colour,
                        linestyle="none", clip_on=False, fillstyle="none",
                        label=f"_{status}" if status in marked else status)
                marked.add(status)
                ax.annotate(label, (lr, y), xycoords=top, xytext=(6, -3), textcoords="offset points", fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"final {metric.name} (mean over finished seeds)")
    ax.set_title("Learning-rate sweep: at that lr a seed diverged (red x), collapsed (purple square) or had non-finite "
                 "steps repaired (orange triangle)", fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda k: labels[k] in MARKERS)  # the marks last
    fig.legend([handles[k] for k in order], [labels[k] for k in order], loc="outside right center", fontsize=8)
    return fig, table


def lr_sweep_figure(manifest_records, tracking_uri: str, out_dir) -> list[Path]:
    """Write out_dir/lr_sweep.png, .pdf and lr_sweep.csv."""
    fig, table = build_lr_sweep(manifest_records, tracking_uri)
    paths = _save_figure(fig, out_dir, "lr_sweep")
    return paths + [atomic_write_text(Path(out_dir) / "lr_sweep.csv", table.to_csv(index=False))]


# ---- Figure 3: prompts x {teacher, SIM, SiD, DI} -------------------------------------------------------------------
FIGURE3_PROMPTS = 10  # rows: prompts spread evenly over the evaluation prompts


def sample_tensor(client, run_id: str, tmp) -> dict:
    """The newest sample picture's tensor (samples/*.pt) an MLflow run holds: images (uint8) and their prompts."""
    import torch
    names = sorted(a.path for a in client.list_artifacts(run_id, "samples") if a.path.endswith(".pt"))
    if not names:
        raise ValueError(f"MLflow run {run_id} holds no sample tensor (samples/*.pt)")
    newest = ([n for n in names if Path(n).name.startswith("step-")] or names)[-1]
    return torch.load(client.download_artifacts(run_id, newest, str(tmp)), weights_only=True)


def figure3_columns(records) -> list[dict]:
    """One record per column: the teacher row with the most steps first, then each distilled label; seed 0 (or
    the lowest seed) of each."""
    groups = by_label(records)
    teachers = [recs for recs in groups.values() if recs[0]["method"] == "teacher"]
    chosen = [max(teachers, key=lambda recs: recs[0]["nfe"])] if teachers else []
    chosen += [recs for recs in groups.values() if recs[0]["method"] != "teacher"]
    return [min(recs, key=lambda r: r["seed"]) for recs in chosen]


def build_figure3(manifest_records, tracking_uri: str):
    """Figure 3's layout: one row per prompt, one column per method, each the same prompt and evaluation noise."""
    import tempfile

    from mlflow.tracking import MlflowClient
    records = select(manifest_records, "table3")
    columns = figure3_columns(records)
    client = MlflowClient(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        samples = [sample_tensor(client, r["run_id"], Path(tmp) / str(i)) for i, r in enumerate(columns)]
    prompts = samples[0]["prompts"]
    if any(s["prompts"] != prompts for s in samples):
        raise ValueError("the sample pictures of table3's runs are for different prompts")
    k = min(FIGURE3_PROMPTS, len(prompts))
    rows = [round(i * (len(prompts) - 1) / max(k - 1, 1)) for i in range(k)]
    fig, axes = _new_figure(k, len(columns), (1.3 * len(columns) + 2.2, 1.3 * k))
    for j, (rec, s) in enumerate(zip(columns, samples)):
        title = rec["label"] + ("" if rec["method"] == "teacher" else f"\n(1 step, seed {rec['seed']})")
        axes[0][j].set_title(title, fontsize=7)
        for i, p in enumerate(rows):
            ax = axes[i][j]
            ax.imshow(s["images"][p].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
            if j == 0:
                ax.set_ylabel(prompts[p], fontsize=6, rotation=0, ha="right", va="center")
    fig.suptitle(f"Figure 3 ({records[0]['scale']}-scale reproduction on {records[0]['dataset']}; paper: PixArt-alpha "
                 "512px): one prompt per row;\nthe one-step generators share their evaluation noise, the teacher draws "
                 "its own", fontsize=8)
    return fig


def figure3(manifest_records, tracking_uri: str, out_dir) -> list[Path]:
    """Write out_dir/figure3.png and .pdf."""
    return _save_figure(build_figure3(manifest_records, tracking_uri), out_dir, "figure3")
