"""CIFAR-10 "python version" (cifar-10-python.tar.gz) read without torchvision's downloader.

The archive (https://www.cs.toronto.edu/~kriz/cifar.html) holds ``cifar-10-batches-py/data_batch_1..5``,
``test_batch`` and ``batches.meta``: Python-2 pickles (protocol 2) of dicts with bytes keys; ``b"data"`` is a
uint8 array (10000, 3072) whose rows are the 1024 red, then green, then blue pixels of a 32x32 image in row-major
order, and ``b"labels"`` a list of ints in 0..9. Files are read straight from the tar (no extraction) or from an
extracted ``cifar-10-batches-py/`` directory, and unpickled by :class:`_ArrayOnlyUnpickler`, which resolves only the
three numpy globals an array needs: a batch that names anything else (``os.system``, ...) is refused before any of
it runs.

Class labels for conditional generators come from a small registry: ``training_images`` (the label of a uniformly random
training image, as SiD and DI draw them; docs/reference-code.md#class-labels) and ``uniform`` (EDM's generate.py).
"""
from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from sim_core.errors import CheckpointError
from sim_core.files import atomic_write_bytes
from sim_core.registry import Registry

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
BATCH_DIR = "cifar-10-batches-py"          # member folder inside the archive (CIFAR-10 page; torchvision base_folder)
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
META_FILE = "batches.meta"
# The real split sizes: 5 training batches of 10000 and one test batch of 10000 (CIFAR-10 page).
SPLIT_SIZES = {"train": 50000, "test": 10000}
SPLIT_BATCHES = {"train": TRAIN_BATCHES, "test": TEST_BATCHES}

# numpy's array-reconstruction function under both module names: numpy 1.x writes numpy.core.multiarray (the
# name inside the real CIFAR-10 pickles), numpy 2 numpy._core.multiarray. Taken from ndarray.__reduce__ so that
# no private module is imported by name.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Resolves only numpy's array globals; any other global ends the load before it is called."""

    def find_class(self, module, name):
        obj = _ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name} (only numpy arrays are allowed)")
        return obj


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # refused global, truncated or garbage bytes
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"CIFAR-10 {where} is not a CIFAR-10 batch pickle: {msg}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"CIFAR-10 {where} holds a {type(obj).__name__}, not a batch dict")
    return obj


def find_batch_dir(path) -> Path:
    """The folder holding the batch files: ``path`` itself or its cifar-10-batches-py/ subfolder."""
    path = Path(path)
    for cand in (path, path / BATCH_DIR):
        if (cand / META_FILE).is_file() or (cand / TRAIN_BATCHES[0]).is_file():
            return cand
    raise CheckpointError(f"CIFAR-10 directory {path} has no {BATCH_DIR}/ batch files; point it at the extracted "
                          f"{BATCH_DIR} folder or at cifar-10-python.tar.gz")


def _read_members(path: Path, names: list[str]) -> dict[str, bytes]:
    """The bytes of the named batch files, from the archive (one pass, no extraction) or the directory."""
    if not path.exists():
        raise CheckpointError(f"CIFAR-10 data not found: {path}")
    out: dict[str, bytes] = {}
    if path.is_dir():
        d = find_batch_dir(path)
        for n in names:
            if (d / n).is_file():
                out[n] = (d / n).read_bytes()
    else:
        wanted = {f"{BATCH_DIR}/{n}": n for n in names}
        try:
            with tarfile.open(path, mode="r:*") as tf:
                for member in tf:
                    n = wanted.get(member.name[2:] if member.name.startswith("./") else member.name)
                    if n is not None and member.isfile():
                        out[n] = tf.extractfile(member).read()
                        if len(out) == len(names):
                            break
        except (tarfile.TarError, EOFError, OSError) as e:  # OSError covers gzip/zlib damage
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"CIFAR-10 archive {path} is corrupt or not a tar archive: {msg}; "
                                  "download cifar-10-python.tar.gz again") from None
    missing = [n for n in names if n not in out]
    if missing:
        raise CheckpointError(f"CIFAR-10 {path} lacks {', '.join(f'{BATCH_DIR}/{m}' for m in missing)}; "
                              "is it the CIFAR-10 python version (cifar-10-python.tar.gz)?")
    return out


def _check_meta(data: bytes, where: str) -> list[str]:
    meta = _unpickle(data, where)
    names = meta.get(b"label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        found = len(names) if isinstance(names, list) else type(names).__name__
        raise CheckpointError(f"CIFAR-10 {where}: label_names has {found} entries, expected {NUM_CLASSES} "
                              "(CIFAR-100 or a foreign archive?)")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def _batch_arrays(batch: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != int(np.prod(IMAGE_SHAPE)):
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CheckpointError(f"CIFAR-10 {where}: b'data' is {found}, expected uint8 (N, 3072)")
    if not isinstance(labels, list) or len(labels) != data.shape[0] \
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        found = f"{len(labels)} entries" if isinstance(labels, list) else type(labels).__name__
        raise CheckpointError(f"CIFAR-10 {where}: b'labels' is {found}, expected a list of {data.shape[0]} ints")
    y = np.asarray(labels, dtype=np.int64)
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise CheckpointError(f"CIFAR-10 {where}: labels span [{y.min()}, {y.max()}], expected 0..{NUM_CLASSES - 1}")
    return data, y


def load_cifar10_splits(path, splits=("train", "test"), num_images: Optional[dict] = None) -> dict:
    """{split: (images uint8 (N, 3, 32, 32), labels int64 (N,))} for each split, reading the archive once.

    ``num_images`` maps a split to its expected image count (default: the real 50000 train / 10000 test); tests
    pass small counts for small archives in the same format. Any deviation is a one-line CheckpointError.
    """
    path = Path(path)
    bad = [s for s in splits if s not in SPLIT_BATCHES]
    if bad:
        raise ValueError(f"unknown CIFAR-10 split {bad[0]!r}; valid: {', '.join(SPLIT_BATCHES)}")
    expected = {**SPLIT_SIZES, **(num_images or {})}
    names = [META_FILE] + [b for s in splits for b in SPLIT_BATCHES[s]]
    raw = _read_members(path, names)
    _check_meta(raw[META_FILE], f"{path}:{META_FILE}")
    out = {}
    for s in splits:
        xs, ys = [], []
        for b in SPLIT_BATCHES[s]:
            where = f"{path}:{b}"
            x, y = _batch_arrays(_unpickle(raw.pop(b), where), where)
            xs.append(x)
            ys.append(y)
        x, y = np.concatenate(xs), np.concatenate(ys)
        if x.shape[0] != expected[s]:
            raise CheckpointError(f"CIFAR-10 {path}: the {s} split has {x.shape[0]} images, expected {expected[s]}")
        out[s] = (torch.from_numpy(x.reshape(-1, *IMAGE_SHAPE)), torch.from_numpy(y))  # concatenate copied
    return out


def load_cifar10(path, split: str = "train", num_images: Optional[int] = None):
    """Images uint8 (N, 3, 32, 32) and labels int64 (N,) of ``split`` ('train' | 'test').

    ``path``: cifar-10-python.tar.gz (read in place) or the extracted cifar-10-batches-py/ directory (or its
    parent). ``num_images``: the expected count (default 50000 train, 10000 test).
    """
    counts = None if num_images is None else {split: int(num_images)}
    return load_cifar10_splits(path, (split,), counts)[split]


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1] as x / 127.5 - 1 (EDM training/training_loop.py)."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise ValueError(f"to_model_range expects uint8 pixels, got {images.dtype}")
    return images.to(torch.float32) / 127.5 - 1


# ---------------------------------------------------------------------------------------------------------------
# Class labels for conditional generators


def _one_hot(idx: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(idx, num_classes).to(torch.float32)


class TrainingLabels:
    """Labels of uniformly random training images, one-hot float32 (n, num_classes).

    SiD and DI draw class labels this way for the generator, the online network and their metrics
    (``dataset.get_label(randint(len(dataset)))``; docs/reference-code.md#class-labels), so the classes follow the
    training set's label frequencies (uniform for CIFAR-10).
    """

    def __init__(self, labels=None, num_classes: int = NUM_CLASSES):
        if labels is None:
            raise ValueError("label distribution training_images needs the training labels (testbed.dataset)")
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or labels.numel() == 0 or labels.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"training labels must be a non-empty 1-D integer tensor, got shape "
                             f"{tuple(labels.shape)} dtype {labels.dtype}")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"training labels must lie in [0, {num_classes}), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        self.labels = labels.to(torch.int64)
        self.num_classes = int(num_classes)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        idx = torch.randint(0, self.labels.numel(), (int(n),), generator=generator)
        return _one_hot(self.labels[idx], self.num_classes)

    __call__ = sample


class UniformLabels:
    """Uniformly random classes, one-hot float32 (n, num_classes): EDM generate.py's
    ``torch.eye(label_dim)[randint(label_dim, size=[batch])]``."""

    def __init__(self, labels=None, num_classes: int = NUM_CLASSES):  # labels: accepted and ignored
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return _one_hot(torch.randint(0, self.num_classes, (int(n),), generator=generator), self.num_classes)

    __call__ = sample


LABEL_DISTRIBUTIONS = Registry("label distribution")
LABEL_DISTRIBUTIONS.register("training_images", TrainingLabels)  # SiD / DI
LABEL_DISTRIBUTIONS.register("uniform", UniformLabels)           # EDM generate.py


def build_label_distribution(name: str, labels=None, num_classes: int = NUM_CLASSES):
    """A label sampler by name ('training_images' | 'uniform'); ``labels``: the training labels (N,)."""
    return LABEL_DISTRIBUTIONS.get(name)(labels=labels, num_classes=num_classes)


# ---------------------------------------------------------------------------------------------------------------
# Writing files in the same format (small stand-ins for tests and for machines without the real archive)


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickles as Python 2's cPickle wrote the CIFAR-10 batches: strings as 8-bit STRING opcodes
    (read back as bytes with encoding="bytes"), memo indices from 1 (cPickle's put), numpy's reconstruction
    function as numpy.core.multiarray and dtype arguments as ints, as numpy 1.x wrote them. For batches.meta this
    reproduces the real file byte for byte (its MD5 is torchvision's; tests/test_cifar10.py)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def memoize(self, obj):
        idx = len(self.memo) + 1  # cPickle numbers memo entries from 1, pickle.py from 0
        self.write(self.put(idx))
        self.memo[id(obj)] = idx, obj

    def reducer_override(self, obj):
        if isinstance(obj, np.dtype):
            fn, args, state = obj.__reduce__()
            return fn, (args[0], int(args[1]), int(args[2])), state
        return NotImplemented

    def _save_py2_str(self, obj):
        b = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(b) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) + b)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(b)) + b)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str

    def save_global(self, obj, name=None):
        if obj is _RECONSTRUCT:
            module, name = "numpy.core.multiarray", "_reconstruct"
        elif obj is np.ndarray or obj is np.dtype:
            module, name = "numpy", obj.__name__
        else:
            raise pickle.PicklingError(f"cannot write {obj!r} into a CIFAR-10 batch")
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)

    dispatch[type] = save_global


def _py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def cifar10_batch_files(train: tuple, test: tuple, label_names=None) -> dict[str, bytes]:
    """The seven files of cifar-10-batches-py/ for the given (images uint8 (N,3,32,32), labels (N,)) splits.

    The training images are split over five batches (N must be divisible by 5), as in the real archive.
    """
    label_names = list(label_names or ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                       "ship", "truck"])
    # key order as the real files unpickle (CIFAR-10 page examples; with it batches.meta is byte-identical)
    files = {META_FILE: _py2_pickle({b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in label_names],
                                     b"num_vis": 3072})}

    def batch(x, y, label):
        x = np.ascontiguousarray(np.asarray(x, dtype=np.uint8).reshape(len(x), -1))
        return _py2_pickle({b"batch_label": label.encode(), b"labels": [int(v) for v in np.asarray(y)],
                            b"data": x, b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(x))]})

    x, y = np.asarray(train[0]), np.asarray(train[1])
    if len(x) % len(TRAIN_BATCHES):
        raise ValueError(f"{len(x)} training images do not split into {len(TRAIN_BATCHES)} equal batches")
    k = len(x) // len(TRAIN_BATCHES)
    for i, name in enumerate(TRAIN_BATCHES):
        files[name] = batch(x[i * k:(i + 1) * k], y[i * k:(i + 1) * k], f"training batch {i + 1} of 5")
    files[TEST_BATCHES[0]] = batch(np.asarray(test[0]), np.asarray(test[1]), "testing batch 1 of 1")
    return files


def write_cifar10_archive(path, train: tuple, test: tuple, label_names=None) -> Path:
    """Write a cifar-10-python.tar.gz-format archive (members cifar-10-batches-py/...) atomically."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in cifar10_batch_files(train, test, label_names).items():
            info = tarfile.TarInfo(f"{BATCH_DIR}/{name}")
            info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data))
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
