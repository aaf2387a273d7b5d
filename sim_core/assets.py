"""Downloaded assets: the manifest of files the paper-scale runs need, their checksums, checks and downloads.

Every file is named in :data:`MANIFEST`; each testbed registers its own files (``register_asset``) and the content
checks of their kinds (``VALIDATORS``) in its folder (CIFAR-10: sim_core/testbeds/cifar10/assets.py: teacher pickles,
FID reference statistics, Inception weights, the CIFAR-10 archive, SiD's released generators). Files live in one asset
directory under their manifest file names, or anywhere else through per-asset path overrides
(``asset_files.paths.<name>`` in config), because cluster nodes often have no internet and keep such files on shared
storage.

Checksums (SHA-256 unless said otherwise), in order of precedence:

1. a SHA-256 the user gives in config (``asset_files.sha256.<name>``) always wins; it also replaces the manifest's
   MD5 and size for that asset, since it names one exact file;
2. the manifest's SHA-256 where it is published (torch-fidelity's Inception weights);
3. otherwise the project pins the file on first use: NVIDIA and Hugging Face publish no SHA-256 for the EDM
   pickles, the FID statistics or SiD's generators, and this machine cannot fetch them to compute one, so these
   entries have ``sha256=None``. A successful download, or the first successful verification of a file the user
   placed, records the file's SHA-256 in ``<asset_dir>/SHA256SUMS`` (``<sha256>  <filename>`` lines, keyed by
   the manifest file name even when an override puts the file elsewhere, written atomically), and every later
   verification compares against that record. To accept a different file, delete its line.

The CIFAR-10 archive also has a published MD5 (the one torchvision checks), which is checked in addition. An
extracted ``cifar-10-batches-py/`` directory is accepted in place of the archive; its seven files are checked
against torchvision's per-file MD5s instead (a directory is not pinned in SHA256SUMS).

After the checksums, a per-kind content check (:data:`VALIDATORS`) opens each file, so that a truncated pickle or
a class-conditional teacher where an unconditional one is expected fails here, before any job starts.

Downloads stream into a temporary file next to the destination, hash while writing, and are renamed into place
only when every check passed: a failed or interrupted download leaves nothing behind.

Command line: ``python -m sim_core.assets {list,verify,download} --asset-dir DIR [--path NAME=PATH]
[--sha256 NAME=HEX] [NAME ...]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import sys
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from sim_core.errors import CheckpointError, ConfigError
from sim_core.files import atomic_write_text
from sim_core.registry import Registry, UnknownNameError
from sim_core.schema import split_pair

SHA256SUMS = "SHA256SUMS"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")  # coreutils sha256sum format (text or binary marker)
DOWNLOAD_HINT = "`snakemake download_assets`"


@dataclass(frozen=True)
class Asset:
    """One named file, or with ``folder`` a folder (a Hugging Face repository as ``save_pretrained`` writes it,
    hashed as a tree: files.tree_sha256). ``params`` are the content check's expectations (label_dim, image counts,
    config values, ...); a folder's ``params["repo"]`` (and ``allow_patterns``) is what a download fetches, and
    ``params["manual"]`` says how to get a file no URL serves as it is (a member of an archive)."""

    name: str
    filename: str
    urls: tuple
    kind: str
    description: str
    sha256: Optional[str] = None
    md5: Optional[str] = None
    size: Optional[int] = None
    params: Mapping[str, Any] = field(default_factory=dict)
    optional: bool = False
    folder: bool = False


MANIFEST = Registry("asset")
VALIDATORS = Registry("asset kind")  # kind -> fn(path, asset), raising CheckpointError
# kind -> fn(asset, directory) -> total size: kinds whose file may be replaced by an extracted directory
DIRECTORY_CHECKS = Registry("asset directory kind")


def register_asset(asset: Asset) -> None:
    if any(MANIFEST.get(n).filename == asset.filename for n in MANIFEST.names()):
        raise ValueError(f"asset file name {asset.filename} is used twice")
    MANIFEST.register(asset.name, asset)


def _load_manifest() -> None:
    """Import every testbed's declaration: the testbeds register their files when they are declared."""
    from sim_core.testbeds import TESTBEDS
    for name in TESTBEDS.names():
        TESTBEDS.get(name)





def manifest_names(include_optional: bool = True) -> list[str]:
    _load_manifest()
    return [n for n in MANIFEST.names() if include_optional or not MANIFEST.get(n).optional]


def _entries(manifest) -> Mapping[str, Asset]:
    if manifest is None:
        _load_manifest()
        return {n: MANIFEST.get(n) for n in MANIFEST.names()}
    if isinstance(manifest, Registry):
        return {n: manifest.get(n) for n in manifest.names()}
    return dict(manifest)


def _lookup(entries: Mapping[str, Asset], name: str) -> Asset:
    if name not in entries:
        raise UnknownNameError(f"unknown asset {name!r}; valid names: {', '.join(sorted(entries))}")
    return entries[name]


# ---------------------------------------------------------------------------------------------------------------
# Settings: where each file is, which checksum the user pins


def resolve_paths(asset_dir, overrides: Optional[Mapping[str, Any]] = None, manifest=None) -> dict[str, Path]:
    """{name: path} for every asset: ``overrides[name]`` if given (``~`` expanded), else asset_dir/filename."""
    entries = _entries(manifest)
    overrides = dict(overrides or {})
    for key in overrides:
        if key not in entries:
            raise ConfigError(f"asset_files.paths.{key}: unknown asset; valid names: {', '.join(sorted(entries))}")
    asset_dir = Path(os.path.expanduser(str(asset_dir)))
    return {n: Path(os.path.expanduser(str(overrides[n]))) if overrides.get(n) else asset_dir / a.filename
            for n, a in entries.items()}


def _user_sha256(sha256: Optional[Mapping[str, str]], entries) -> dict[str, str]:
    out = {}
    for key, value in (sha256 or {}).items():
        if key not in entries:
            raise ConfigError(f"asset_files.sha256.{key}: unknown asset; valid names: {', '.join(sorted(entries))}")
        if value is None:
            continue
        v = str(value).strip().lower()
        if not _HEX64.match(v):
            raise ConfigError(f"asset_files.sha256.{key}: {value!r} is not a SHA-256 (64 hex digits)")
        out[key] = v
    return out


# ---------------------------------------------------------------------------------------------------------------
# Hashes and the SHA256SUMS record


def _digest_stream(read: Callable[[int], bytes], md5: bool, write=None) -> tuple[str, Optional[str], int]:
    """(SHA-256, MD5 or None, size) of what ``read`` yields in 1 MiB chunks, each also handed to ``write``."""
    h, m, size = hashlib.sha256(), hashlib.md5() if md5 else None, 0
    for chunk in iter(lambda: read(1 << 20), b""):
        if write is not None:
            write(chunk)
        h.update(chunk)
        if m is not None:
            m.update(chunk)
        size += len(chunk)
    return h.hexdigest(), (m.hexdigest() if m is not None else None), size


def file_digests(path, md5: bool = False) -> tuple[str, Optional[str], int]:
    """(SHA-256, MD5 or None, size) of a file in one streaming pass. (files.sha256_file hashes SHA-256
    only; the CIFAR-10 archive also needs its MD5, and reading 170 MB twice is avoidable.)"""
    with open(path, "rb") as f:
        return _digest_stream(f.read, md5)


def read_sha256sums(asset_dir) -> dict[str, str]:
    """{filename: sha256} from <asset_dir>/SHA256SUMS ({} when there is none)."""
    path = Path(asset_dir) / SHA256SUMS
    if not path.is_file():
        return {}
    out = {}
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _SUMS_LINE.match(line.strip())
        if m is None:
            raise CheckpointError(f"{path}:{i} is not a '<sha256>  <filename>' line; fix or delete it")
        out[m.group(2)] = m.group(1).lower()
    return out


def record_sha256(asset_dir, filename: str, sha256: str) -> bool:
    """Add ``<sha256>  <filename>`` to <asset_dir>/SHA256SUMS (atomically, under a lock); True if written.

    An existing line for the file is never replaced: a different checksum there is a one-line CheckpointError.
    """
    asset_dir = Path(asset_dir)
    asset_dir.mkdir(parents=True, exist_ok=True)
    with open(asset_dir / f".{SHA256SUMS}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent jobs verifying first-use files share the record
        sums = read_sha256sums(asset_dir)
        old = sums.get(filename)
        if old is not None:
            if old != sha256:
                raise CheckpointError(f"{asset_dir / SHA256SUMS} pins {filename} to {old}, not {sha256}; "
                                      "remove that line if the new file is intended")
            return False
        sums[filename] = sha256
        atomic_write_text(asset_dir / SHA256SUMS, "".join(f"{h}  {f}\n" for f, h in sorted(sums.items())))
        return True


def _expected_sha256(asset: Asset, user: Optional[str], pins: Mapping[str, str]) -> tuple[Optional[str], str]:
    """The SHA-256 a file must have and where that comes from: 'config' > 'manifest' > 'SHA256SUMS' (else None,
    'first use')."""
    if user:
        return user, "config"
    if asset.sha256:
        return asset.sha256, "manifest"
    if asset.filename in pins:
        return pins[asset.filename], SHA256SUMS
    return None, "first use"


def _check_digests(asset: Asset, where, sha: str, md5: Optional[str], size: int, user: Optional[str],
                   pins: Mapping[str, str], asset_dir: Path) -> str:
    """Compares a file's digests with the expected ones; returns where the SHA-256 expectation came from."""
    expected, source = _expected_sha256(asset, user, pins)
    if not user and asset.size is not None and size != asset.size:
        raise CheckpointError(f"asset {asset.name}: {where} has {size} bytes, expected {asset.size} "
                              "(truncated or a different file)")
    if expected is not None and sha != expected:
        why = {"config": f"asset_files.sha256.{asset.name}", "manifest": "the manifest",
               SHA256SUMS: f"pinned on first use in {asset_dir / SHA256SUMS}; remove its line if the new file is "
                           "intended"}[source]
        raise CheckpointError(f"asset {asset.name}: {where} has SHA-256 {sha}, expected {expected} ({why})")
    if not user and asset.md5 is not None and md5 != asset.md5:
        raise CheckpointError(f"asset {asset.name}: {where} has MD5 {md5}, expected {asset.md5} (the manifest)")
    return source


# ---------------------------------------------------------------------------------------------------------------
# Content checks by kind: fn(path, asset) -> None, raising CheckpointError


def first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else type(e).__name__


def _check_directory(asset: Asset, path: Path, user: Optional[str]) -> int:
    """The kind's check of an extracted directory (per-file checksums); returns its total size."""
    if asset.kind not in DIRECTORY_CHECKS:
        raise CheckpointError(f"asset {asset.name}: {path} is a directory, expected the file {asset.filename}")
    if user:
        raise CheckpointError(f"asset {asset.name}: {path} is a directory, but asset_files.sha256.{asset.name} pins a "
                              f"file; point asset_files.paths.{asset.name} at {asset.filename} or drop the pin")
    return DIRECTORY_CHECKS.get(asset.kind)(asset, path)


def _content_check(asset: Asset, path: Path) -> None:
    validator: Callable = VALIDATORS.get(asset.kind)
    try:
        validator(path, asset)
    except CheckpointError as e:
        msg = str(e)
        raise CheckpointError(msg if msg.startswith(f"asset {asset.name}:") else f"asset {asset.name}: {msg}") \
            from None


# ---------------------------------------------------------------------------------------------------------------
# Verification


def _missing_message(missing: list[tuple[Asset, Path]]) -> str:
    if len(missing) == 1:
        a, p = missing[0]
        return (f"asset {a.name}: {p} not found; run {DOWNLOAD_HINT} or download {a.urls[0]} to {p} "
                f"(or set asset_files.paths.{a.name})")
    listed = ", ".join(f"{a.name} ({p} from {a.urls[0]})" for a, p in missing)
    return (f"{len(missing)} assets missing: {listed}; run {DOWNLOAD_HINT} or download each URL to its path "
            "(or set asset_files.paths.<name>)")


def verify_assets(names, asset_dir, overrides: Optional[Mapping[str, Any]] = None,
                  sha256: Optional[Mapping[str, str]] = None, manifest=None) -> dict[str, dict]:
    """Check the named assets (None: all non-optional ones) before any work starts.

    First the existence of every file (all missing files in one message), then per asset: size, SHA-256 (config >
    manifest > SHA256SUMS; see the module docstring), MD5, and the kind's content check; the first problem is a
    one-line CheckpointError. A file that passes and has no SHA-256 record yet is pinned in SHA256SUMS.
    Returns {name: {path, sha256, size, sha256_source}}: sha256 None for an extracted directory; sha256_source
    'config' | 'manifest' | 'SHA256SUMS' | 'pinned now' (recorded by this call) | 'member MD5s' (a directory) |
    'first use' (no record could be written).
    """
    entries = _entries(manifest)
    if names is None:
        names = [n for n, a in entries.items() if not a.optional]
    assets = [_lookup(entries, n) for n in names]
    user = _user_sha256(sha256, entries)
    paths = resolve_paths(asset_dir, overrides, entries)
    asset_dir = Path(os.path.expanduser(str(asset_dir)))
    missing = [(a, paths[a.name]) for a in assets if not paths[a.name].exists()]
    if missing:
        raise CheckpointError(_missing_message(missing))
    for a in assets:
        VALIDATORS.get(a.kind)  # an unknown kind in a custom manifest fails before any hashing
    pins = read_sha256sums(asset_dir)
    out = {}
    for a in assets:
        path = paths[a.name]
        if a.folder:
            out[a.name] = _verify_folder(a, path, user.get(a.name), pins, asset_dir)
            continue
        if path.is_dir():
            size = _check_directory(a, path, user.get(a.name))
            _content_check(a, path)
            out[a.name] = dict(path=str(path), sha256=None, size=size, sha256_source="member MD5s")
            continue
        sha, md5, size = file_digests(path, md5=a.md5 is not None)
        source = _check_digests(a, path, sha, md5, size, user.get(a.name), pins, asset_dir)
        _content_check(a, path)
        if a.filename not in pins:
            source = _pin(asset_dir, a, sha, source)
        out[a.name] = dict(path=str(path), sha256=sha, size=size, sha256_source=source)
    return out


def _verify_folder(a: Asset, path: Path, user: Optional[str], pins, asset_dir: Path) -> dict:
    """A folder asset: its tree digest checked (config > manifest > SHA256SUMS, pinned on first use), then its
    content (the files and config values the manifest expects)."""
    if not path.is_dir():
        raise CheckpointError(f"asset {a.name}: {path} is a file, expected the folder {a.filename}/")
    from sim_core.files import tree_files, tree_sha256
    sha, size = tree_sha256(path), sum(f.stat().st_size for f in tree_files(path))
    source = _check_digests(a, f"{path}/ (tree digest)", sha, None, size, user, pins, asset_dir)
    _content_check(a, path)
    if a.filename not in pins:
        source = _pin(asset_dir, a, sha, source)
    return dict(path=str(path), sha256=sha, size=size, sha256_source=source)


def _pin(asset_dir: Path, a: Asset, sha: str, source: str) -> str:
    try:
        record_sha256(asset_dir, a.filename, sha)
    except OSError as e:  # a read-only asset directory: the checks passed, only the record is lost
        warnings.warn(f"asset {a.name}: could not record its SHA-256 in {asset_dir / SHA256SUMS}: {first_line(e)}")
        return source
    return "pinned now" if source == "first use" else source


# ---------------------------------------------------------------------------------------------------------------
# Downloads


def _fetch(url: str, tmp_fd: int, timeout: float, md5: bool) -> tuple[str, Optional[str], int]:
    """Stream ``url`` into the open temp file, hashing while writing; (sha256, md5, size)."""
    req = urllib.request.Request(url, headers={"User-Agent": "sim-harness"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, os.fdopen(tmp_fd, "wb", closefd=False) as f:
        announced = resp.headers.get("Content-Length")
        sha, md5_hex, size = _digest_stream(resp.read, md5, f.write)
        f.flush()
        os.fsync(f.fileno())
    if announced is not None and announced.isdigit() and int(announced) != size:
        raise OSError(f"truncated: received {size} of {announced} bytes")
    return sha, md5_hex, size


def download_asset(name: str, dest, url: Optional[str] = None, timeout: float = 60.0, asset_dir=None,
                   sha256: Optional[str] = None, manifest=None) -> dict:
    """Download one asset to ``dest`` (its URL from the manifest unless ``url`` is given; file:// works).

    The bytes go to a temporary file in dest's directory and are hashed while written; they are checked (size,
    SHA-256 from ``sha256`` > manifest > SHA256SUMS, MD5, content) and renamed to ``dest`` only when all pass,
    then the SHA-256 is recorded in <asset_dir>/SHA256SUMS (asset_dir defaults to dest's directory). Any failure
    removes the temporary file and raises one line naming the URL. Returns {path, sha256, size, url}.
    """
    entries = _entries(manifest)
    a = _lookup(entries, name)
    user = _user_sha256({name: sha256} if sha256 else None, entries).get(name)
    dest = Path(os.path.expanduser(str(dest)))
    asset_dir = Path(os.path.expanduser(str(asset_dir))) if asset_dir is not None else dest.parent
    VALIDATORS.get(a.kind)
    if a.params.get("manual") and not url:
        raise CheckpointError(f"asset {name}: {a.params['manual']}; then put it at {dest}")
    pins = read_sha256sums(asset_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if a.folder:
        return _download_folder(a, dest, user, pins, asset_dir)
    errors = []
    for u in ([url] if url else list(a.urls)):
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            try:
                sha, md5, size = _fetch(u, fd, timeout, md5=a.md5 is not None)
            finally:
                os.close(fd)
            source = _check_digests(a, f"the download from {u}", sha, md5, size, user, pins, asset_dir)
            _content_check(a, Path(tmp))
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except CheckpointError as e:
            Path(tmp).unlink(missing_ok=True)
            errors.append(f"{e} (nothing was written)")
            continue
        except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts and truncation are OSErrors
            Path(tmp).unlink(missing_ok=True)
            errors.append(f"asset {name}: download from {u} failed: {first_line(e)}")
            continue
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if a.filename not in pins:
            source = _pin(asset_dir, a, sha, source)
        return dict(path=str(dest), sha256=sha, size=size, url=u, sha256_source=source)
    raise CheckpointError("; ".join(errors))


def _download_folder(a: Asset, dest: Path, user: Optional[str], pins, asset_dir: Path) -> dict:
    """A Hugging Face repository snapshot (params repo, allow_patterns) into a temporary folder beside ``dest``,
    checked like a placed folder and renamed into place only when every check passed."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"asset {a.name}: downloading {a.params['repo']} needs huggingface_hub "
                              f"(pip install huggingface_hub), or put the folder at {dest}") from None
    from sim_core.files import atomic_directory
    try:
        with atomic_directory(dest) as tmp:
            snapshot_download(a.params["repo"], local_dir=str(tmp), allow_patterns=a.params.get("allow_patterns"))
            info = _verify_folder(a, tmp, user, pins, asset_dir)
    except CheckpointError as e:
        raise CheckpointError(f"{e} (nothing was written)") from None
    except Exception as e:  # the hub client raises its own error classes for network and repository problems
        raise CheckpointError(f"asset {a.name}: download of {a.params['repo']} failed: {first_line(e)}") from None
    return {**info, "path": str(dest), "url": a.urls[0]}


def download_assets(names, asset_dir, overrides: Optional[Mapping[str, Any]] = None,
                    sha256: Optional[Mapping[str, str]] = None, timeout: float = 60.0, manifest=None) -> dict:
    """Download every named asset (None: all non-optional ones) that is not there yet.

    A file already at its path is verified instead and kept (``downloaded: False``); if it does not verify, the
    error says so and nothing is overwritten. Returns {name: {path, sha256, size, downloaded, ...}}.
    """
    entries = _entries(manifest)
    if names is None:
        names = [n for n, a in entries.items() if not a.optional]
    for n in names:
        _lookup(entries, n)
    user = _user_sha256(sha256, entries)
    paths = resolve_paths(asset_dir, overrides, entries)
    out = {}
    for n in names:
        if paths[n].exists():
            try:
                info = verify_assets([n], asset_dir, overrides, user, entries)[n]
            except CheckpointError as e:
                raise CheckpointError(f"{e} [the existing file was kept; delete it to download it again]") from None
            out[n] = {**info, "downloaded": False}
        else:
            info = download_asset(n, paths[n], timeout=timeout, asset_dir=asset_dir, sha256=user.get(n),
                                  manifest=entries)
            out[n] = {**info, "downloaded": True}
    return out


# ---------------------------------------------------------------------------------------------------------------
# Command line


def _pairs(items, what: str) -> dict[str, str]:
    return {k: v.strip() for k, v in (split_pair(item, f"--{what}") for item in items or [])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim_core.assets", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("list", "verify", "download"))
    p.add_argument("names", nargs="*", help="asset names (default: all non-optional ones)")
    p.add_argument("--asset-dir", required=True, help="where the files are (or go), with their SHA256SUMS")
    p.add_argument("--path", action="append", metavar="NAME=PATH", help="a file elsewhere (repeatable)")
    p.add_argument("--sha256", action="append", metavar="NAME=HEX", help="a checksum to require (repeatable)")
    p.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_intermixed_args(argv)
    try:
        names = a.names or None
        if a.action == "list":
            entries = _entries(None)
            out = {n: {k: v for k, v in dataclasses.asdict(_lookup(entries, n)).items() if k != "params"}
                   for n in (names or entries)}
        elif a.action == "verify":
            out = verify_assets(names, a.asset_dir, _pairs(a.path, "path"), _pairs(a.sha256, "sha256"))
        else:
            out = download_assets(names, a.asset_dir, _pairs(a.path, "path"), _pairs(a.sha256, "sha256"),
                                  timeout=a.timeout)
    except (CheckpointError, ConfigError, UnknownNameError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    # `python -m sim_core.assets` runs this file as __main__, a second copy of the module: the testbeds register their
    # files in sim_core.assets, so run that one's main
    from sim_core.assets import main as _main
    sys.exit(_main())
