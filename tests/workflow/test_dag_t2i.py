"""Table 3 and Figure 3 through the whole DAG at smoke scale: the text-to-image toy's folder assets (tiny T5, PixArt
teacher, scorer stand-ins) built by Snakemake, SIM, SiD and DI on the t2i_digits testbed, the DPM-Solver teacher rows,
MLflow, the table with the paper's rows and the "almost lossless" flags, and the figure grid. A rerun is a no-op."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workflow.report.manifest import by_label

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = {"aes_score": "aesthetic", "image_reward": "imagereward", "pick_score": "pickscore",
           "align_train": "align_train", "align_heldout": "align_heldout", "fid": "fid"}


def _snakemake(results, *args):
    return subprocess.run([sys.executable, "-m", "snakemake", *args, "--cores", "2", "--quiet", "progress",
                           "--config", "scale=smoke_t2i", f"results_dir={results}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def smoke_t2i(tmp_path_factory):
    results = tmp_path_factory.mktemp("smoke_t2i") / "results"
    p = _snakemake(results, "all_tables")
    assert p.returncode == 0, p.stderr[-3000:]
    return results


def test_the_folder_assets_are_built_in_their_layouts(smoke_t2i):
    assets = smoke_t2i / "assets"
    assert (assets / "t5_toy" / "tokenizer").is_dir() and (assets / "t5_toy" / "text_encoder").is_dir()
    assert (assets / "teacher_t2i_digits" / "transformer" / "config.json").is_file()
    teacher = json.loads((assets / "teacher_t2i_digits" / "teacher.json").read_text())
    assert teacher["iterations"] == 30 and teacher["max_tokens"] == 16
    for part in ("aesthetic/head.pth", "pickscore/model", "imagereward/ImageReward.pt"):
        assert (assets / "scorers_toy" / part).exists()
    assert not list(assets.glob(".*.tmp"))  # atomic folders: no temporary left


def test_table3_lists_the_papers_rows_and_ours_from_mlflow(smoke_t2i):
    from mlflow.tracking import MlflowClient
    frame = pd.read_csv(smoke_t2i / "tables" / "table3.csv")
    paper = pd.read_csv(ROOT / "workflow" / "paper" / "table3_t2i.csv", comment="#")
    listed = frame[frame["source"] == "paper"]
    assert list(listed["method"]) == list(paper["model"]) and list(listed["group"]) == list(paper["eval_set"])
    assert listed["paper_aes_score"].tolist() == paper["aes_score"].tolist()
    ours = frame[frame["source"] == "ours"].set_index("method")
    assert list(ours.index) == ["SIM", "SiD (alpha=1.0)", "DI", "Teacher (DPM-Solver++, 30 steps)",
                                "Teacher (DPM-Solver++, 20 steps)"]
    client = MlflowClient(f"sqlite:///{smoke_t2i / 'mlflow.db'}")
    records = json.loads((smoke_t2i / "manifests" / "table3.json").read_text())
    for label, recs in by_label(records).items():
        finals = [client.get_run(r["run_id"]).data.metrics for r in recs]
        for column, key in COLUMNS.items():
            values = [m[f"final/{key}"] for m in finals]
            assert all(math.isfinite(v) for v in values)
            assert ours.loc[label, f"{column}_mean"] == pytest.approx(np.mean(values), rel=1e-12)
        assert 0 <= ours.loc[label, "align_train_mean"] <= 1
    assert ours.loc["SIM", "paper_aes_score"] == 6.42 and ours.loc["Teacher (DPM-Solver++, 30 steps)",
                                                                     "paper_aes_score"] == 5.97
    assert math.isnan(ours.loc["Teacher (DPM-Solver++, 20 steps)", "paper_aes_score"])  # no paper row at 20 steps
    flags = ours.loc["SIM", "flag"].split("; ")
    assert len(flags) == 2 and "toy aesthetic stand-in (paper: >= 99.6%)" in flags[0]
    assert "toy PickScore stand-in (cosine) (paper: >= 100%)" in flags[1]
    kept = ours.loc["SIM", "aes_score_mean"] / ours.loc["Teacher (DPM-Solver++, 30 steps)", "aes_score_mean"]
    assert f"SIM keeps {100 * kept:.1f}%" in flags[0]
    md = (smoke_t2i / "tables" / "table3.md").read_text()
    assert "Our toy aesthetic stand-in" in md and "Our toy ImageReward stand-in" in md  # never the real names
    assert "no study of ours has responses yet" in md and "| Evaluation set " in md


def test_figure3_and_a_rerun_that_does_nothing(smoke_t2i):
    from PIL import Image
    png = smoke_t2i / "figures" / "figure3.png"
    assert (smoke_t2i / "figures" / "figure3.pdf").stat().st_size > 0
    w, h = Image.open(png).size
    assert min(w, h) > 500  # ten prompt rows, four method columns
    before = {p: p.stat().st_mtime_ns for p in (smoke_t2i / "tables").iterdir()}
    p = _snakemake(smoke_t2i, "all_tables")
    assert p.returncode == 0 and {q: q.stat().st_mtime_ns for q in (smoke_t2i / "tables").iterdir()} == before


def test_snakemake_study_builds_the_study_and_its_answers_fill_the_user_preference_cell(smoke_t2i):
    """`snakemake study` builds Appendix B.4's study from the DAG's own runs (SIM seed 0 against the 20-step teacher
    row, images fetched from MLflow); three raters answer every pair through the real server; `snakemake all_tables`
    then makes Table 3 again and its SIM row shows the win rate and interval the database holds. A second
    `snakemake study` does nothing, and once the runs change it refuses to replace the study and its answers."""
    import re
    import socket
    import sqlite3
    import time

    import requests
    import torch
    from PIL import Image

    from workflow.report.tables import study_text
    from workflow.study.results import study_result
    p = _snakemake(smoke_t2i, "study")
    assert p.returncode == 0, p.stderr[-3000:]
    study = smoke_t2i / "study"
    spec = json.loads((study / "study.json").read_text())
    records = json.loads((smoke_t2i / "manifests" / "study-table3.json").read_text())
    sim = next(r for r in records if r["label"] == "SIM" and r["seed"] == 0)
    teacher = next(r for r in records if r["method"] == "teacher" and r["nfe"] == 20 and r["seed"] == 0)
    assert (spec["label_a"], spec["label_b"]) == ("SIM", "Teacher (DPM-Solver++, 20 steps)")
    assert spec["sources"]["a"]["mlflow_run_id"] == sim["run_id"]
    assert spec["sources"]["b"]["mlflow_run_id"] == teacher["run_id"]
    assert len(spec["pairs"]) == 17 and len(spec["raters"]) == 30  # B.4's 17 prompts; 30 invitations
    a = torch.load(sorted((smoke_t2i / "runs" / sim["name"] / "samples").glob("step-*.pt"))[-1], weights_only=True)
    b = torch.load(smoke_t2i / "teacher_rows" / "table3-samples" / "nfe20-s0" / "samples" / "teacher.pt",
                   weights_only=True)
    for pair in spec["pairs"]:  # each pair: the same prompt's images of both sets, pixel for pixel
        assert pair["prompt"] == a["prompts"][pair["index"]] == b["prompts"][pair["index"]]
        for side, s in (("a", a), ("b", b)):
            png = np.asarray(Image.open(study / "images" / f"{pair[f'image_{side}']}.png"))
            assert np.array_equal(png, s["images"][pair["index"]].permute(1, 2, 0).numpy())
    before = (study / "study.json").stat().st_mtime_ns
    p = _snakemake(smoke_t2i, "study")
    assert p.returncode == 0 and (study / "study.json").stat().st_mtime_ns == before

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "workflow.study", "serve", str(study), "--port", str(port)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                requests.get(base + "/static/study.css", timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        for line in (study / "invitations.csv").read_text().splitlines()[1:4]:
            token = line.split(",")[1]
            for _ in range(17):  # every rater clicks the left image: which method that is, the rater's order decides
                page = requests.get(f"{base}/r/{token}", timeout=10).text
                pair = re.search(r'name="pair" value="(\d+)"', page)[1]
                r = requests.post(f"{base}/r/{token}/answer", data={"pair": pair, "choice": "left"}, timeout=10,
                                  allow_redirects=False)
                assert r.status_code == 303
    finally:
        server.terminate()
        server.wait(10)
    con = sqlite3.connect(study / "answers.db")
    total = con.execute("select count(*) from answers").fetchone()[0]
    con.close()
    result = study_result(study)
    assert total == result["total"] == 51 and result["raters_answered"] == 3
    p = _snakemake(smoke_t2i, "all_tables")
    assert p.returncode == 0, p.stderr[-2000:]
    frame = pd.read_csv(smoke_t2i / "tables" / "table3.csv")
    ours = frame[frame["source"] == "ours"].set_index("method")
    assert ours.loc["SIM", "user_pref"] == study_text(result)
    assert f"{100 * result['rate_a']:.1f}% [" in ours.loc["SIM", "user_pref"]
    paper = frame[frame["source"] == "paper"]
    assert "45.12%" in set(paper["paper_user_pref"].dropna())
    md = (smoke_t2i / "tables" / "table3.md").read_text()
    assert "no study of ours has responses yet" not in md and "51 answers, 3 raters" in md

    # other runs: a new SIM run id, as after retraining. Snakemake reruns the rule; the job refuses and the study
    # with its answers stays as it was
    manifest = smoke_t2i / "manifests" / "study-table3.json"
    db = (study / "answers.db").read_bytes()
    done = smoke_t2i / "runs" / sim["name"] / "done.json"
    original = done.read_bytes()
    done.write_text(json.dumps({**json.loads(original), "run_id": "0" * 32}))
    try:
        p = _snakemake(smoke_t2i, "study", "--forcerun", "study")
        assert p.returncode != 0 and "holds a study of other runs" in p.stderr, p.stderr[-2000:]
        assert (study / "answers.db").read_bytes() == db and (study / "study.json").stat().st_mtime_ns == before
    finally:
        done.write_bytes(original)
    assert "0" * 32 in manifest.read_text()


def test_the_report_page_shows_table3_figure3_and_the_study_in_a_browser(smoke_t2i, page, request, tmp_path):
    """After the study has answers (the test above), the page all_tables wrote: Table 3 with the study's cell,
    Figure 3 decoded, the study's win rate and interval as the database gives them; a clean console."""
    from browser import broken_images, console_errors, screenshot, screenshot_dir
    from selenium.webdriver.common.by import By

    from workflow.study.results import study_result
    result = study_result(smoke_t2i / "study")
    assert result["total"] == 51  # answered by the study test before this one
    page.get((smoke_t2i / "report.html").resolve().as_uri())
    assert broken_images(page) == [] and console_errors(page) == []
    tables = [t.get_attribute("data-table") for t in page.find_elements(By.CSS_SELECTOR, "table.results")]
    assert tables == ["table3"]
    images = page.find_elements(By.CSS_SELECTOR, "figure img")
    assert len(images) == 1 and page.execute_script("return arguments[0].naturalWidth", images[0]) > 500
    table = page.find_element(By.CSS_SELECTOR, 'table[data-table="table3"]').text
    assert f"{100 * result['rate_a']:.1f}% [" in table and "51 answers, 3 raters" in table
    study = page.find_element(By.ID, "study")
    assert study.find_element(By.CLASS_NAME, "win-rate").text == f"{100 * result['rate_a']:.1f}%"
    assert study.find_element(By.CLASS_NAME, "wilson").text == \
        f"[{100 * result['wilson95_low']:.1f}%, {100 * result['wilson95_high']:.1f}%]"
    assert len(study.find_elements(By.CSS_SELECTOR, "tbody tr")) == 17
    screenshot(page, screenshot_dir(request, tmp_path), "report-page-t2i")
