"""Building a study folder: the pairs drawn, the PNGs, study.json, hashed tokens, atomicity, the CLI."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sim_core.errors import ConfigError
from sim_core.files import sha256_file
from workflow.study.build import build_study
from workflow.study.db import rater_plan

# fixtures: a conftest.py here would shadow tests/conftest.py for the `from conftest import` of other tests
from study_helpers import image_sets, server_factory, study_dir, study_template  # noqa: F401
from study_helpers import PROMPTS, ROOT, one_line, tokens, write_set


def test_build_writes_the_study(study_template, image_sets):
    d = study_template
    study = json.loads((d / "study.json").read_text())
    assert (study["label_a"], study["label_b"], study["seed"], study["n_prompts"]) == \
        ("SIM", "PixArt-alpha (20 steps)", 0, 17)
    assert study["question"] == "Which image better matches the text and has higher quality?"
    idx = [p["index"] for p in study["pairs"]]
    assert len(set(idx)) == 17 and idx == sorted(idx) and max(idx) < len(PROMPTS)
    assert [p["id"] for p in study["pairs"]] == list(range(1, 18))
    assert study["sources"]["a"]["sha256"] == sha256_file(image_sets[0])
    assert study["sources"]["b"]["sha256"] == sha256_file(image_sets[1])
    sets = [torch.load(p, weights_only=True) for p in image_sets]
    pngs = sorted(p.name for p in (d / "images").iterdir())
    assert len(pngs) == 34
    for p in study["pairs"]:
        assert p["prompt"] == PROMPTS[p["index"]]
        for key, s in (("image_a", sets[0]), ("image_b", sets[1])):
            assert f"{p[key]}.png" in pngs
            pixels = torch.from_numpy(np.array(Image.open(d / "images" / f"{p[key]}.png")))
            assert torch.equal(pixels.permute(2, 0, 1), s["images"][p["index"]])  # lossless, right image
    # tokens: 30 distinct urlsafe ones in invitations.csv (0600), only their SHA-256 elsewhere
    toks = tokens(d)
    assert len(set(toks)) == 30 and all(len(t) == 32 for t in toks)
    admin = (d / "admin_token.txt").read_text().strip()
    assert oct(os.stat(d / "admin_token.txt").st_mode & 0o777) == "0o600"
    assert oct(os.stat(d / "invitations.csv").st_mode & 0o777) == "0o600"
    con = sqlite3.connect(d / "answers.db")
    hashes = [h for (h,) in con.execute("SELECT token_sha256 FROM raters ORDER BY id")]
    assert hashes == [hashlib.sha256(t.encode()).hexdigest() for t in toks]
    assert con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0] == 17
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # UNIQUE(rater, pair) is the schema's: a second answer is refused by SQLite itself
    con.execute("PRAGMA foreign_keys=ON")
    con.execute("INSERT INTO shown VALUES (1, 1, 1, 'left', '2026-01-01')")
    con.execute("INSERT INTO answers (rater_id, pair_id, side, chosen, answered_at) VALUES (1, 1, 'left', 'a', 'x')")
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        con.execute("INSERT INTO answers (rater_id, pair_id, side, chosen, answered_at) "
                    "VALUES (1, 1, 'right', 'b', 'x')")
    con.rollback()
    con.close()
    raw = b"".join(p.read_bytes() for p in d.rglob("*") if p.is_file() and p.name not in
                   ("invitations.csv", "admin_token.txt"))
    for t in toks[:5] + [admin]:
        assert t.encode() not in raw
    assert study["admin_token_sha256"] == hashlib.sha256(admin.encode()).hexdigest()
    # each rater's order of pairs and sides is random per rater (and reproducible)
    plans = [rater_plan(study["study_id"], r, list(range(1, 18))) for r in (1, 2, 3)]
    assert len({tuple(p for p, _ in plan) for plan in plans}) == 3
    assert {s for _, s in plans[0]} == {"left", "right"}
    assert plans[0] == rater_plan(study["study_id"], 1, list(range(1, 18)))


def test_the_seed_chooses_the_prompts(image_sets, tmp_path):
    s0 = build_study(*image_sets, tmp_path / "s0", "A", "B", n_prompts=5, raters=2, seed=0)
    s0b = build_study(*image_sets, tmp_path / "s0b", "A", "B", n_prompts=5, raters=2, seed=0)
    s1 = build_study(*image_sets, tmp_path / "s1", "A", "B", n_prompts=5, raters=2, seed=1)
    ix = [[p["index"] for p in s["pairs"]] for s in (s0, s0b, s1)]
    assert ix[0] == ix[1] != ix[2]
    assert s0["pairs"][0]["image_a"] != s0b["pairs"][0]["image_a"]  # file names are random, not derived


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("case", ["other_prompts", "other_order", "fewer", "too_many", "same_labels", "exists",
                                  "not_torch", "float_images"])
def test_bad_input_is_one_line_and_writes_nothing(case, image_sets, tmp_path):
    a, b = image_sets
    kw = dict(n_prompts=17, raters=3)
    out = tmp_path / "study"
    labels = ("SIM", "teacher")
    if case == "other_prompts":
        b = write_set(tmp_path / "b.pt", PROMPTS[:-1] + ["something else"], 2)
    elif case == "other_order":
        b = write_set(tmp_path / "b.pt", PROMPTS[1:2] + PROMPTS[:1] + PROMPTS[2:], 2)
    elif case == "fewer":
        b = write_set(tmp_path / "b.pt", PROMPTS[:-1], 2)
    elif case == "too_many":
        kw["n_prompts"] = len(PROMPTS) + 1
    elif case == "same_labels":
        labels = ("SIM", "SIM")
    elif case == "exists":
        out.mkdir()
        (out / "answers.db").write_text("precious")
    elif case == "not_torch":
        b = tmp_path / "b.pt"
        b.write_text("not a torch file")
    elif case == "float_images":
        torch.save({"images": torch.zeros(len(PROMPTS), 3, 8, 8), "prompts": PROMPTS}, tmp_path / "b.pt")
        b = tmp_path / "b.pt"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConfigError) as e:
        build_study(a, b, out, *labels, **kw)
    msg = one_line(e)
    if case.startswith("other") or case == "fewer":
        assert "same prompts in the same order" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if case == "exists":
        assert (out / "answers.db").read_text() == "precious"


def test_a_failure_while_writing_leaves_no_folder(image_sets, tmp_path, monkeypatch):
    import workflow.study.db as db

    def boom(*_a, **_k):
        raise OSError("disk full")
    monkeypatch.setattr(db, "init_db", boom)
    with pytest.raises(OSError, match="disk full"):
        build_study(*image_sets, tmp_path / "study", "A", "B", n_prompts=3, raters=2)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary sibling


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "workflow.study", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_build_and_its_errors(image_sets, tmp_path):
    a, b = image_sets
    bad = write_set(tmp_path / "bad.pt", list(reversed(PROMPTS)), 2)
    out = tmp_path / "study"
    for args in (["--a", a, "--b", bad], ["--a", a, "--b", tmp_path / "missing.pt"],
                 ["--a", a, "--b", b, "--prompts", "x"], ["--a", a, "--b", b, "--raters", "0"]):
        r = _cli("build", *args, "--label-a", "SIM", "--label-b", "PixArt-alpha (20 steps)", "--out", out)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
        assert not out.exists()
    r = _cli("build", "--a", a, "--b", b, "--label-a", "SIM", "--label-b", "PixArt-alpha (20 steps)", "--out", out,
             "--prompts", "4", "--raters", "5", "--seed", "3")
    assert r.returncode == 0, r.stderr
    study = json.loads((out / "study.json").read_text())
    assert (len(study["pairs"]), len(study["raters"]), study["seed"]) == (4, 5, 3)
    rows = list(csv.DictReader(io.StringIO((out / "invitations.csv").read_text())))
    assert [r["path"] for r in rows] == [f"/r/{r['token']}" for r in rows]
    r = _cli("results", tmp_path / "nothing")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    r = _cli("serve", tmp_path / "nothing")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    r = _cli("results", out, "--csv", tmp_path)  # a directory: refused, nothing written
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    r = _cli("results", out)
    assert r.returncode == 0 and json.loads(r.stdout)["total"] == 0
    for bad_db in ("sqlite:///" + str(tmp_path / "none.db"), "nosuchdialect://x", "sqlite://"):
        r = _cli("results", bad_db)  # a missing file is not made into an empty database
        assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "none.db").exists()
    r = _cli("serve", out, "--db", "sqlite://")  # each connection would have its own empty database
    assert r.returncode == 2 and "in-memory" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_a_folder_made_while_a_study_is_written_is_never_replaced(image_sets, tmp_path, monkeypatch):
    """Between build_study's check and its final rename another build finished: the rename refuses, the other
    study stays as it is, and no temporary folder is left."""
    import workflow.study.db as db
    out = tmp_path / "study"
    real = db.init_db

    def meanwhile(engine, study):
        real(engine, study)
        out.mkdir()
        (out / "answers.db").write_bytes(b"someone else's answers")
    monkeypatch.setattr(db, "init_db", meanwhile)
    with pytest.raises(ConfigError, match="exists; a study folder is built once"):
        build_study(*image_sets, out, "A", "B", n_prompts=3, raters=2)
    assert [p.name for p in tmp_path.iterdir()] == ["study"]
    assert (out / "answers.db").read_bytes() == b"someone else's answers" and len(list(out.iterdir())) == 1


def test_the_dag_reads_the_answers_the_wal_holds(study_dir):
    """While the server runs, commits go to answers.db-wal and answers.db keeps its bytes: the tables' input list
    names the WAL too, so that new answers make them again."""
    from types import SimpleNamespace

    from workflow.dag import study_inputs
    from workflow.study.db import make_engine
    S = SimpleNamespace(results_dir=str(study_dir.parent))
    assert study_inputs(S) == [str(study_dir / "answers.db")]
    engine = make_engine(f"sqlite:///{study_dir / 'answers.db'}")
    before = (study_dir / "answers.db").read_bytes()
    with engine.begin() as con:
        con.exec_driver_sql("INSERT INTO meta (key, value) VALUES ('note', 'x')")
    assert study_inputs(S) == [str(study_dir / "answers.db"), str(study_dir / "answers.db-wal")]
    assert (study_dir / "answers.db").read_bytes() == before
    engine.dispose()
    assert study_inputs(S) == [str(study_dir / "answers.db")]
