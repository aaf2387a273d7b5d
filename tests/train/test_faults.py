"""Faults against the real mechanisms: a second process on a run directory (refused in one line naming the first),
kill -9 (its lock and half-written files taken over), Ctrl-C and SIGTERM during start-up (a clean "interrupted"), a
cut metrics line and a full disk on a real tmpfs (the same command resumes, nothing edited by hand)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import gmm_config, wait_for
from sim_core.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_IO
from sim_core.train.run_dir import read_metrics

CLI = [sys.executable, "-m", "sim_core", "distill"]


def _config(tmp_path, teacher, **train) -> Path:
    raw = gmm_config(teacher, optim=dict(batch_size=16), train=dict(dict(iterations=150, log_every=10, eval_every=0,
                                                                         checkpoint_every=25), **train))
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(raw))
    return path


def _status(run_dir) -> dict:
    p = run_dir / "status.json"
    try:
        return json.loads(p.read_text()) if p.exists() else {}
    except ValueError:
        return {}


def _start(cfg, run_dir, **kw) -> subprocess.Popen:
    return subprocess.Popen(CLI + ["--config", str(cfg), "--run-dir", str(run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_a_second_process_is_refused_and_a_killed_ones_lock_is_taken_over(tmp_path, gmm_teacher):
    cfg, run = _config(tmp_path, gmm_teacher), tmp_path / "run"
    first = _start(cfg, run)
    try:
        wait_for(lambda: _status(run).get("status") == "running", 120, "the first run to start")
        first.send_signal(signal.SIGSTOP)  # holds its lock, makes no progress
        st = _status(run)
        assert st["pid"] == first.pid and st["host"] == socket.gethostname()
        second = subprocess.run(CLI + ["--config", str(cfg), "--run-dir", str(run)], capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == EXIT_BAD_INPUT
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"is in use by PID {first.pid} on {socket.gethostname()}" in lines[0], lines
        # a write that the kill will cut short, named as sim_core.files' atomic writes name their temporaries
        (run / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
        first.kill()  # SIGKILL: no handler runs, the kernel drops the lock
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert _status(run)["status"] == "running"  # what a killed run leaves; the pid says who it was
    third = subprocess.run(CLI + ["--config", str(cfg), "--run-dir", str(run)], capture_output=True, text=True,
                           timeout=300)
    assert third.returncode == 0, third.stderr
    assert _status(run)["status"] == "finished" and not list(run.glob(".*.tmp"))
    assert [r["step"] for r in read_metrics(run) if "loss_gen" in r] == list(range(10, 151, 10))


def test_ctrl_c_checkpoints_and_the_same_command_resumes(tmp_path, gmm_teacher):
    cfg, run = _config(tmp_path, gmm_teacher, iterations=300), tmp_path / "run"
    p = _start(cfg, run)
    wait_for(lambda: _status(run).get("status") == "running", 120, "the run to start")
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == EXIT_INTERRUPTED and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted by SIGINT at step ")
    st = _status(run)
    assert st["status"] == "interrupted" and st["signal"] == "SIGINT" and 0 < st["step"] < 300
    import torch
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == st["step"]  # checkpointed at that step
    again = subprocess.run(CLI + ["--config", str(cfg), "--run-dir", str(run)], capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0 and _status(run)["status"] == "finished", again.stderr


def test_sigterm_during_the_initial_evaluation_ends_cleanly(tmp_path, gmm_teacher):
    """The run directory exists, the initial evaluation is running: SIGTERM gives 'interrupted' at step 0, no
    checkpoint, no traceback, and the same command then trains from the start."""
    raw = json.loads(_config(tmp_path, gmm_teacher, iterations=20).read_text())
    raw["eval"] = dict(num_samples=20000, batch_size=500)  # an initial evaluation of a few seconds
    cfg = tmp_path / "slow_eval.json"
    cfg.write_text(json.dumps(raw))
    run = tmp_path / "run"
    p = _start(cfg, run)
    wait_for(lambda: (run / "config.yaml").exists(), 120, "the run directory")
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == EXIT_INTERRUPTED and "Traceback" not in err, err
    st = _status(run)
    assert st["status"] == "interrupted" and st["step"] == 0 and st["signal"] == "SIGTERM"
    assert not (run / "checkpoint.pt").exists()
    again = subprocess.run(CLI + ["--config", str(cfg), "--run-dir", str(run)], capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    assert [r["step"] for r in read_metrics(run) if "eval/fd" in r] == [0, 20]  # one initial evaluation, not two


def test_a_cut_last_metrics_line_is_dropped_on_resume(tmp_path, gmm_teacher):
    cfg, run = _config(tmp_path, gmm_teacher, iterations=100), tmp_path / "run"
    p = _start(cfg, run)
    wait_for(lambda: (run / "checkpoint.pt").exists(), 120, "a checkpoint")
    p.kill()
    p.wait(timeout=60)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 51, "nimg": 816, "loss_onl')  # a write cut short: no newline
    records = read_metrics(run)
    assert records and all(r["step"] != 51 for r in records)
    again = subprocess.run(CLI + ["--config", str(cfg), "--run-dir", str(run)], capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    text = (run / "metrics.jsonl").read_text()
    assert "loss_onl\n" not in text and text.endswith("\n")
    assert [r["step"] for r in read_metrics(run) if "loss_gen" in r] == list(range(10, 101, 10))


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a real tmpfs of that many bytes (needs root and mount; skipped where the container forbids
    it), unmounted afterwards."""
    mounted = []

    def mount(size: int) -> Path:
        mnt = tmp_path / "disk"
        mnt.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                                               capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(mnt)
        return mnt
    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_stops_the_run_in_one_line_and_the_same_command_resumes(tmp_path, gmm_teacher, small_disk):
    cfg = _config(tmp_path, gmm_teacher, iterations=100, checkpoint_every=20)
    ok = subprocess.run(CLI + ["--config", str(cfg), "--run-dir", str(tmp_path / "probe")], capture_output=True,
                        timeout=300)
    assert ok.returncode == 0
    probe = tmp_path / "probe"
    need = (probe / "checkpoint.pt").stat().st_size
    whole = sum(f.stat().st_size for f in probe.rglob("*") if f.is_file())
    disk = small_disk(2 * whole + need + (1 << 20))  # the whole run, with a checkpoint's temporary beside it
    run = disk / "run"
    # room for the run directory's small files and one checkpoint, not for the second (atomic: written beside it)
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler.write_bytes(b"\0" * (free - int(1.5 * need) - 64 * 1024))
    full = subprocess.run(CLI + ["--config", str(cfg), "--run-dir", str(run)], capture_output=True, text=True,
                          timeout=300)
    assert full.returncode == EXIT_IO, full.stderr
    lines = full.stderr.strip().splitlines()
    assert lines[-1].startswith("error: No space left on device") and "run the same command again" in lines[-1]
    assert "Traceback" not in full.stderr
    assert not list(run.glob(".*.tmp"))  # the failed write removed its temporary
    filler.unlink()
    again = subprocess.run(CLI + ["--config", str(cfg), "--run-dir", str(run)], capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert _status(run)["status"] == "finished"
    assert [r["step"] for r in read_metrics(run) if "loss_gen" in r] == list(range(10, 101, 10))
