"""Atomic writes and checked reads of checkpoints, teacher files and results.

Everything is written to a temporary file in the target directory and renamed into place, so a reader never
sees a half-written file. Reads turn a missing or corrupt file into one clear line.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from sim_core.errors import CheckpointError


def check_output(path: str | Path, what: str) -> Path:
    """A file the command will write, checked before any work: not a directory, in a directory that exists or can be
    made and that can be written. One CheckpointError line otherwise."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a directory; name a file")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"{what} {path} cannot be written: {parent} is not a writable directory")
    try:  # root passes os.access even on a read-only filesystem
        probe = tempfile.TemporaryFile(dir=parent)
        probe.close()
    except OSError as e:
        raise CheckpointError(f"{what} {path} cannot be written: {e.strerror or e}") from None
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | Path, replace: bool = True):
    """Yield a temporary directory beside ``path`` to fill; on success it is renamed to ``path`` (a previous one is
    replaced), on failure removed: a reader sees the whole folder or none (a model saved with save_pretrained).
    ``replace=False``: an existing ``path`` other than an empty directory is never replaced (FileExistsError), even
    one made while the folder was being filled."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if not replace:
            try:  # rename(2) replaces only an empty directory: the check and the move are one step
                os.rename(tmp, path)
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise FileExistsError(errno.EEXIST, f"{path} exists and is not empty") from None
                raise
        elif path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / "previous")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    atomic_write_bytes(path, text.encode())
    return Path(path)


def atomic_savefig(fig, path: str | Path, **kwargs) -> Path:
    """Save a matplotlib figure through a temporary file with the same extension, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, format=path.suffix.lstrip("."), **kwargs)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj, path: str | Path) -> str:
    """torch.save atomically; returns the SHA-256 of the bytes written."""
    import torch  # here, not at the top: the Snakemake process writes JSON through this module without torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_files(path: str | Path) -> list[Path]:
    """The files of a folder, sorted, without hidden ones (the hub client's .cache/ bookkeeping)."""
    root = Path(path)
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def tree_sha256(path: str | Path) -> str:
    """SHA-256 of a folder (a save_pretrained or hub snapshot): of each file's relative path and SHA-256, in order."""
    root = Path(path)
    h = hashlib.sha256()
    for f in tree_files(root):
        h.update(f"{f.relative_to(root).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def check_file(path: str | Path, what: str, sha256: str | None = None, hint: str = "",
               compute: bool = False) -> str | None:
    """A file that must exist and, when ``sha256`` is given, have that checksum; one CheckpointError line
    otherwise (``hint``: what to do, appended after '; '). Returns the file's SHA-256 when it was computed
    (a pin was given, or ``compute``), else None."""
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}{tail}")
    if sha256 is None and not compute:
        return None
    actual = sha256_file(path)
    if sha256 is not None and actual != sha256.lower():
        raise CheckpointError(f"{what} {path}: SHA-256 {actual[:16]}... does not match the expected "
                              f"{sha256[:16]}...{tail}")
    return actual


def load_checked(path: str | Path, what: str, fmt: str | None = None, sha256: str | None = None) -> dict:
    """Load a torch file written by this project (weights_only: no code is executed).

    ``fmt`` is the expected value of the file's "format" key; ``sha256`` pins the file's checksum.
    """
    path = Path(path)
    check_file(path, what, sha256)
    import torch
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, foreign pickle
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{what} {path} is corrupt or not a torch file: {first[:200]}") from None
    if not isinstance(obj, dict) or (fmt is not None and obj.get("format") != fmt):
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        if fmt is None:
            raise CheckpointError(f"{what} {path} holds a {found}, not a dict of tensors")
        raise CheckpointError(f"{what} {path} is not a {fmt} file (found format {found!r})")
    return obj
