"""The README's MLflow UI instructions in a real browser: its `mlflow ui` command, started on the smoke DAG's
store, lists the experiments the README names, and each experiment's runs page lists the runs its manifest names,
each linked by its MLflow run id."""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from browser import screenshot, screenshot_dir

ROOT = Path(__file__).resolve().parents[2]
SMOKE_EXPERIMENTS = ("table1", "table2", "figure2", "lr_sweep")  # what configs/scales/smoke.yaml runs


def readme_ui_command() -> tuple[list[str], str]:
    """The `mlflow ui` line of the README's MLflow section, and the address it says to open."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^(\.venv/bin/mlflow ui [^#\n]*?)\s*#\s*then open (http://\S+)$", text, re.M)
    assert m, "the README has no `.venv/bin/mlflow ui ... # then open http://...` line"
    return shlex.split(m[1]), m[2]


def readme_experiments() -> list[str]:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"There is one experiment per table or figure \(([^)]*)\)", text)
    assert m, "the README no longer names the experiments"
    return re.findall(r"`(\w+)`", m[1])


def test_the_readmes_experiments_are_the_scales():
    assert set(SMOKE_EXPERIMENTS) <= set(readme_experiments())


@pytest.fixture(scope="module")
def mlflow_ui(smoke_local, tmp_path_factory):
    """The README's command with the smoke store and a free port in place of results/ and 5000."""
    argv, address = readme_ui_command()
    assert "sqlite:///results/mlflow.db" in argv and address == "http://127.0.0.1:5000"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [str(ROOT / argv[0]) if a.startswith(".venv/") else a for a in argv]
    argv = [f"sqlite:///{smoke_local / 'mlflow.db'}" if a == "sqlite:///results/mlflow.db" else a for a in argv]
    argv[argv.index("--port") + 1] = str(port)
    if not Path(argv[0]).exists():  # the test runs in another environment than .venv: its own mlflow
        argv[0] = str(Path(sys.executable).parent / "mlflow")
    log = open(tmp_path_factory.mktemp("mlflow-ui") / "ui.log", "w+")
    proc = subprocess.Popen(argv, cwd=tmp_path_factory.getbasetemp(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    t0 = time.time()
    try:
        while True:  # ~10 s on an idle 2-core machine, over a minute while the other tests load it
            try:
                if requests.get(base + "/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.time() - t0 > 240:
                log.seek(0)
                pytest.fail(f"mlflow ui did not start: {log.read()[-2000:]}")
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()


def _wait(probe, done, timeout=90):
    """probe()'s value once done(value) holds, or the last one after timeout s (the UI renders after its API calls
    return, the run rows after the count)."""
    t0 = time.time()
    while True:
        value = probe()
        if done(value) or time.time() - t0 > timeout:
            return value
        time.sleep(0.5)


def _wait_text(driver, predicate, timeout=90):
    from selenium.webdriver.common.by import By
    return _wait(lambda: driver.find_element(By.TAG_NAME, "body").text, predicate, timeout)


def _run_links(driver, experiment_id) -> dict:
    """run id -> the name shown, for each run link of the page."""
    from selenium.webdriver.common.by import By
    links = driver.find_elements(By.CSS_SELECTOR, f"a[href*='#/experiments/{experiment_id}/runs/']")
    return {a.get_attribute("href").rsplit("/", 1)[1]: a.text for a in links}


def test_the_ui_lists_the_experiments_and_their_runs(page, mlflow_ui, smoke_local, request, tmp_path):
    from mlflow.tracking import MlflowClient
    shots = screenshot_dir(request, tmp_path)
    client = MlflowClient(f"sqlite:///{smoke_local / 'mlflow.db'}")
    ids = {e.name: e.experiment_id for e in client.search_experiments()}
    page.get(f"{mlflow_ui}/#/experiments")
    text = _wait_text(page, lambda t: all(name in t for name in SMOKE_EXPERIMENTS))
    assert all(re.search(rf"^{name}$", text, re.M) for name in SMOKE_EXPERIMENTS), text[:2000]
    screenshot(page, shots, "mlflow-experiments", full_page=False)
    # MLflow's own page logs a 404 for its users/current call: its console is not ours to check
    for name in SMOKE_EXPERIMENTS:
        records = json.loads((smoke_local / "manifests" / f"{name}.json").read_text())
        own = {r.info.run_id: r.info.run_name for r in client.search_runs([ids[name]], max_results=1000)}
        page.get(f"{mlflow_ui}/#/experiments/{ids[name]}/runs")
        text = _wait_text(page, lambda t: re.search(rf"^{len(own)} matching runs$", t, re.M))
        assert re.search(rf"^{len(own)} matching runs$", text, re.M), text[-1500:]
        links = _wait(lambda: _run_links(page, ids[name]), lambda v: v == own)
        assert links == own  # every run of the experiment, by id and name
        # the manifest's runs that live in this experiment (a shared run lives in the first that asked for it)
        here = [r for r in records if r["run_id"] in own]
        assert here and all(links[r["run_id"]] for r in here)
        if name == "table1":
            screenshot(page, shots, "mlflow-runs-table1", full_page=False)
