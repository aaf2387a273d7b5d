"""The report page: every table and figure of a results folder, the runs behind them with their provenance, and the
preference study's result, as one self-contained HTML file (inline style, pictures as data: URIs, no script; nothing
is loaded from the network or from another file, so it can be mailed, archived or printed as it is).

Built only from what the DAG wrote: tables/<table>.csv, figures/*.png, manifests/<target>.json, the MLflow runs the
manifests name (the source the tables trust: status, config hash and commit tags, the experiment of the run link)
and each run directory's provenance.json (package versions, CPU/GPU, threads: MLflow does not hold them).
"""
from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path

from workflow.report import FIGURES, TABLES

DEFAULT_UI = "http://127.0.0.1:5000"   # where README's `mlflow ui` command serves the runs
PNG = b"\x89PNG\r\n\x1a\n"
# a claim's verdict (workflow/report/stats.py better_claim, ratio_claim) by how its text starts -> css class, legend
FLAGS = (("agrees with paper", "flag-agrees", "the paper's claim holds on our rows"),
         ("consistent but not significant", "flag-consistent", "our means go the paper's way, but not significantly"),
         ("contradicts paper", "flag-contradicts", "our rows go against the paper's claim (the text says whether "
                                                   "significantly)"),
         ("not checked", "flag-unchecked", "a row of the claim has no finished seeds"))
FIGURE_TEXT = {  # target -> (heading, what the picture shows: its alt text)
    "figure2": ("Figure 2: FID and Inception Score vs training iterations",
                "FID and Inception Score against training iterations at each learning rate, one line per method and "
                "ablation, mean over seeds with a min-max band, diverged runs marked with an x"),
    "fid_convergence": ("Appendix B.6: SIM vs SiD FID convergence",
                        "FID against training iterations for SIM and SiD, mean over seeds with a min-max band"),
    "lr_sweep": ("Beyond the paper: final FID vs learning rate",
                 "final FID against learning rate for each method, diverged, collapsed and repaired cells marked"),
    "figure3": ("Figure 3: prompts by teacher, SIM, SiD and DI",
                "a grid of generated pictures, one row per prompt, one column per teacher, SIM, SiD and DI"),
}

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1b1b; margin: 0;
       background: #fff; }
main { max-width: 78rem; margin: 0 auto; padding: 1rem 1.5rem 3rem; }
h1 { font-size: 1.6rem; margin: 0.5rem 0; } h2 { font-size: 1.3rem; margin-top: 2.2rem; border-bottom: 2px solid #ccc; }
h3 { font-size: 1.05rem; margin-top: 1.6rem; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 0.15rem 1rem; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; }
.scroll { overflow-x: auto; margin: 0.6rem 0; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.82rem; }
th, td { border: 1px solid #ddd; padding: 0.2rem 0.45rem; text-align: left; vertical-align: top; }
th { background: #f0f0f0; position: sticky; top: 0; }
tbody.ours td { background: #f2f7fd; } tbody.ours tr:first-child td { border-top: 3px solid #5a7fb0; }
td[data-col="flag"] { min-width: 24rem; } td[data-col="paper_row"], td[data-col="user_pref"] { min-width: 12rem; }
td.num, table.runs td { white-space: nowrap; } td.num { text-align: right; } .wrap { white-space: normal; }
.caption p { margin: 0.25rem 0; font-size: 0.9rem; } code, .mono { font-family: ui-monospace, Menlo, monospace; }
.flag { padding: 0 0.3rem; border-radius: 3px; border-left: 4px solid; line-height: 1.7;
        -webkit-box-decoration-break: clone; box-decoration-break: clone; }
.flag-agrees { background: #dff3e2; border-color: #1e7b34; color: #0f4a1d; }
.flag-consistent { background: #fdf3d0; border-color: #a77b00; color: #5c4400; }
.flag-contradicts { background: #fbe0de; border-color: #b3261e; color: #6d130e; font-weight: 600; }
.flag-unchecked { background: #ececec; border-color: #777; color: #333; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.9rem; color: #444; }
nav ul { columns: 2; margin: 0.3rem 0; }
@page { size: A4 landscape; margin: 1cm; }
@media print {
  body { font-size: 10pt; } main { max-width: none; padding: 0; }
  .scroll { overflow: visible; border: none; }
  table { width: 100%; font-size: 7pt; } th { position: static; } td[data-col] { min-width: 0; }
  td, th, table.runs td { white-space: normal; overflow-wrap: break-word; }  /* wide tables wrap, never cut */
  .mono, a.mlflow { overflow-wrap: anywhere; }  /* hashes and run ids have no other place to wrap */
  tr, figure, .flag { break-inside: avoid; }
  section.part { break-before: page; } nav { display: none; }
  .flag, tbody.ours td, th { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""

e = html.escape


def flag_class(text: str) -> str:
    """The css class of one verdict; a text no verdict starts with is a ValueError (a new kind needs its colour)."""
    for prefix, css, _ in FLAGS:
        if text.startswith(prefix):
            return css
    raise ValueError(f"claim flag of unknown kind: {text!r}")


def flag_cell(text: str) -> str:
    """A row's verdicts ('; '-joined in the csv), each in its colour with its words kept."""
    parts = [p for p in text.split("; ") if p]
    return "; ".join(f'<span class="flag {flag_class(p)}">{e(p)}</span>' for p in parts)


def _table(head: list[str], rows: list[list[str]], cls: str = "", raw: bool = False) -> str:
    """A scrolling table; cells are escaped here unless ``raw`` (already HTML)."""
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c if raw else e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


# ---------------------------------------------------------------------------------------------------------- inputs

def _manifest(results: Path, target: str) -> list[dict]:
    from workflow.report.manifest import load_manifest
    path = results / "manifests" / f"{target}.json"
    if not path.is_file():
        raise ValueError(f"manifest missing: {path} (the DAG writes it with {target})")
    return load_manifest(path)


def _read_csv(path: Path):
    """The csv's cells exactly as written (strings, '' where empty)."""
    import pandas as pd
    if not path.is_file():
        raise ValueError(f"table csv missing: {path}")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _png(path: Path) -> bytes:
    if not path.is_file():
        raise ValueError(f"figure missing: {path}")
    data = path.read_bytes()
    if not data.startswith(PNG):
        raise ValueError(f"figure {path} is not a PNG file")
    return data


# ---------------------------------------------------------------------------------------------------------- tables

def table_section(which: str, frame, records, study) -> str:
    """The table as its .md shows it (same columns, headers and cells; paper rows, then ours), flags in colour,
    the caption lines under the title."""
    from workflow.report.manifest import select, testbed_spec
    from workflow.report.tables import caption, display, table_spec
    tb = testbed_spec(select(records, which))
    spec = table_spec(which).for_testbed(tb)
    cols = display(spec, {m.column: tb.for_column(m.column) for m in spec.metrics})
    missing = [k for k, _ in cols if k not in frame.columns]
    if missing:
        raise ValueError(f"table csv {which}.csv lacks the column(s) {missing}; make the table again")
    decimals = {f"paper_{m.column}": m.decimals for m in spec.metrics}
    numeric = {spec.paper_columns.steps, "n_seeds", *decimals, *(m.column for m in spec.metrics)}

    def cell(key: str, value: str) -> str:
        if key == "flag":
            return flag_cell(value)
        if key in decimals and value != "":
            value = f"{float(value):.{decimals[key]}f}"  # the paper's values as it prints them (as in the .md)
        return e(value)
    head = "".join(f"<th>{e(name)}</th>" for _, name in cols)
    opening = {k: f'<td class="num" data-col="{e(k)}">' if k in numeric else f'<td data-col="{e(k)}">' for k, _ in cols}
    bodies = []
    for source in ("paper", "ours"):
        rows = frame[frame["source"] == source]
        trs = "".join("<tr>" + "".join(f"{opening[k]}{cell(k, r[k])}</td>" for k, _ in cols) + "</tr>"
                      for _, r in rows.iterrows())
        bodies.append(f'<tbody class="{source}">{trs}</tbody>')
    lines = "".join(f"<p>{e(t)}</p>" for t in caption(which, frame, records, study))
    return (f'<section class="table" id="{e(which)}"><h3>{e(spec.title)}</h3><div class="caption">{lines}</div>'
            f'<div class="scroll"><table class="results" data-table="{e(which)}"><thead><tr>{head}</tr></thead>'
            f'{"".join(bodies)}</table></div></section>')


def legend() -> str:
    items = "".join(f'<li><span class="flag {css}">{e(prefix)}</span>: {e(what)}</li>' for prefix, css, what in FLAGS)
    return f'<div class="legend"><p>Flag column: each claim of the paper checked on our rows.</p><ul>{items}</ul></div>'


# --------------------------------------------------------------------------------------------------------- figures

def figure_section(target: str, pngs: dict[str, bytes]) -> str:
    heading, alt = FIGURE_TEXT.get(target, (target, target))
    out = []
    for name, data in pngs.items():
        src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        out.append(f'<figure><img src="{src}" alt="{e(alt)}" data-file="{e(name)}">'
                   f"<figcaption>figures/{e(name)}</figcaption></figure>")
    return f'<section class="figure" id="{e(target)}"><h3>{e(heading)}</h3>{"".join(out)}</section>'


# ------------------------------------------------------------------------------------------------------------ runs

def _provenance(results: Path, rec: dict, run_dir_tag: str | None) -> dict | None:
    """The run directory's provenance.json: under the results folder, or where MLflow says the run ran."""
    for d in (results / "runs" / rec["name"], Path(run_dir_tag) if run_dir_tag else None):
        if d is not None and (d / "provenance.json").is_file():
            return json.loads((d / "provenance.json").read_text())
    return None


def _device(prov: dict) -> str:
    m = prov.get("machine") or {}
    return f"GPU {m['gpu']}" if m.get("gpu") else f"CPU ({m.get('cpu_capability', '?')})"


def _environment(prov: dict) -> tuple[str, str]:
    """(machine, software) of a run: what its arithmetic depends on besides code and config."""
    m = prov.get("machine") or {}
    gpu = f"GPU {m['gpu']} (CUDA {m.get('cuda')})" if m.get("gpu") else "no GPU"
    machine = f"{m.get('cpu', '?')} ({m.get('cpu_capability', '?')}), {gpu}, host {prov.get('host', '?')}; BLAS: " \
        + "; ".join(m.get("blas") or ["?"])
    packages = ", ".join(f"{k} {v}" for k, v in sorted((prov.get("packages") or {}).items()))
    return machine, f"Python {prov.get('python', '?')} on {prov.get('platform', '?')}; {packages}"


def runs_sections(results: Path, manifests: dict[str, list[dict]], tracking_uri: str, ui: str) -> str:
    """One table per experiment: each run of the manifests that read it, with its MLflow link and provenance;
    the machine and package versions once per distinct environment (E1, E2, ...)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from workflow.report.mlflow_reader import check_store
    check_store(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiments: dict[str, dict] = {}  # experiment -> {"targets": [...], "records": {name: rec}}
    for target, records in manifests.items():
        for rec in records:
            exp = experiments.setdefault(rec["experiment"], {"targets": [], "records": {}})
            exp["records"].setdefault(rec["name"], rec)
            if target not in exp["targets"]:
                exp["targets"].append(target)
    envs: dict[tuple[str, str], str] = {}
    out = []
    head = ["Run", "Label", "Method", "Seed", "lr / NFE", "Status", "MLflow run", "Config hash", "Git commit",
            "Threads", "Device", "Env."]
    for experiment, exp in experiments.items():
        rows = []
        for rec in exp["records"].values():
            try:
                run = client.get_run(str(rec["run_id"]))
            except MlflowException:
                raise ValueError(f"run_id {rec['run_id']!r} of {rec['name']} not found in MLflow store "
                                 f"{tracking_uri}") from None
            tags, params = run.data.tags, run.data.params
            url = f"{ui.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
            link = f'<a class="mlflow" href="{e(url)}">{e(run.info.run_id)}</a>'
            step = f"NFE {rec.get('nfe')}" if rec["method"] == "teacher" else f"lr {rec.get('lr')}"
            cells = [e(rec["name"]), e(rec["label"]), e(rec["method"]), e(str(rec["seed"])), e(step),
                     e(tags.get("status", "unknown")), link]
            prov = _provenance(results, rec, tags.get("run_dir"))
            if prov is None and rec["method"] == "teacher":  # rows made before teacher rows kept their provenance
                cells += [f'<span class="wrap">teacher row, no provenance (teacher '
                          f'{e(params.get("teacher", "?"))})</span>', "", "", "", ""]
            elif prov is None:
                cells += [e(tags.get("config_hash", "")), e(tags.get("git_commit", "")),
                          "no provenance.json found", "", ""]
            else:
                config_hash = tags.get("config_hash") or prov.get("config_hash", "")
                if prov.get("config_hash") not in (None, config_hash):
                    config_hash += f" (run directory: {prov['config_hash']})"
                git = prov.get("git") or {}
                commit = tags.get("git_commit") or git.get("commit") or "unknown"
                dirty = " (dirty)" if git.get("dirty") else ""  # uncommitted changes when the run started
                env = envs.setdefault(_environment(prov), f"E{len(envs) + 1}")
                threads = (prov.get("machine") or {}).get("torch_threads", prov.get("threads"))
                cells += [f'<span class="mono config-hash">{e(config_hash)}</span>',  # commit: in full on hover
                          f'<span class="mono git-commit" title="{e(commit)}">{e(commit[:12])}</span>{e(dirty)}',
                          e(str(threads)), e(_device(prov)), e(env)]
            rows.append(cells)
        out.append(f'<section class="runs" id="runs-{e(experiment)}"><h3>Experiment {e(experiment)} '
                   f'(read by {e(", ".join(exp["targets"]))}): {len(rows)} runs</h3>'
                   + _table(head, rows, "runs", raw=True) + "</section>")
    env_rows = [[name, machine, software] for (machine, software), name in envs.items()]
    out.append('<section class="environments"><h3>Environments of the runs</h3>'
               + _table(["Env.", "Machine", "Python, platform and package versions"], env_rows, "environments")
               + "</section>")
    return "".join(out)


# ----------------------------------------------------------------------------------------------------------- study

def study_section(study_dir: Path) -> str:
    """The preference study's result (workflow/study/results.py), or a line saying no study has answers."""
    body = "<p>No preference study has answers (none built under {}).</p>".format(e(str(study_dir)))
    if (study_dir / "study.json").is_file():
        from workflow.study.results import study_result
        r = study_result(study_dir)
        if not r["total"]:
            body = (f"<p>The study in {e(str(study_dir))} ({e(r['label_a'])} vs {e(r['label_b'])}) has no answers "
                    "yet.</p>")
        else:
            pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
            body = (f'<p class="study-result"><strong>{e(r["label_a"])}</strong> chosen over '
                    f'<strong>{e(r["label_b"])}</strong> in <span class="win-rate">{pct(r["rate_a"])}</span> of '
                    f'{r["total"]} answers (Wilson 95% interval <span class="wilson">[{pct(r["wilson95_low"])}, '
                    f'{pct(r["wilson95_high"])}]</span>), from {r["raters_answered"]} of {r["raters_invited"]} '
                    "invited raters.</p>"
                    + _table(["Pair", "Prompt", f"{r['label_a']} chosen", f"{r['label_b']} chosen"],
                             [[str(p["pair"]), p["prompt"], str(p["wins_a"]), str(p["wins_b"])] for p in r["pairs"]],
                             "study"))
    return f'<section class="part" id="study"><h2>Preference study (Appendix B.4)</h2>{body}</section>'


# ------------------------------------------------------------------------------------------------------------ page

def _harness_commit() -> str:
    from sim_core.train.provenance import git_state
    g = git_state()
    return (g["commit"] or "unknown") + (" + uncommitted changes" if g.get("dirty") else "")


def default_ui(tracking_uri: str) -> str:
    """Where the run links point unless told: an MLflow server is its own UI (the managed server of a SLURM DAG
    too), less any user:password in its address; a local store is what `mlflow ui` serves at DEFAULT_UI."""
    from urllib.parse import urlsplit
    u = urlsplit(tracking_uri)
    if u.scheme in ("http", "https") and u.hostname:
        return f"{u.scheme}://{u.hostname}" + (f":{u.port}" if u.port else "") + u.path.rstrip("/")
    return DEFAULT_UI


def build_page(results_dir, tracking_uri: str, tables=None, figures=None, study_dir=None, ui: str | None = None) -> str:
    """The page's HTML. ``tables``/``figures``: the targets to show (None: every one whose manifest the DAG
    wrote); ``study_dir``: the preference study (default <results>/study); ``ui``: the MLflow UI of the run links
    (default_ui). Every input is read before anything is returned; bad input is one ValueError line."""
    ui = ui or default_ui(tracking_uri)
    results = Path(results_dir)
    if not results.is_dir():
        raise ValueError(f"results directory not found: {results}")
    present = lambda t: (results / "manifests" / f"{t}.json").is_file()  # noqa: E731
    tables = [t for t in TABLES if present(t)] if tables is None else list(tables)
    figures = [f for f in FIGURES if present(f)] if figures is None else list(figures)
    unknown = [t for t in tables if t not in TABLES] + [f for f in figures if f not in FIGURES]
    if unknown:
        raise ValueError(f"unknown table or figure {unknown}; tables: {', '.join(TABLES)}; figures: "
                         f"{', '.join(FIGURES)}")
    if not tables and not figures:
        raise ValueError(f"{results} holds no table or figure manifest (run `snakemake all_tables` first)")
    study_dir = Path(study_dir) if study_dir is not None else results / "study"
    manifests = {t: _manifest(results, t) for t in [*tables, *figures]}
    frames = {t: _read_csv(results / "tables" / f"{t}.csv") for t in tables}
    pngs = {f: {n: _png(results / "figures" / n) for n in FIGURES[f][1] if n.endswith(".png")} for f in figures}

    from workflow.report.tables import read_study, table_spec
    table_html = "".join(table_section(t, frames[t], manifests[t], read_study(table_spec(t), study_dir))
                         for t in tables)
    figure_html = "".join(figure_section(f, pngs[f]) for f in figures)
    runs_html = runs_sections(results, manifests, tracking_uri, ui)
    study_html = study_section(study_dir)

    recs = [r for records in manifests.values() for r in records]
    joined = lambda key: "; ".join(dict.fromkeys(str(r[key]) for r in recs if r.get(key))) or "unknown"  # noqa: E731
    serve = f" (mlflow ui --backend-store-uri {tracking_uri} --port 5000)" \
        if tracking_uri.startswith("sqlite:") and ui == DEFAULT_UI else ""
    meta = [("Scale", joined("scale")), ("Dataset(s)", joined("dataset")),
            ("Built", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())), ("Harness commit", _harness_commit()),
            ("Results", str(results.resolve())),
            ("Run links", f"the MLflow UI at {ui}{serve}")]
    toc = "".join(f'<li><a href="#{e(t)}">{e(table_spec(t).title)}</a></li>' for t in tables) + \
        "".join(f'<li><a href="#{e(f)}">{e(FIGURE_TEXT.get(f, (f,))[0])}</a></li>' for f in figures) + \
        '<li><a href="#runs">Runs and provenance</a></li><li><a href="#study">Preference study</a></li>'
    return ("<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>SIM reproduction report: {e(joined('scale'))} scale</title><style>{STYLE}</style></head><body>"
            "<main><header><h1>SIM reproduction report</h1><p>One-step diffusion distillation through Score Implicit "
            "Matching (SIM, NeurIPS 2024) with SiD and Diff-Instruct: the paper's tables beside ours, the figures, "
            "the runs behind them.</p><dl class=\"meta\">"
            + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in meta) + "</dl>"
            f"<nav><ul>{toc}</ul></nav></header>"
            f'<section class="part" id="tables"><h2>Tables</h2>{legend() if tables else ""}'
            f'{table_html or "<p>No tables at this scale.</p>"}</section>'
            f'<section class="part" id="figures"><h2>Figures</h2>{figure_html or "<p>No figures at this scale.</p>"}'
            f'</section><section class="part" id="runs"><h2>Runs and provenance</h2>{runs_html}</section>'
            f"{study_html}</main></body></html>\n")


def write_page(out, results_dir, tracking_uri: str, **kw) -> Path:
    """Build the page, then write it atomically (nothing is written on bad input)."""
    from sim_core.files import atomic_write_text
    text = build_page(results_dir, tracking_uri, **kw)
    return atomic_write_text(out, text)


def page_job(results_dir: str, tracking_uri: str, out: str, tables, figures, study_dir: str) -> str:
    """The DAG's job (like workflow/jobs.py aggregate): the managed server's address is read when it starts."""
    from sim_core.tracking.server import resolve_tracking_uri
    return str(write_page(out, results_dir, resolve_tracking_uri(tracking_uri), tables=tables, figures=figures,
                          study_dir=study_dir))
