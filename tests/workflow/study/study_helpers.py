"""The preference study's test helpers and fixtures: tiny image sets made with torch, study folders, a real uvicorn
server (conftest.py exposes the fixtures)."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import torch

ROOT = Path(__file__).resolve().parents[3]
PROMPTS = [f"a handwritten {w} <b>&amp;</b>" if i == 3 else f"prompt {i}: a handwritten {w}"
           for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                 "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split())]


def write_set(path, prompts, seed, n=None, size=8):
    g = torch.Generator().manual_seed(seed)
    n = len(prompts) if n is None else n
    torch.save({"images": torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                "prompts": list(prompts)}, path)
    return Path(path)


@pytest.fixture(scope="session")
def image_sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("sets")
    return write_set(d / "sim.pt", PROMPTS, 1), write_set(d / "teacher.pt", PROMPTS, 2)


@pytest.fixture(scope="session")
def study_template(image_sets, tmp_path_factory):
    from workflow.study.build import build_study
    out = tmp_path_factory.mktemp("template") / "study"
    build_study(*image_sets, out, "SIM", "PixArt-alpha (20 steps)", n_prompts=17, raters=30, seed=0)
    return out


@pytest.fixture
def study_dir(study_template, tmp_path):
    """A fresh copy of the built study (its own answers.db) for each test."""
    out = tmp_path / "study"
    shutil.copytree(study_template, out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m workflow.study serve`` as a subprocess on a free loopback port."""

    def __init__(self, study_dir, *extra, host_arg=True):
        self.port = free_port()
        args = [sys.executable, "-m", "workflow.study", "serve", str(study_dir), "--port", str(self.port), *extra]
        if host_arg:
            args += ["--host", "127.0.0.1"]
        self.log = open(Path(study_dir).parent / f"server-{self.port}.log", "w+")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.base = f"http://127.0.0.1:{self.port}"
        t0 = time.time()
        while True:
            try:
                if requests.get(self.base + "/static/study.css", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if self.proc.poll() is not None or time.time() - t0 > 30:
                self.log.seek(0)
                raise RuntimeError(f"server did not start: {self.log.read()[-2000:]}")
            time.sleep(0.05)
        self.startup_s = time.time() - t0

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def server_factory():
    started = []

    def start(study_dir, *extra, **kw):
        s = Server(study_dir, *extra, **kw)
        started.append(s)
        return s
    yield start
    for s in started:
        s.stop()


def tokens(study_dir) -> list[str]:
    lines = (Path(study_dir) / "invitations.csv").read_text().splitlines()[1:]
    return [line.split(",")[1] for line in lines]


def admin_token(study_dir) -> str:
    return (Path(study_dir) / "admin_token.txt").read_text().strip()


PAGE = re.compile(r'id="progress">Pair (\d+) of (\d+)<.*name="pair" value="(\d+)".*id="left"><img src="/img/'
                  r'([0-9a-f]{32})\.png".*id="right"><img src="/img/([0-9a-f]{32})\.png"', re.S)


def parse_page(text: str) -> dict | None:
    """The pair on a rater's page (progress k, N, pair id, left and right image ids); None on the thank-you page."""
    if 'id="done"' in text:
        return None
    m = PAGE.search(text)
    assert m, text[:500]
    return {"k": int(m[1]), "n": int(m[2]), "pair": int(m[3]), "left": m[4], "right": m[5]}


def db_state(study_dir) -> dict:
    """Row counts of every table and a SHA-256 of the answers table, read with sqlite3 (not the app's code)."""
    con = sqlite3.connect(Path(study_dir) / "answers.db")
    try:
        counts = {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("meta", "raters", "pairs", "shown", "answers")}
        h = hashlib.sha256()
        for row in con.execute("SELECT * FROM answers ORDER BY id"):
            h.update(repr(row).encode())
        for row in con.execute("SELECT * FROM shown ORDER BY rater_id, pair_id"):
            h.update(repr(row).encode())
        return {**counts, "checksum": h.hexdigest()}
    finally:
        con.close()


def answers(study_dir) -> list[tuple]:
    con = sqlite3.connect(Path(study_dir) / "answers.db")
    try:
        return con.execute("SELECT rater_id, pair_id, side, chosen FROM answers ORDER BY id").fetchall()
    finally:
        con.close()


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg
