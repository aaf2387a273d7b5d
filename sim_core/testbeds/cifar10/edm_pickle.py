"""Load NVIDIA's EDM pickles (and SiD / Diff-Instruct generator snapshots) without executing any of their code.

Format (docs/reference-code.md#nvidias-edm-checkpoints; NVlabs/edm torch_utils/persistence.py): EDM's training loop writes
``pickle.dump(dict(ema=<EDMPrecond>, loss_fn=<EDMLoss>, augment_pipe=<AugmentPipe>, dataset_kwargs=<EasyDict>))``;
SiD writes ``dict(ema=G_ema)`` and Diff-Instruct ``dict(ema=G_ema, Sg=...)``. Every network class is a
``persistence.persistent_class``: an instance pickles as ``_reconstruct_persistent_obj(meta)`` with ``meta = {type:
'class', version: 6, module_src: <the whole source file of the class>, class_name: <bare class name>, state: <the
object's __dict__>}``, and unpickling it with NVIDIA's code ``exec``s ``module_src``. ``torch.nn.ModuleDict``
containers pickle as ordinary torch objects; tensors through torch's own reducers (their storage as
``torch.storage._load_from_bytes(<legacy torch.save bytes>)``); a few attributes are numpy scalars.

Here the unpickler resolves only an explicit allow-list of globals. ``_reconstruct_persistent_obj`` becomes a
record of the meta dict (class name, version, SHA-256 of the source, state) and the source is never run;
``ModuleDict`` becomes a record of its state; storages go through ``torch.load(weights_only=True)``. Any other
global ends the load with a one-line :class:`CheckpointError`. The records are then checked against the project's
``EDMPrecond(SongUNet(**kwargs))`` built from the checkpoint's own constructor arguments: class names, the exact
set of tensor names and shapes, and the numeric attributes that shape the forward pass (GroupNorm groups and eps,
dropout, residual scale, resampling flags, embedding settings). Only then are the tensors copied by name.
"""
from __future__ import annotations

import hashlib
import inspect
import io
import math
import pickle
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from sim_core.core.edm import EDMPrecond
from sim_core.errors import CheckpointError, ConfigError
from sim_core.files import check_file
from sim_core.nets.songunet import SONGUNET_DEFAULTS, SongUNet, uninitialized

try:  # numpy >= 2 (and the stub in 1.26) / numpy 1.x
    from numpy._core import multiarray as _np_multiarray
except ImportError:  # pragma: no cover - numpy < 1.26
    from numpy.core import multiarray as _np_multiarray

PERSISTENCE_VERSION = 6  # torch_utils/persistence.py `_version` in NVlabs/edm (and SiD / DI, which copy it)
PICKLE_FORMAT = "nvidia-edm-pickle"

# EDMPrecond's own constructor arguments (EDM training/networks.py); everything else in its kwargs goes to the model
_PRECOND_ARGS = ("img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min", "sigma_max", "sigma_data",
                 "model_type")
# attributes NVIDIA's layers store that fix the forward arithmetic; compared with the rebuilt network's (the layer
# classes of sim_core.nets.songunet carry the same attribute names)
_FORWARD_ATTRIBUTES = ("in_features", "out_features", "in_channels", "out_channels", "up", "down", "fused_resample",
                       "num_groups", "eps", "emb_channels", "num_heads", "dropout", "skip_scale", "adaptive_scale",
                       "num_channels", "max_positions", "endpoint", "label_dropout")


class PersistentRecord:
    """What one ``torch_utils.persistence`` object unpickles to here: its metadata, never an instance of its class."""

    __slots__ = ("class_name", "version", "module_src_sha256", "state")

    def __init__(self, class_name: str, version: int, module_src_sha256: str, state: dict):
        self.class_name, self.version = class_name, version
        self.module_src_sha256, self.state = module_src_sha256, state

    def __repr__(self) -> str:
        return f"PersistentRecord({self.class_name}, source sha256 {self.module_src_sha256[:12]}...)"


class ModuleDictRecord:
    """Stands in for ``torch.nn.ModuleDict`` while unpickling (NEWOBJ + BUILD): keeps the state, runs nothing."""

    __slots__ = ("state",)
    class_name = "ModuleDict"
    module_src_sha256 = None

    def __new__(cls, *args):
        if args:
            raise pickle.UnpicklingError("ModuleDict takes no constructor arguments in a pickle")
        obj = super().__new__(cls)
        obj.state = {}
        return obj

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"ModuleDict state is a {type(state).__name__}, not a dict")
        self.state = state


_RECORD_TYPES = (PersistentRecord, ModuleDictRecord)


def _short(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


class _EDMUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a network checkpoint needs, each to a checked stand-in."""

    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path
        self.allowed = {
            ("torch_utils.persistence", "_reconstruct_persistent_obj"): self._persistent_record,
            ("dnnlib.util", "EasyDict"): lambda: dict,  # EasyDict is a dict with attribute access
            ("collections", "OrderedDict"): lambda: OrderedDict,
            ("builtins", "set"): lambda: set,            # protocols < 4 pickle sets through their class
            ("builtins", "frozenset"): lambda: frozenset,
            ("__builtin__", "set"): lambda: set,         # the same, protocol <= 2 naming
            ("torch.nn.modules.container", "ModuleDict"): lambda: ModuleDictRecord,
            ("_codecs", "encode"): self._latin1_bytes,   # protocols < 3 write bytes as _codecs.encode(s, 'latin1')
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
            ("torch.storage", "_load_from_bytes"): self._load_storage,
            ("numpy", "dtype"): self._np_dtype,
            ("numpy", "ndarray"): lambda: np.ndarray,
            ("numpy.core.multiarray", "scalar"): self._np_scalar,
            ("numpy._core.multiarray", "scalar"): self._np_scalar,
            ("numpy.core.multiarray", "_reconstruct"): self._np_reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): self._np_reconstruct,
        }

    def find_class(self, module: str, name: str):
        factory = self.allowed.get((module, name))
        if factory is None:
            raise CheckpointError(f"foreign object {module}.{name} in {self.path}: not an EDM pickle")
        return factory()

    def _fail(self, what: str):
        raise CheckpointError(f"EDM pickle {self.path}: {what}")

    # Each factory below returns a fresh function, so that a BUILD opcode aimed at it (pickle sets attributes on
    # whatever object is on its stack) can only touch a throwaway object.
    def _persistent_record(self):
        def reconstruct_persistent_obj(meta):
            keys = ("type", "version", "module_src", "class_name", "state")
            if not isinstance(meta, dict) or any(k not in meta for k in keys):
                self._fail(f"a persistent object has malformed metadata (expected a dict with keys "
                           f"{', '.join(keys)})")
            if meta["type"] != "class" or meta["version"] != PERSISTENCE_VERSION:
                self._fail(f"persistent object {meta['class_name']!r} has type {meta['type']!r} version "
                           f"{meta['version']!r}; torch_utils.persistence writes type 'class' version "
                           f"{PERSISTENCE_VERSION}")
            if not isinstance(meta["module_src"], str) or not isinstance(meta["class_name"], str):
                self._fail("a persistent object's module_src / class_name is not a string")
            state = meta["state"]
            if not isinstance(state, dict):
                self._fail(f"persistent object {meta['class_name']!r} has a {type(state).__name__} state, "
                           f"not a dict")
            source_sha = hashlib.sha256(meta["module_src"].encode("utf-8", "surrogatepass")).hexdigest()
            return PersistentRecord(meta["class_name"], meta["version"], source_sha, state)
        return reconstruct_persistent_obj

    def _rebuild_tensor(self):
        def rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                           metadata=None):
            if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
                self._fail(f"a tensor is built on a {type(storage).__name__}, not a torch storage")
            if backward_hooks:
                self._fail("a tensor carries backward hooks")
            args = (storage, storage_offset, size, stride, requires_grad, OrderedDict())
            if metadata:
                args = args + (metadata,)
            return torch._utils._rebuild_tensor_v2(*args)
        return rebuild_tensor

    def _rebuild_parameter(self):
        def rebuild_parameter(data, requires_grad, backward_hooks):
            if not isinstance(data, torch.Tensor):
                self._fail(f"a parameter wraps a {type(data).__name__}, not a tensor")
            if backward_hooks:
                self._fail("a parameter carries backward hooks")
            return torch.nn.Parameter(data, requires_grad=bool(requires_grad))
        return rebuild_parameter

    def _load_storage(self):
        def load_from_bytes(b):
            if not isinstance(b, (bytes, bytearray)):
                self._fail(f"a tensor storage is a {type(b).__name__}, not bytes")
            try:  # torch's restricted unpickler: tensors and storages only, no code
                return torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - any failure here means a corrupt or foreign storage
                self._fail(f"a tensor storage does not load with torch.load(weights_only=True): {_short(e)}")
        return load_from_bytes

    def _latin1_bytes(self):
        def encode(text, encoding="utf-8"):
            if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
                self._fail("a bytes object is encoded in an unexpected way")
            return text.encode("latin1")
        return encode

    def _np_dtype(self):
        def make_dtype(*args):
            dt = np.dtype(*args)
            if dt.hasobject:
                self._fail("a numpy value has an object dtype")
            return dt
        return make_dtype

    def _np_scalar(self):
        def make_scalar(dtype, *args):
            if not isinstance(dtype, np.dtype) or dtype.hasobject:
                self._fail("a numpy scalar has no plain dtype")
            return _np_multiarray.scalar(dtype, *args)
        return make_scalar

    def _np_reconstruct(self):
        def make_array(subtype, shape, dtype):
            if subtype is not np.ndarray:
                self._fail("a numpy array of a foreign subtype")
            return _np_multiarray._reconstruct(np.ndarray, shape, dtype)
        return make_array


def _unpickle(path: Path):
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's TypedStorage deprecation notices while rebuilding tensors
            return _EDMUnpickler(f, path).load()
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated file, garbage bytes, malformed opcodes
        raise CheckpointError(f"EDM pickle {path} is truncated or not a pickle ({type(e).__name__}: {_short(e)}); "
                              f"download it again") from None


def _bare(class_name: str) -> str:
    return class_name.rsplit(".", 1)[-1]


def _collect(record, prefix: str, tensors: dict, records: dict, where: str) -> None:
    """Walk a record tree like nn.Module.state_dict: parameters, persistent buffers, then child modules."""
    records[prefix.rstrip(".")] = record
    state = record.state
    params, buffers = state.get("_parameters", {}), state.get("_buffers", {})
    children, transient = state.get("_modules", {}), state.get("_non_persistent_buffers_set", set())
    for what, mapping in (("_parameters", params), ("_buffers", buffers), ("_modules", children)):
        if not isinstance(mapping, dict):
            raise CheckpointError(f"{where}: {prefix or 'the network'} has a {type(mapping).__name__} {what}")
    for mapping, skip in ((params, ()), (buffers, transient)):
        for name, t in mapping.items():
            if t is None or name in skip:
                continue
            if not isinstance(t, torch.Tensor):
                raise CheckpointError(f"{where}: {prefix}{name} is a {type(t).__name__}, not a tensor")
            tensors[prefix + name] = t
    for name, child in children.items():
        if child is None:
            continue
        if not isinstance(child, _RECORD_TYPES):
            raise CheckpointError(f"{where}: submodule {prefix}{name} is a {type(child).__name__}, "
                                  f"not a persistent EDM module")
        _collect(child, f"{prefix}{name}.", tensors, records, where)


def _plain(value):
    """numpy scalars -> Python numbers, tuples -> lists, recursively (for kwargs and the returned meta)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _same_value(a, b) -> bool:
    a, b = _plain(a), _plain(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _check_label_dim(where: str, label_dim: int, expect_label_dim: Optional[int]) -> None:
    if expect_label_dim is None or label_dim == expect_label_dim:
        return
    found = f"conditional checkpoint ({label_dim} classes)" if label_dim else "unconditional checkpoint"
    wanted = (f"a conditional one ({expect_label_dim} classes)" if expect_label_dim else "an unconditional one")
    raise CheckpointError(f"{where}: {found} where {wanted} is expected")


def _read_checked(path, key: str, expect_label_dim: Optional[int], sha256: Optional[str]):
    """Unpickle and check everything; returns (meta, an uninitialised EDMPrecond on the CPU, tensors by name)."""
    path = Path(path)
    file_sha = check_file(path, "EDM pickle", sha256, "download it again or fix the path", compute=True)
    top = _unpickle(path)
    if not isinstance(top, dict):
        raise CheckpointError(f"EDM pickle {path} holds a {type(top).__name__}, not EDM's dict of networks")
    if key not in top:
        raise CheckpointError(f"EDM pickle {path} has no key {key!r} (keys: {', '.join(map(str, top))})")
    where = f"EDM pickle {path} [{key!r}]"
    precond = top[key]
    if not isinstance(precond, PersistentRecord):
        raise CheckpointError(f"{where} is a {type(precond).__name__}, not a persistent EDM network")
    if _bare(precond.class_name) != "EDMPrecond":
        raise CheckpointError(f"{where} is a {precond.class_name}, not an EDMPrecond: only EDM-preconditioned "
                              f"networks are supported")
    pstate = precond.state
    pkwargs = pstate.get("_init_kwargs") or {}
    model = pstate.get("_modules", {}).get("model") if isinstance(pstate.get("_modules"), dict) else None
    model_type = pkwargs.get("model_type", "SongUNet")
    if not isinstance(model, PersistentRecord) or _bare(model.class_name) != "SongUNet" or model_type != "SongUNet":
        found = model.class_name if isinstance(model, PersistentRecord) else type(model).__name__
        raise CheckpointError(f"{where}: the model is a {found} (model_type {model_type!r}), not a SongUNet "
                              f"(DDPM++): only EDM's CIFAR-10 vp architecture is implemented")

    # EDMPrecond's settings live in its attributes (its kwargs record only what train.py passed)
    for attr in ("img_resolution", "img_channels", "label_dim", "sigma_data"):
        if attr not in pstate:
            raise CheckpointError(f"{where}: EDMPrecond has no {attr!r} attribute")
    label_dim, img_resolution = int(pstate["label_dim"]), int(pstate["img_resolution"])
    img_channels, sigma_data = int(pstate["img_channels"]), float(pstate["sigma_data"])
    use_fp16 = bool(pstate.get("use_fp16", False))
    sigma_min, sigma_max = float(pstate.get("sigma_min", 0.0)), float(pstate.get("sigma_max", math.inf))
    _check_label_dim(where, label_dim, expect_label_dim)
    if not (sigma_data > 0 and math.isfinite(sigma_data)):
        raise CheckpointError(f"{where}: sigma_data {sigma_data} is not a positive number")

    # the model's constructor arguments: its own record, else EDMPrecond's kwargs minus EDMPrecond's arguments
    margs, mkwargs = model.state.get("_init_args") or (), model.state.get("_init_kwargs")
    if mkwargs is None:
        mkwargs = {k: v for k, v in pkwargs.items() if k not in _PRECOND_ARGS}
        mkwargs.update(img_resolution=img_resolution, in_channels=img_channels, out_channels=img_channels,
                       label_dim=label_dim)
    try:
        bound = inspect.signature(SongUNet).bind(*_plain(list(margs)), **_plain(dict(mkwargs)))
    except TypeError as e:
        raise CheckpointError(f"{where}: SongUNet arguments {sorted(mkwargs)} are not this SongUNet's: {e}") from None
    kwargs = {**SONGUNET_DEFAULTS, **bound.arguments}
    for name, want in (("img_resolution", img_resolution), ("in_channels", img_channels),
                       ("out_channels", img_channels), ("label_dim", label_dim)):
        if kwargs.get(name) != want:
            raise CheckpointError(f"{where}: SongUNet {name}={kwargs.get(name)!r} disagrees with EDMPrecond's {want}")
    try:
        with uninitialized():  # torch.empty weights, no random draws: every tensor is overwritten or unused
            net = SongUNet(**kwargs)
    except (ConfigError, ValueError, TypeError) as e:
        raise CheckpointError(f"{where}: {_short(e)}") from None
    D = EDMPrecond(net, sigma_data=sigma_data, label_dim=label_dim)

    # tensors: the same names, in the same shapes, floating point and finite
    tensors, records = {}, {}
    _collect(precond, "", tensors, records, where)
    expected = D.state_dict()
    for name, t in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{where}: tensor {name} {tuple(t.shape)} is missing (the checkpoint does not "
                                  f"match the SongUNet its own kwargs describe)")
        if tuple(tensors[name].shape) != tuple(t.shape):
            raise CheckpointError(f"{where}: tensor {name} has shape {tuple(tensors[name].shape)}, "
                                  f"expected {tuple(t.shape)}")
    for name in tensors:
        if name not in expected:
            raise CheckpointError(f"{where}: unexpected tensor {name} {tuple(tensors[name].shape)} (not part of "
                                  f"this SongUNet)")
    # modules: the same classes, and the same forward-relevant attributes where the checkpoint records them
    ours = dict(D.named_modules())
    for mpath, module in ours.items():
        rec = records.get(mpath)
        label = mpath or "the network"
        if rec is None:
            raise CheckpointError(f"{where}: module {label} ({type(module).__name__}) is missing")
        if _bare(rec.class_name) != type(module).__name__:
            raise CheckpointError(f"{where}: module {label} is a {rec.class_name}, expected {type(module).__name__}")
        for attr in _FORWARD_ATTRIBUTES:
            if attr in rec.state and hasattr(module, attr) and not _same_value(rec.state[attr], getattr(module, attr)):
                raise CheckpointError(f"{where}: {label}.{attr} = {_plain(rec.state[attr])!r} in the checkpoint, "
                                      f"{getattr(module, attr)!r} in this implementation")
    for mpath in records:
        if mpath not in ours:
            raise CheckpointError(f"{where}: unexpected module {mpath} ({records[mpath].class_name})")
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise CheckpointError(f"{where}: tensor {name} has dtype {t.dtype}, not floating point")
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{where}: tensor {name} has non-finite values (corrupt checkpoint)")

    notes = []
    if use_fp16:
        notes.append("use_fp16=True in the checkpoint: NVIDIA runs the network in float16 on CUDA; here it runs in "
                     "the dtype of its input")
    if sigma_min != 0.0 or sigma_max != math.inf:
        notes.append(f"EDMPrecond sigma range [{sigma_min}, {sigma_max}] recorded; the project's EDMPrecond does "
                     f"not clip sigma")
    class_names = {str(k): (_bare(v.class_name) if isinstance(v, _RECORD_TYPES) else type(v).__name__)
                   for k, v in top.items()}
    class_names[f"{key}.model"] = _bare(model.class_name)
    meta = dict(format=PICKLE_FORMAT, path=str(path), key=key, file_sha256=file_sha,
                data_shape=[img_channels, img_resolution, img_resolution], label_dim=label_dim,
                sigma_data=sigma_data, sigma_min=sigma_min, sigma_max=sigma_max, use_fp16=use_fp16,
                network=dict(name="songunet", kwargs=dict(net.init_kwargs)),
                precond_kwargs=_plain(dict(pkwargs)), class_names=class_names,
                module_src_sha256=dict(precond=precond.module_src_sha256, model=model.module_src_sha256),
                num_params=sum(p.numel() for p in net.parameters()), top_level_keys=[str(k) for k in top],
                notes=notes)
    if isinstance(top.get("dataset_kwargs"), dict):
        meta["dataset_kwargs"] = _plain(dict(top["dataset_kwargs"]))
    return meta, D, tensors


def inspect_edm_pickle(path, key: str = "ema", expect_label_dim: Optional[int] = None,
                       sha256: Optional[str] = None) -> dict:
    """All the checks of :func:`load_edm_pickle` and its meta dict, without filling the network."""
    meta, _, _ = _read_checked(path, key, expect_label_dim, sha256)
    return meta


def load_edm_pickle(path, key: str = "ema", expect_label_dim: Optional[int] = None, sha256: Optional[str] = None,
                    device="cpu"):
    """Load ``pickle[key]`` of an EDM / SiD / DI checkpoint as the project's ``EDMPrecond(SongUNet)``.

    Returns ``(D, meta)``: D in eval mode with ``requires_grad`` False, every tensor copied by name; meta as
    :func:`inspect_edm_pickle`. Any problem is one :class:`CheckpointError` line, raised before the network exists.
    The global torch random state is left untouched (the network is built without random initialisation).
    """
    meta, D, tensors = _read_checked(path, key, expect_label_dim, sha256)
    D.load_state_dict(tensors, strict=True)
    return D.to(device).eval().requires_grad_(False), meta
