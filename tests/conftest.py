"""Shared fixtures: small real teachers trained once per test session (no downloads, no mocks)."""
from __future__ import annotations

import os

import pytest
import torch
from browser import browser, page  # noqa: F401  (the real-browser fixtures, tests/browser.py)

torch.set_num_threads(1)  # fastest for small networks on the 2-core CI machine


@pytest.fixture(scope="session")
def worker_id(request):
    """pytest-xdist's worker id, or 'master' without xdist."""
    return getattr(request.config, "workerinput", {}).get("workerid", "master")


def pytest_configure(config):
    os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def assets_dir(tmp_path_factory, worker_id):
    """One asset folder for the whole session, shared by pytest-xdist workers (built once, under a lock)."""
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent
    path = root / "assets"
    path.mkdir(exist_ok=True)
    return path


def wait_for(predicate, timeout, what, poll=0.05):
    """Poll ``predicate`` until it is true; a TimeoutError naming ``what`` after ``timeout`` seconds."""
    import time
    t0 = time.time()
    while not predicate():
        if time.time() - t0 > timeout:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(poll)


def one_line(excinfo) -> str:
    """The message of a raised error (pytest.raises' excinfo), which must be one line."""
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


def _built_once(path, build):
    from filelock import FileLock
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            build(path)
    return path


@pytest.fixture(scope="session")
def smoke_local(assets_dir):
    """The whole smoke DAG run once per session with the embedded defaults (local submitit, sqlite MLflow):
    `snakemake all_tables --config scale=smoke` (~2.5 min). Read-only for the tests that use it."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    results = assets_dir.parent / "smoke-local" / "results"

    def build(done_marker):
        p = subprocess.run([sys.executable, "-m", "snakemake", "all_tables", "--cores", "2", "--quiet", "progress",
                            "--config", "scale=smoke", f"results_dir={results}"],
                           cwd=root, capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
        done_marker.write_text("ok\n")
    _built_once(assets_dir.parent / "smoke-local.done", build)
    return results


@pytest.fixture(scope="session")
def gmm_teacher(assets_dir):
    """A small ring-mixture teacher (1000 iterations at batch 256, ~13 s). Its own 35-NFE Heun samples reach
    FD ~0.003 to the true mixture and cover all 8 modes (with ~1/3 of the mass between modes)."""
    from sim_core.testbeds.gmm.testbed import build_teacher
    return _built_once(assets_dir / "teacher_gmm.pt", lambda p: build_teacher(
        p, iterations=1000, batch_size=256, hidden=128, blocks=2))


@pytest.fixture(scope="session")
def digits_teacher(assets_dir):
    """An unconditional digits teacher (1500 iterations at batch 128, ~25 s). Measured: its 35-NFE Heun
    samples reach FID ~8.9 and IS ~7.6 in the classifier's features (real test digits: FID 0.2, IS 8.6)."""
    from sim_core.testbeds.digits.testbed import build_teacher
    return _built_once(assets_dir / "teacher_digits.pt", lambda p: build_teacher(
        p, iterations=1500, batch_size=128, hidden=256, blocks=3))


@pytest.fixture(scope="session")
def digits_teacher_cond(assets_dir):
    from sim_core.testbeds.digits.testbed import build_teacher
    return _built_once(assets_dir / "teacher_digits_cond.pt", lambda p: build_teacher(
        p, conditional=True, iterations=300, batch_size=128, hidden=64, blocks=1))


@pytest.fixture(scope="session")
def digits_classifier(assets_dir):
    from sim_core.testbeds.digits.classifier import save_classifier, train_classifier

    def build(path):
        model, acc = train_classifier(seed=0)
        save_classifier(model, str(path), test_accuracy=acc)
    return _built_once(assets_dir / "digits_cnn.pt", build)


def gmm_config(teacher, **over) -> dict:
    """A small SIM run on the mixture as a plain dict (tests edit it, then parse it)."""
    cfg = dict(name="t_gmm", scale="smoke", seed=0,
               testbed=dict(kind="gmm", teacher=str(teacher)),
               method=dict(name="sim"),
               optim=dict(lr_gen=1e-4, lr_online=1e-4, batch_size=64),
               train=dict(iterations=20, log_every=5, eval_every=10, checkpoint_every=0, progress=False),
               eval=dict(num_samples=500, batch_size=500))
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg
