"""The report page (workflow/report/html.py) the smoke DAG writes as part of all_tables, read back with the stdlib's
HTML parser: every table with the .md's cells and the csv's numbers, every figure's PNG embedded byte for byte,
nothing loaded from elsewhere, each run's MLflow link and provenance; the command's bad inputs; a study's result."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workflow.report import FIGURES, TABLES
from workflow.report.html import FLAGS, PNG
from workflow.report.stats import num

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent / "study"))  # the study tests' helpers (no conftest.py)
from study_helpers import PROMPTS, Server, tokens, write_set  # noqa: E402

VOID = {"meta", "img", "br", "input", "link", "hr"}
RUN_LINK = re.compile(r"^http://127\.0\.0\.1:5000/#/experiments/(\d+)/runs/([0-9a-f]{32})$")
EXPERIMENTS = yaml.safe_load((ROOT / "configs" / "scales" / "smoke.yaml").read_text())["experiments"]


class Node:
    def __init__(self, tag, attrs, parent=None):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def find_all(self, tag, **attrs) -> list["Node"]:
        out = []
        for c in self.children:
            if isinstance(c, Node):
                if c.tag == tag and all(c.attrs.get(k) == v or (k == "cls" and v in c.classes())
                                        for k, v in attrs.items()):
                    out.append(c)
                out += c.find_all(tag, **attrs)
        return out

    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()


class Tree(HTMLParser):
    """A minimal DOM: elements with attributes, children and text (entities decoded)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.root = self.node = Node("#root", {})
        self.all_attrs: list[tuple[str, str, str]] = []  # (tag, attribute, value) of every element
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.all_attrs += [(tag, k, v or "") for k, v in attrs]
        node = Node(tag, attrs, self.node)
        self.node.children.append(node)
        if tag not in VOID:
            self.node = node

    def handle_endtag(self, tag):
        n = self.node
        while n is not self.root and n.tag != tag:
            n = n.parent
        if n is not self.root:
            self.node = n.parent

    def handle_data(self, data):
        self.node.children.append(data)


@pytest.fixture(scope="module")
def tree(smoke_local):
    """The page all_tables wrote, parsed."""
    return Tree((smoke_local / "report.html").read_text(encoding="utf-8"))


def _md_table(path: Path) -> tuple[list[str], list[str], list[list[str]]]:
    """(caption lines, header, rows) of a table's .md (tables.py to_markdown)."""
    lines = path.read_text().splitlines()
    caption = [ln[1:-1] for ln in lines if ln.startswith("*")]
    rows = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines
            if ln.startswith("| ")]
    return caption, rows[0], rows[1:]


def _cells(tr: Node) -> list[Node]:
    return tr.find_all("td")


def test_every_table_of_the_scale_shows_the_papers_rows_and_ours_with_the_csvs_numbers(smoke_local, tree):
    tables = [t for t in TABLES if t in EXPERIMENTS]
    assert tables == ["table1", "table2"]
    for t in tables:
        found = tree.root.find_all("table", **{"data-table": t})
        assert len(found) == 1, t
        table = found[0]
        caption, header, md_rows = _md_table(smoke_local / "tables" / f"{t}.md")
        assert [th.text() for th in table.find_all("th")] == header
        section = table.parent.parent
        assert [p.text() for p in section.find_all("p")] == caption  # the caption lines, study line included
        paper, ours = table.find_all("tbody", cls="paper"), table.find_all("tbody", cls="ours")
        assert len(paper) == len(ours) == 1
        rows = paper[0].find_all("tr") + ours[0].find_all("tr")
        assert [[td.text() for td in _cells(tr)] for tr in rows] == md_rows  # the .md's cells, row for row

        csv = pd.read_csv(smoke_local / "tables" / f"{t}.csv", dtype=str, keep_default_na=False)
        assert len(paper[0].find_all("tr")) == (csv["source"] == "paper").sum() > 0
        ours_csv = csv[csv["source"] == "ours"]
        assert len(ours[0].find_all("tr")) == len(ours_csv) > 0
        for tr, (_, row) in zip(ours[0].find_all("tr"), ours_csv.iterrows()):
            cell = {td.attrs["data-col"]: td for td in _cells(tr)}
            assert cell["method"].text() == row["method"]
            assert cell["paper_fid"].text() == f"{float(row['paper_fid']):.2f}"  # the paper's value beside ours
            mean = float(row["fid_mean"])
            if int(row["n_finished"]) >= 2:  # mean ± 95% CI of the seeds, as the csv holds them
                assert cell["fid"].text() == f"{num(mean)} ± {num(float(row['fid_ci95']), mean)}" == row["fid"]
            else:
                assert cell["fid"].text() == f"{num(mean)} (n=1)" == row["fid"]
            assert cell["is"].text() == row["is"] and cell["n_seeds"].text() == row["n_seeds"]
            spans = cell["flag"].find_all("span")
            assert "; ".join(s.text() for s in spans) == row["flag"]
            for s in spans:  # the verdict's words kept, and its colour by kind
                kind = next(css for prefix, css, _ in FLAGS if s.text().startswith(prefix))
                assert s.classes() == ["flag", kind]
    sim = tree.root.find_all("table", **{"data-table": "table1"})[0].find_all("tbody", cls="ours")[0].find_all("tr")[0]
    assert len(_cells(sim)[-1].find_all("span")) == 2  # SIM vs SiD and SIM vs DI: table1's two claims
    legend = {s.classes()[1]: s.text() for s in tree.root.find_all("span", cls="flag")
              if s.parent.tag == "li"}
    assert legend == {css: prefix for prefix, css, _ in FLAGS}


def test_every_figure_is_embedded_and_nothing_is_loaded_from_elsewhere(smoke_local, tree):
    imgs = {img.attrs["data-file"]: img for img in tree.root.find_all("img")}
    names = [n for f, (exp, files) in FIGURES.items() if exp in EXPERIMENTS for n in files if n.endswith(".png")]
    assert sorted(imgs) == sorted(names) and len(names) == 3
    for name, img in imgs.items():
        src = img.attrs["src"]
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data[:8] == PNG and data == (smoke_local / "figures" / name).read_bytes()
        assert len(img.attrs["alt"]) > 20
        section = img.parent.parent
        assert section.tag == "section" and section.find_all("h3")[0].text()
    tags = {tag for tag, _, _ in tree.all_attrs}
    assert not tags & {"script", "link", "iframe", "object", "embed"}
    for tag, attr, value in tree.all_attrs:
        if attr == "src":
            assert value.startswith("data:image/png;base64,"), (tag, value[:80])
        if attr == "href":
            assert value.startswith("#") or RUN_LINK.match(value), value
    style = "".join(s.text() for s in tree.root.find_all("style"))
    assert "url(" not in style and "@import" not in style and "http" not in style


def test_each_run_of_each_manifest_has_its_mlflow_link_and_provenance(smoke_local, tree):
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{smoke_local / 'mlflow.db'}")
    rows = {}
    for table in tree.root.find_all("table", cls="runs"):
        for tr in table.find_all("tbody")[0].find_all("tr"):
            rows.setdefault(_cells(tr)[0].text(), []).append(tr)
    envs = {_cells(tr)[0].text(): _cells(tr) for tr in tree.root.find_all("table", cls="environments")[0]
            .find_all("tbody")[0].find_all("tr")}
    manifests = sorted((smoke_local / "manifests").glob("*.json"))
    assert [m.stem for m in manifests] == sorted(["table1", "table2", "figure2", "fid_convergence", "lr_sweep"])
    checked = 0
    for m in manifests:
        for rec in json.loads(m.read_text()):
            trs = [tr for tr in rows[rec["name"]] if tr.parent.parent.parent.parent.attrs["id"]
                   == f"runs-{rec['experiment']}"]
            assert len(trs) == 1, rec["name"]
            cells = _cells(trs[0])
            links = trs[0].find_all("a")
            assert len(links) == 1 and links[0].text() == rec["run_id"]
            run = client.get_run(rec["run_id"])
            assert RUN_LINK.match(links[0].attrs["href"]).groups() == (run.info.experiment_id, rec["run_id"])
            assert [c.text() for c in cells[1:4]] == [rec["label"], rec["method"], str(rec["seed"])]
            assert cells[5].text() == run.data.tags["status"]
            if rec["method"] == "teacher":  # an evaluation: its provenance beside its samples, named by a tag
                run_dir = Path(run.data.tags["run_dir"])
                assert run_dir.parent == smoke_local / "teacher_rows" / f"{rec['experiment']}-samples"
            else:
                run_dir = smoke_local / "runs" / rec["name"]
            prov = json.loads((run_dir / "provenance.json").read_text())
            assert cells[7].text() == prov["config_hash"] == run.data.tags["config_hash"]
            commit = cells[8].find_all("span", cls="git-commit")[0]
            assert commit.attrs["title"] == run.data.tags["git_commit"] == prov["git"]["commit"]
            assert commit.text() == prov["git"]["commit"][:12] and len(commit.text()) == 12
            assert cells[9].text() == str(prov["machine"]["torch_threads"])
            assert rec["method"] == "teacher" or cells[9].text() == "1"
            if rec["method"] == "teacher":
                assert prov["teacher_row"]["nfe"] == rec["nfe"] and prov["teacher_row"]["seed"] == rec["seed"]
            assert cells[10].text() == f"CPU ({prov['machine']['cpu_capability']})"
            env = envs[cells[11].text()]
            assert f"torch {prov['packages']['torch']}" in env[2].text() and prov["machine"]["cpu"] in env[1].text()
            checked += 1
    assert checked >= 40  # smoke: 10 table runs and their teacher rows, 16 figure-2 runs twice (figure2,
    # fid_convergence), lr sweep runs
    header = {dt.text(): dd.text() for dt, dd in zip(tree.root.find_all("dt"), tree.root.find_all("dd"))}
    assert header["Scale"] == "smoke" and "sklearn 8x8 digits, unconditional" in header["Dataset(s)"]
    assert re.fullmatch(r"[0-9a-f]{40}( \+ uncommitted changes)?", header["Harness commit"])
    study = tree.root.find_all("section", id="study")[0].text()
    assert "No preference study has answers" in study


def _report(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "workflow.report", "report", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_bad_input_is_one_line_and_writes_nothing(smoke_local, tmp_path):
    out = tmp_path / "page.html"
    cases = [((tmp_path / "nowhere",), "error: results directory not found: "),
             ((), "error: report needs --results")]
    results = tmp_path / "results"  # a copy of the smoke results without table1.csv, then without a figure
    shutil.copytree(smoke_local / "manifests", results / "manifests")
    shutil.copytree(smoke_local / "tables", results / "tables")
    (results / "tables" / "table1.csv").unlink()
    cases.append(((results,), f"error: table csv missing: {results / 'tables' / 'table1.csv'}"))
    for args, expected in cases:
        p = _report(*(["--results", *args] if args else []), "--out", out)
        assert p.returncode == 2 and p.stdout == "", p.stderr
        assert p.stderr.endswith("\n") and "\n" not in p.stderr[:-1] and p.stderr.startswith(expected), p.stderr
        assert not out.exists() and not (results / "report.html").exists()
    shutil.copy(smoke_local / "tables" / "table1.csv", results / "tables")
    p = _report("--results", results)  # no figures folder, and no MLflow store in the copy
    assert p.returncode == 2 and p.stderr.startswith(f"error: figure missing: {results / 'figures'}"), p.stderr
    shutil.copytree(smoke_local / "figures", results / "figures")
    p = _report("--results", results)
    assert p.returncode == 2 and p.stderr == f"error: MLflow tracking store not found: sqlite:///{results}/mlflow.db\n"
    assert sorted(p.name for p in results.iterdir()) == ["figures", "manifests", "tables"]


def test_a_studys_answers_show_its_win_rate_and_wilson_interval(smoke_local, tmp_path):
    """A study of two small image sets answered by three raters through the real server: the page (built here from
    the smoke results with that study) shows what study_result counts in the database."""
    import requests

    from workflow.study.build import build_study
    from workflow.study.results import study_result
    prompts = PROMPTS[:5]  # PROMPTS[3] holds markup, which the page must show as text
    a, b = write_set(tmp_path / "sim.pt", prompts, 1), write_set(tmp_path / "teacher.pt", prompts, 2)
    study = tmp_path / "study"
    build_study(a, b, study, "SIM", "Teacher <20 steps>", n_prompts=5, raters=3, seed=0)
    out = tmp_path / "page.html"
    assert _report("--results", smoke_local, "--study", study, "--out", out).returncode == 0
    assert "has no answers yet" in Tree(out.read_text()).root.find_all("section", id="study")[0].text()
    server = Server(study)
    try:
        for r, token in enumerate(tokens(study)):
            for k in range(5):  # raters choose differently: some pairs won by each side
                page = requests.get(f"{server.base}/r/{token}", timeout=10).text
                pair = re.search(r'name="pair" value="(\d+)"', page)[1]
                choice = "left" if (r + k) % 3 else "right"
                resp = requests.post(f"{server.base}/r/{token}/answer", data={"pair": pair, "choice": choice},
                                     timeout=10, allow_redirects=False)
                assert resp.status_code == 303
    finally:
        server.stop()
    result = study_result(study)
    assert result["total"] == 15 and result["raters_answered"] == 3 and 0 < result["wins_a"] < 15
    p = _report("--results", smoke_local, "--study", study, "--out", out, "--mlflow-ui", "http://mlflow.example:8080/")
    assert p.returncode == 0, p.stderr
    text = out.read_text()
    tree = Tree(text)
    section = tree.root.find_all("section", id="study")[0]
    assert section.find_all("span", cls="win-rate")[0].text() == f"{100 * result['rate_a']:.1f}%"
    assert section.find_all("span", cls="wilson")[0].text() == \
        f"[{100 * result['wilson95_low']:.1f}%, {100 * result['wilson95_high']:.1f}%]"
    assert "of 15 answers" in section.text() and "from 3 of 3 invited raters" in section.text()
    assert "Teacher <20 steps>" in section.text() and "Teacher <20 steps>" not in text  # escaped
    pairs = section.find_all("table", cls="study")[0].find_all("tbody")[0].find_all("tr")
    assert [[td.text() for td in _cells(tr)] for tr in pairs] == \
        [[str(q["pair"]), q["prompt"], str(q["wins_a"]), str(q["wins_b"])] for q in result["pairs"]]
    assert PROMPTS[3] in {q["prompt"] for q in result["pairs"]} and PROMPTS[3] not in text
    links = [v for _, k, v in tree.all_attrs if k == "href" and not v.startswith("#")]
    assert links and all(re.match(r"^http://mlflow\.example:8080/#/experiments/\d+/runs/[0-9a-f]{32}$", v)
                         for v in links)


def test_every_verdict_the_claims_write_has_its_own_colour():
    """Each wording of stats.py's two claim checks, on real summaries, gets the class of its kind (the page refuses a
    verdict of an unknown kind rather than showing it uncoloured)."""
    from workflow.report.html import flag_cell, flag_class
    from workflow.report.stats import better_claim, ratio_claim
    nan = float("nan")

    def s(mean, half, n=3):
        return {"mean": mean, "half": half, "n": n}
    better = [((s(1, .1), s(2, .1)), "flag-agrees"), ((s(1, 1), s(2, 1)), "flag-consistent"),
              ((s(1, nan, 1), s(2, nan, 1)), "flag-consistent"), ((s(2, .1), s(1, .1)), "flag-contradicts"),
              ((s(2, 1), s(1, 1)), "flag-contradicts"), ((s(2, nan, 1), s(1, nan, 1)), "flag-contradicts"),
              ((s(1, .1), s(1, .1)), "flag-contradicts"), ((s(1, .1, 0), s(1, .1)), "flag-unchecked")]
    ratio = [((s(10, .1), s(10, .1)), "flag-consistent"), ((s(10.2, .01), s(10, .01)), "flag-agrees"),
             ((s(5, .1), s(10, .1)), "flag-contradicts"), ((s(9.9, .5), s(10, .5)), "flag-contradicts"),
             ((s(10, nan, 1), s(10, nan, 1)), "flag-agrees"), ((s(1, nan, 0), s(1, 1)), "flag-unchecked")]
    texts = [(better_claim(*args, "SIM", "DI"), css) for args, css in better] + \
        [(ratio_claim(*args, "SIM", "teacher", 0.996, "aesthetic score"), css) for args, css in ratio]
    for text, css in texts:
        assert flag_class(text) == css, text
    assert {css for _, css in texts} == {css for _, css, _ in FLAGS}
    joined = "; ".join(t for t, _ in texts[:2])
    assert flag_cell(joined) == (f'<span class="flag flag-agrees">{texts[0][0]}</span>; '
                                 f'<span class="flag flag-consistent">{texts[1][0]}</span>')
    with pytest.raises(ValueError, match="claim flag of unknown kind"):
        flag_class("supports the paper")


def test_run_links_open_the_tracking_server_when_there_is_one():
    from workflow.report.html import DEFAULT_UI, default_ui
    assert default_ui("sqlite:////tmp/results/mlflow.db") == DEFAULT_UI == "http://127.0.0.1:5000"
    assert default_ui("http://node7.cluster:41234") == "http://node7.cluster:41234"
    assert default_ui("https://user:secret@mlflow.lab.org/tracking/") == "https://mlflow.lab.org/tracking"
