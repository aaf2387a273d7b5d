"""Start, stop and query one MLflow tracking server per directory, for many jobs logging at once.

    python -m sim_core.tracking.server start  [--dir DIR] [--host 127.0.0.1] [--port N|0] [--workers 1]
    python -m sim_core.tracking.server status [--dir DIR]
    python -m sim_core.tracking.server stop   [--dir DIR]

The server keeps everything under DIR: the backend store ``sqlite:///DIR/mlflow.db`` (the server process is
its only writer, so jobs never lock the sqlite file against each other), the artifacts in ``DIR/artifacts``,
its output in ``DIR/server.log`` and, once it answers ``/health``, ``DIR/server.json`` (pid, host, port, uri,
started) written atomically. ``start`` prints the URI (and only that, on stdout): pass it on as
``MLFLOW_TRACKING_URI`` or ``--config tracking_uri=...``. A server recorded in server.json that is alive and
healthy is reused. The server runs in its own session, detached from the caller; ``stop`` ends exactly its
process group (SIGTERM, then SIGKILL) and removes server.json.

Measured on the 2-core machine (docs/environment.md#mlflow): ``--workers 1`` and
``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` (no job-runner processes) start in ~8-12 s; more workers only
make each request slower there. It listens on loopback unless told otherwise. To serve cluster nodes, bind
``--host 0.0.0.0`` (or the internal interface's address): the URI then names this machine by its fully qualified
name, or by ``--advertise NAME``, which is added to the server's allowed Host headers. It has no authentication:
expose it only on a network you trust (docs/environment.md#multi-node-clusters).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from sim_core.files import atomic_write_json
from sim_core.tracking.client import TrackingError

STATE_FILE, LOG_FILE, LOCK_FILE = "server.json", "server.log", ".server.lock"
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
START_TIMEOUT = 90.0  # seconds for /health to answer; ~10 s measured, more on a loaded node
STOP_TIMEOUT = 10.0   # seconds between SIGTERM and SIGKILL

# Servers started by this process: kept so that stop_server can reap them (no zombie is left behind when the
# caller, e.g. a test, both starts and stops the server); a CLI start leaves its server to init.
_CHILDREN: dict[int, subprocess.Popen] = {}


# ----------------------------------------------------------------------------------------------- probing
def _health(uri: str, timeout: float = 2.0) -> bool:
    """True if ``uri/health`` answers 200 (no proxy: the server is on this machine or the cluster's net)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(uri.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], pgid [2]); None if there is no process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rfind(")") + 2:].split()


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    if pid in _CHILDREN and _CHILDREN[pid].poll() is not None:
        return False
    if Path("/proc/self/stat").exists():
        st = _proc_stat(pid)
        return st is not None and st[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    if not Path("/proc/self/stat").exists():  # no /proc: ask the kernel whether the group has anyone left
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _proc_stat(int(entry.name))
            if st is not None and st[0] not in ("Z", "X") and int(st[2]) == pgid:
                members.append(int(entry.name))
    return members


def _is_mlflow_group(pgid: int) -> bool:
    """Guard against a recycled pid: only signal a group in which some process runs mlflow (or its uvicorn)."""
    if not Path("/proc/self/stat").exists():
        return True
    return any("mlflow" in _cmdline(p) for p in _group_members(pgid))


def _last_log_line(log: Path, offset: int = 0) -> str:
    """The last non-empty line the server wrote (after ``offset``: this launch's output only)."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else "(no output yet)")[:300]


# ------------------------------------------------------------------------------------------------ state
@contextlib.contextmanager
def _locked(d: Path):
    """One start/stop at a time per directory (two Snakemake invocations must not start two servers)."""
    d.mkdir(parents=True, exist_ok=True)
    with open(d / LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_state(d: Path) -> dict | None:
    path = d / STATE_FILE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
        int(state["pid"]), str(state["uri"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TrackingError(f"{path} is unreadable ({type(e).__name__}: {e}); make sure no server runs "
                            "for this directory, then remove it") from None
    return state


SERVER_TOKEN = "mlflow-server:"  # what jobs get instead of a URI: "mlflow-server:<dir>", read when they start


def resolve_tracking_uri(uri: str) -> str:
    """A tracking URI, or the current address of the managed server named by a "mlflow-server:<dir>" token: a job
    requeued after the server restarted (perhaps on another port) logs to where it is now."""
    if not uri.startswith(SERVER_TOKEN):
        return uri
    d = uri[len(SERVER_TOKEN):]
    current = server_uri(d)
    if current is None:
        raise TrackingError(f"the MLflow server of {d} is not running (start it with `python -m "
                            f"sim_core.tracking.server start --dir {d}` or rerun the DAG, which starts it)")
    return current


def server_uri(dir) -> str | None:
    """The URI of the server recorded in DIR/server.json if its process is alive and answers /health."""
    state = _read_state(Path(dir).resolve())
    if state is None or not _alive(int(state["pid"])):
        return None
    return state["uri"] if _health(state["uri"], timeout=5.0) else None


# ------------------------------------------------------------------------------------------- start/stop
def _connect_host(host: str, advertise: str | None = None) -> str:
    """The name clients use: ``advertise`` when given, else the bound address, or this machine's fully qualified
    name when bound to all interfaces (a short host name may not resolve on other nodes)."""
    name = advertise or (socket.getfqdn() if host in WILDCARD_HOSTS else host)
    return f"[{name}]" if ":" in name else name


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _free_port(host: str) -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_port(host: str, port: int) -> None:
    """Fail with one line if the port cannot be bound. SO_REUSEADDR as uvicorn sets it: a port left in
    TIME_WAIT by an earlier server is fine, one with a listening socket is not."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise TrackingError(f"cannot start the MLflow server: port {port} on {host or '*'} is in use "
                                f"({e.strerror or e})") from None


def _port_free(host: str, port: int) -> bool:
    try:
        _check_port(host, port)
        return True
    except TrackingError:
        return False


def _allowed_hosts(host: str, port: int, advertise: str | None = None) -> list[str]:
    """MLflow rejects Host headers other than localhost and private IPs (DNS-rebinding protection): when it
    listens on all interfaces or is advertised under a name, also accept this machine's names and that one, which
    is what cluster nodes will send."""
    if host not in WILDCARD_HOSTS and not advertise:
        return []
    from mlflow.server.security_utils import get_default_allowed_hosts
    names = {socket.gethostname(), socket.getfqdn()} | ({advertise} if advertise else set())
    with contextlib.suppress(OSError):  # and its addresses, for clients that connect by IP
        names.update(socket.gethostbyname_ex(socket.gethostname())[2])
    return get_default_allowed_hosts() + sorted(n for name in names for n in (name, f"{name}:{port}"))


def _kill_group(pgid: int, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the process group, SIGKILL it after ``timeout``; return once no live process is left in it."""
    child = _CHILDREN.get(pgid)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if child is not None:
                child.poll()  # reap our own child, else it lingers as a zombie
            if not _group_members(pgid):
                if child is not None:
                    child.wait(5.0)  # it may have died after the poll above
                    _CHILDREN.pop(pgid, None)
                return
            time.sleep(0.05)
    raise TrackingError(f"MLflow server process group {pgid} survived SIGKILL: {_group_members(pgid)}")


def start_server(dir="results", host: str = "127.0.0.1", port: int = 0, workers: int = 1,
                 timeout: float = START_TIMEOUT, advertise: str | None = None) -> str:
    """Start (or reuse) the tracking server of ``dir``; return its URI once it answers /health. A reused
    server keeps the host, port and workers it was started with. ``port`` 0 takes the port of the last server of
    ``dir`` when it is free (so that a restarted server keeps its address), else any free port. ``advertise`` is the
    name clients reach it by (default: the bound address; this machine's FQDN when bound to all interfaces)."""
    d = Path(dir).resolve()
    previous_port = 0
    with _locked(d):
        state = _read_state(d)
        if state is not None:
            previous_port = int(state.get("port", 0))
            pid = int(state["pid"])
            if _alive(pid):
                if _health(state["uri"], timeout=5.0):
                    return state["uri"]
                raise TrackingError(f"the MLflow server {state['uri']} (pid {pid}) recorded in {d / STATE_FILE} "
                                    "is running but not answering /health; stop it first")
            if _group_members(pid) and _is_mlflow_group(pid):  # its uvicorn worker outlived it
                _kill_group(pid)
            (d / STATE_FILE).unlink()  # stale: its server is gone

        if importlib.util.find_spec("mlflow") is None:
            raise TrackingError(f"cannot start the MLflow server: mlflow is not installed for {sys.executable}")
        if port == 0 and previous_port and _port_free(host, previous_port):
            port = previous_port
        if port == 0:
            port = _free_port(host)
        else:
            _check_port(host, port)
        uri = f"http://{_connect_host(host, advertise)}:{port}"
        (d / "artifacts").mkdir(exist_ok=True)
        # Artifacts are proxied (--serve-artifacts --artifacts-destination), not written by clients to a
        # --default-artifact-root path: new experiments get the root ``mlflow-artifacts:/``, so clients upload
        # and list through the server's HTTP API and need no access to DIR at all; a cluster node reaches
        # them exactly as it reaches the metrics, whether or not it mounts DIR under the same path.
        # (Experiments created earlier against the embedded sqlite store keep their file:// location; a
        # client then writes there directly, which works where that path is shared.)
        cmd = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}",
               "--serve-artifacts", "--artifacts-destination", str(d / "artifacts"),
               "--host", host, "--port", str(port), "--workers", str(workers)]
        if allowed := _allowed_hosts(host, port, advertise):
            cmd += ["--allowed-hosts", ",".join(allowed)]
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", PYTHONUNBUFFERED="1")
        log = d / LOG_FILE
        with open(log, "a") as out:
            out.write(f"--- {datetime.now(timezone.utc).isoformat(timespec='seconds')} {' '.join(cmd)}\n")
            out.flush()
            offset = out.tell()
            proc = subprocess.Popen(cmd, cwd=d, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        _CHILDREN[proc.pid] = proc
        try:
            t0 = time.monotonic()
            while True:
                if proc.poll() is not None:
                    raise TrackingError(f"the MLflow server exited with code {proc.returncode} before answering "
                                        f"{uri}/health; {log}: {_last_log_line(log, offset)}")
                if _health(uri, timeout=1.0):
                    break
                if time.monotonic() - t0 > timeout:
                    raise TrackingError(f"the MLflow server did not answer {uri}/health within {timeout:g} s; "
                                        f"{log}: {_last_log_line(log, offset)}")
                time.sleep(0.2)
            atomic_write_json(d / STATE_FILE, {
                "pid": proc.pid, "host": host, "port": port, "uri": uri, "workers": workers,
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "startup_seconds": round(time.monotonic() - t0, 2), "log": str(log),
                "backend_store_uri": f"sqlite:///{d / 'mlflow.db'}", "artifacts": str(d / "artifacts")})
        except BaseException:  # never leave a half-started server behind (timeout, Ctrl-C, unwritable DIR)
            _kill_group(proc.pid)
            raise
        return uri


def stop_server(dir="results", timeout: float = STOP_TIMEOUT) -> bool:
    """Stop the server recorded in DIR/server.json (its whole process group) and remove the file.
    Returns False if none was recorded."""
    d = Path(dir).resolve()
    with _locked(d):
        state = _read_state(d)
        if state is None:
            return False
        pid = int(state["pid"])
        if _group_members(pid) and _is_mlflow_group(pid):  # start_new_session: the server's pgid is its pid
            _kill_group(pid, timeout)
        elif pid in _CHILDREN:  # ours, and it died on its own: reap it
            _CHILDREN.pop(pid).wait()
        (d / STATE_FILE).unlink(missing_ok=True)
        return True


# -------------------------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim_core.tracking.server", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("start", "stop", "status"):
        s = sub.add_parser(name)
        s.add_argument("--dir", default="results", help="server directory (default: results)")
        if name == "start":
            s.add_argument("--host", default="127.0.0.1")
            s.add_argument("--port", type=int, default=0, help="0: pick a free port")
            s.add_argument("--workers", type=int, default=1)
            s.add_argument("--timeout", type=float, default=START_TIMEOUT, help="seconds to wait for /health")
            s.add_argument("--advertise", help="the name clients reach it by (default: the bound address)")
    a = p.parse_args(argv)
    try:
        if a.command == "start":
            print(start_server(a.dir, a.host, a.port, a.workers, a.timeout, a.advertise), flush=True)
        elif a.command == "stop":
            if not stop_server(a.dir):
                print(f"no MLflow server recorded in {Path(a.dir).resolve() / STATE_FILE}", file=sys.stderr)
        else:
            state = _read_state(Path(a.dir).resolve())
            uri = server_uri(a.dir)
            if uri is not None:
                print(f"{uri} healthy (pid {state['pid']}, started {state.get('started')})")
                return 0
            if state is not None and _alive(int(state["pid"])):
                print(f"{state['uri']} not answering /health (pid {state['pid']} is running)")
            else:
                print(f"not running ({Path(a.dir).resolve()})")
            return 1
    except TrackingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
