"""Paper-scale assets: the manifest of files the CIFAR-10 runs need, their checksums, checks and downloads.

Every file is named in :data:`MANIFEST` (teacher pickles, FID reference statistics, Inception weights, the
CIFAR-10 archive, SiD's released generators). Files live in one asset directory under their manifest file names,
or anywhere else through per-asset path overrides (``asset_files.paths.<name>`` in config), because cluster nodes
often have no internet and keep such files on shared storage.

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

from .checkpoint import CheckpointError, atomic_write_text
from .registry import Registry, UnknownNameError

SHA256SUMS = "SHA256SUMS"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")  # coreutils sha256sum format (text or binary marker)
DOWNLOAD_HINT = "`snakemake download_assets`"


@dataclass(frozen=True)
class Asset:
    """One named file. ``params`` are the content check's expectations (label_dim, image counts, ...)."""

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


MANIFEST = Registry("asset")


def _add(asset: Asset) -> None:
    if any(MANIFEST.get(n).filename == asset.filename for n in MANIFEST.names()):
        raise ValueError(f"asset file name {asset.filename} is used twice")
    MANIFEST.register(asset.name, asset)


_EDM = "https://nvlabs-fi-cdn.nvidia.com/edm"  # EDM README, pretrained models and FID reference statistics
_SID = "https://huggingface.co/UT-Austin-PML/SiD/resolve/main"  # SiD README, released CIFAR-10 generators

# sha256=None: NVIDIA publishes no checksums for these (EDM README); pinned in SHA256SUMS on first use.
_add(Asset("teacher_uncond", "edm-cifar10-32x32-uncond-vp.pkl", (f"{_EDM}/pretrained/edm-cifar10-32x32-uncond-vp.pkl",),
           "edm_pickle", "EDM teacher, CIFAR-10 unconditional, VP/DDPM++ (FID 1.97 at 35 NFE)",
           params={"label_dim": 0}))
_add(Asset("teacher_cond", "edm-cifar10-32x32-cond-vp.pkl", (f"{_EDM}/pretrained/edm-cifar10-32x32-cond-vp.pkl",),
           "edm_pickle", "EDM teacher, CIFAR-10 class-conditional, VP/DDPM++ (FID 1.79 at 35 NFE)",
           params={"label_dim": 10}))
# sha256=None: no published checksum (EDM README); pinned on first use.
_add(Asset("fid_ref", "cifar10-32x32.npz", (f"{_EDM}/fid-refs/cifar10-32x32.npz",),
           "fid_ref", "EDM's FID reference statistics (mu, sigma) of the 50k CIFAR-10 training images"))
# SHA-256: torch hub's convention puts the hash prefix 6726825d in the file name (torch.hub.check_hash), and the
# full value is the one recorded for this file by public projects that pin it (with its size, 95,628,359 bytes);
# pytorch-fid's pt_inception-2015-12-05-6726825d.pth carries the same SHA-256.
_add(Asset("inception", "weights-inception-2015-12-05-6726825d.pth",
           ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
            "weights-inception-2015-12-05-6726825d.pth",),
           "inception", "torch-fidelity's Inception-v3 weights (the TF FID graph of 2015-12-05)",
           sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2", size=95_628_359,
           # tensors that torch-fidelity's FeatureExtractorInceptionV3 builds: BasicConv2d(3, 32, kernel_size=3)
           # (conv without bias) and nn.Linear(2048, 1008) (torch_fidelity/feature_extractor_inceptionv3.py)
           params={"tensors": {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "fc.weight": (1008, 2048)}}))
# MD5 c58f...: the checksum torchvision's CIFAR10 class checks (tgz_md5), and its per-file MD5s for an extracted
# directory (train_list, test_list, meta in torchvision/datasets/cifar.py). SHA-256 unknown to the project:
# pinned on first use. Size 170,498,071 bytes: as recorded with that MD5 by public reports of the archive.
_add(Asset("cifar10", "cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
           "cifar10", "CIFAR-10 python version (labels of training images for conditional runs)",
           md5="c58f30108f718f92721af3b95e74349a", size=170_498_071,
           params={"train_count": 50000, "test_count": 10000,  # CIFAR-10 page: 5 x 10000 train, 10000 test
                   "member_md5": {"data_batch_1": "c99cafc152244af753f735de768cd75f",
                                  "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                                  "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
                                  "data_batch_4": "634d18415352ddfa80567beed471001a",
                                  "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
                                  "test_batch": "40351d587109b95175f43aff81a1287e",
                                  "batches.meta": "5ff9c542aee3614f3951f8cda6e48888"}}))
# Optional, for calibrating the metric (expected FID ~1.92 uncond / ~1.71 cond, SiD README). sha256=None: the
# Hugging Face page lists none that we could fetch here; pinned on first use. Same pickle format as EDM's.
_add(Asset("sid_uncond", "sid-cifar10-uncond-alpha1.2-network-snapshot-1.200000-403968.pkl",
           (f"{_SID}/cifar10-uncond/alpha1.2/network-snapshot-1.200000-403968.pkl",),
           "edm_pickle", "SiD's released one-step generator, CIFAR-10 unconditional, alpha 1.2",
           params={"label_dim": 0}, optional=True))
_add(Asset("sid_cond", "sid-cifar10-cond-alpha1.2-network-snapshot-1.200000-713312.pkl",
           (f"{_SID}/cifar10-cond/alpha1.2/network-snapshot-1.200000-713312.pkl",),
           "edm_pickle", "SiD's released one-step generator, CIFAR-10 class-conditional, alpha 1.2",
           params={"label_dim": 10}, optional=True))

DIRECTORY_KINDS = {"cifar10"}  # kinds whose file may be replaced by an extracted directory


def _config_error(msg: str):
    from .config import ConfigError  # here, not at the top: config may import this module
    return ConfigError(msg)


def manifest_names(include_optional: bool = True) -> list[str]:
    return [n for n in MANIFEST.names() if include_optional or not MANIFEST.get(n).optional]


def _entries(manifest) -> Mapping[str, Asset]:
    if manifest is None:
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
            raise _config_error(f"asset_files.paths.{key}: unknown asset; valid names: {', '.join(sorted(entries))}")
    asset_dir = Path(os.path.expanduser(str(asset_dir)))
    return {n: Path(os.path.expanduser(str(overrides[n]))) if overrides.get(n) else asset_dir / a.filename
            for n, a in entries.items()}


def _user_sha256(sha256: Optional[Mapping[str, str]], entries) -> dict[str, str]:
    out = {}
    for key, value in (sha256 or {}).items():
        if key not in entries:
            raise _config_error(f"asset_files.sha256.{key}: unknown asset; valid names: {', '.join(sorted(entries))}")
        if value is None:
            continue
        v = str(value).strip().lower()
        if not _HEX64.match(v):
            raise _config_error(f"asset_files.sha256.{key}: {value!r} is not a SHA-256 (64 hex digits)")
        out[key] = v
    return out


# ---------------------------------------------------------------------------------------------------------------
# Hashes and the SHA256SUMS record


def file_digests(path, md5: bool = False) -> tuple[str, Optional[str], int]:
    """(SHA-256, MD5 or None, size) of a file in one streaming pass. (checkpoint.sha256_file hashes SHA-256
    only; the CIFAR-10 archive also needs its MD5, and reading 170 MB twice is avoidable.)"""
    h, m, size = hashlib.sha256(), hashlib.md5() if md5 else None, 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            if m is not None:
                m.update(chunk)
            size += len(chunk)
    return h.hexdigest(), (m.hexdigest() if m is not None else None), size


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


VALIDATORS = Registry("asset kind")


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else type(e).__name__


def _conditioning(label_dim) -> str:
    return "unconditional" if label_dim == 0 else f"class-conditional, label_dim {label_dim}"


@VALIDATORS.register("edm_pickle")
def validate_edm_pickle(path: Path, asset: Asset) -> None:
    """NVIDIA's persistent-class pickle (EDM teacher or SiD snapshot) with the expected label_dim."""
    from .edm_pickle import inspect_edm_pickle  # written alongside; imported only when a pickle is checked
    info = inspect_edm_pickle(path)
    want, got = asset.params.get("label_dim"), info.get("label_dim")
    if want is not None and got != want:
        raise CheckpointError(f"asset {asset.name}: {path} is a {_conditioning(got)} EDM pickle, expected "
                              f"{_conditioning(want)}; check asset_files.paths.{asset.name}")


@VALIDATORS.register("fid_ref")
def validate_fid_ref(path: Path, asset: Asset) -> None:
    """EDM's reference statistics (npz with mu, sigma), as the FID code will read them."""
    from .image_metrics import load_reference_stats  # written alongside; imported only when needed
    load_reference_stats(path)


@VALIDATORS.register("inception")
def validate_inception(path: Path, asset: Asset) -> None:
    """A state dict of tensors (loaded with weights_only=True: no code runs) holding the expected tensors."""
    import torch
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"asset {asset.name}: {path} is not a torch state dict: {_first_line(e)}") from None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"asset {asset.name}: {path} holds a {type(sd).__name__}, not a state dict of tensors")
    for key, shape in asset.params.get("tensors", {}).items():
        if key not in sd or tuple(sd[key].shape) != tuple(shape):
            found = tuple(sd[key].shape) if key in sd else "missing"
            raise CheckpointError(f"asset {asset.name}: {path} tensor {key} is {found}, expected {tuple(shape)}; "
                                  "not torch-fidelity's Inception-v3 weights")


@VALIDATORS.register("cifar10")
def validate_cifar10(path: Path, asset: Asset) -> None:
    """The archive (or extracted directory) opens and holds the expected train/test image counts."""
    from .cifar10 import load_cifar10_splits
    load_cifar10_splits(path, ("train", "test"), {"train": asset.params.get("train_count", 50000),
                                                  "test": asset.params.get("test_count", 10000)})


def _check_directory(asset: Asset, path: Path, user: Optional[str]) -> int:
    """Per-file MD5s of an extracted directory; returns its total size."""
    if asset.kind not in DIRECTORY_KINDS:
        raise CheckpointError(f"asset {asset.name}: {path} is a directory, expected the file {asset.filename}")
    if user:
        raise CheckpointError(f"asset {asset.name}: {path} is a directory, but asset_files.sha256.{asset.name} pins a "
                              f"file; point asset_files.paths.{asset.name} at {asset.filename} or drop the pin")
    from .cifar10 import find_batch_dir
    d, total = find_batch_dir(path), 0
    for member, expected in asset.params.get("member_md5", {}).items():
        f = d / member
        if not f.is_file():
            raise CheckpointError(f"asset {asset.name}: {f} not found; the directory is incomplete")
        _, md5, size = file_digests(f, md5=True)
        total += size
        if md5 != expected:
            raise CheckpointError(f"asset {asset.name}: {f} has MD5 {md5}, expected {expected} (the manifest)")
    return total


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


def _pin(asset_dir: Path, a: Asset, sha: str, source: str) -> str:
    try:
        record_sha256(asset_dir, a.filename, sha)
    except OSError as e:  # a read-only asset directory: the checks passed, only the record is lost
        warnings.warn(f"asset {a.name}: could not record its SHA-256 in {asset_dir / SHA256SUMS}: {_first_line(e)}")
        return source
    return "pinned now" if source == "first use" else source


# ---------------------------------------------------------------------------------------------------------------
# Downloads


def _fetch(url: str, tmp_fd: int, timeout: float, md5: bool) -> tuple[str, Optional[str], int]:
    """Stream ``url`` into the open temp file, hashing while writing; (sha256, md5, size)."""
    h, m, size = hashlib.sha256(), hashlib.md5() if md5 else None, 0
    req = urllib.request.Request(url, headers={"User-Agent": "sim-harness"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, os.fdopen(tmp_fd, "wb", closefd=False) as f:
        announced = resp.headers.get("Content-Length")
        for chunk in iter(lambda: resp.read(1 << 20), b""):
            f.write(chunk)
            h.update(chunk)
            if m is not None:
                m.update(chunk)
            size += len(chunk)
        f.flush()
        os.fsync(f.fileno())
    if announced is not None and announced.isdigit() and int(announced) != size:
        raise OSError(f"truncated: received {size} of {announced} bytes")
    return h.hexdigest(), (m.hexdigest() if m is not None else None), size


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
    pins = read_sha256sums(asset_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
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
            errors.append(f"asset {name}: download from {u} failed: {_first_line(e)}")
            continue
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if a.filename not in pins:
            source = _pin(asset_dir, a, sha, source)
        return dict(path=str(dest), sha256=sha, size=size, url=u, sha256_source=source)
    raise CheckpointError("; ".join(errors))


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
    out = {}
    for item in items or []:
        if "=" not in item:
            raise _config_error(f"--{what} {item!r}: expected NAME=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim_core.assets", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("list", "verify", "download"))
    p.add_argument("names", nargs="*", help="asset names (default: all non-optional ones)")
    p.add_argument("--asset-dir", required=True, help="where the files are (or go), with their SHA256SUMS")
    p.add_argument("--path", action="append", metavar="NAME=PATH", help="a file elsewhere (repeatable)")
    p.add_argument("--sha256", action="append", metavar="NAME=HEX", help="a checksum to require (repeatable)")
    p.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_intermixed_args(argv)
    from .config import ConfigError
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
    sys.exit(main())
