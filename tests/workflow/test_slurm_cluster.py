"""scripts/slurm_cluster.sh itself, on a second cluster of its own (another state dir and other ports, next to the
one the other SLURM tests use): its daemons listen on loopback only, and `up` after a crash that skipped `down`
(every process killed with SIGKILL, as a machine restart leaves it) gives an idle node and a truthful sacct.

Skipped with a reason where `sbatch` is absent or this is not root; never in CI (SIM_REQUIRE_SLURM=1)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "slurm_cluster.sh"
PORT, DB_PORT = 6917, 3407  # slurmctld; slurmd and slurmdbd take +1 and +2 (the default cluster: 6817, 3307)

if shutil.which("sbatch") is None or os.geteuid() != 0:
    if os.environ.get("SIM_REQUIRE_SLURM"):
        raise RuntimeError("SIM_REQUIRE_SLURM is set but sbatch is not installed or this is not root")
    pytest.skip("needs root and sbatch (`scripts/slurm_cluster.sh up` installs it)", allow_module_level=True)


@pytest.fixture
def second_cluster(tmp_path_factory):
    state = Path(f"/tmp/sim-slurm-t{os.getpid()}")  # short: the munge socket path must stay under 100 bytes
    env = dict(os.environ, SIM_SLURM_DIR=str(state), SIM_SLURM_PORT=str(PORT), SIM_SLURM_DB_PORT=str(DB_PORT),
               SIM_SLURM_CPUS="2", SLURM_CONF=str(state / "etc" / "slurm.conf"))

    def script(cmd, timeout=300):
        p = subprocess.run([str(SCRIPT), cmd], env=env, capture_output=True, text=True, timeout=timeout)
        assert p.returncode == 0, f"slurm_cluster.sh {cmd}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        return p

    try:
        yield state, env, script
    finally:
        subprocess.run([str(SCRIPT), "clean"], env=env, capture_output=True, timeout=300)


def _listening(port: int) -> set[str]:
    """The IPv4/IPv6 addresses on which something listens on ``port`` (from /proc/net/tcp*)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, _, st = line.split()[1:4]
            addr, p = local.split(":")
            if st == "0A" and int(p, 16) == port:  # 0A: LISTEN
                found.add("loopback" if addr in ("0100007F", "0" * 24 + "01000000") else
                          "any" if addr == "0" * width else addr)
    return found


def _processes_of(state: Path) -> list[int]:
    """Every process the cluster in ``state`` started: daemons and job steps carry its SLURM_CONF or state dir."""
    conf = f"SLURM_CONF={state}/etc/slurm.conf".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            environ, cmdline = (d / "environ").read_bytes(), (d / "cmdline").read_bytes()
        except OSError:
            continue
        if conf in environ.split(b"\0") or str(state).encode() in cmdline:
            pids.append(int(d.name))
    return pids


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie that nobody has reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _run(env, *cmd) -> str:
    return subprocess.run(list(cmd), env=env, check=True, capture_output=True, text=True, timeout=60).stdout


def test_up_after_a_crash_gives_an_idle_node_and_closes_the_lost_jobs(second_cluster):
    state, env, script = second_cluster
    script("up")
    # every daemon on loopback, where the script could arrange it (it says so in slurm.conf otherwise)
    binding = "any" if "('any'" in (state / "etc" / "slurm.conf").read_text() else "loopback"
    for port in (PORT, PORT + 1, PORT + 2, DB_PORT):
        assert _listening(port) == {binding}, (port, _listening(port))

    ids = [_run(env, "sbatch", "--parsable", "--account=sim", "-c", "1", "--wrap", "sleep 600").strip()
           for _ in range(2)]  # both fit at once on the node's 2 CPUs
    wait_for(lambda: sorted(_run(env, "squeue", "-h", "-t", "running", "-o", "%A").split()) == sorted(ids), 60,
             "the jobs to run", poll=0.2)
    saved = state / "spool" / "ctld" / "job_state"
    t_submit = time.time()
    wait_for(lambda: saved.exists() and saved.stat().st_mtime > t_submit - 1, 30, "slurmctld to save its state",
             poll=0.2)

    # the crash: every process of this cluster killed at once, pid files left naming dead processes
    for pid in _processes_of(state):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: not [p for p in _processes_of(state) if _alive(p)], 30, "the cluster's processes to die",
             poll=0.2)
    for f in (state / "run").glob("*.pid"):  # after a restart no pid file names a live process
        f.unlink()

    t0 = time.monotonic()
    up = script("up", timeout=120)
    assert time.monotonic() - t0 < 60, up.stderr
    assert _run(env, "squeue", "-h", "-o", "%A").split() == []  # nothing of the previous life is queued
    assert _run(env, "sinfo", "-h", "-n", "localhost", "-o", "%T").strip() == "idle"
    states = dict(line.split("|") for line in _run(env, "sacct", "-n", "-P", "-X", "-j", ",".join(ids),
                                                   "--format=JobID,State").splitlines())
    assert set(states) == set(ids)
    assert not {s for s in states.values() if s in ("RUNNING", "PENDING", "REQUEUED")}, states
    # and the cluster works: a new job runs to completion
    out = _run(env, "sbatch", "-W", "--parsable", "--account=sim", "--wrap", "true").strip()
    assert _run(env, "sacct", "-n", "-P", "-X", "-j", out, "--format=State").strip() == "COMPLETED"
