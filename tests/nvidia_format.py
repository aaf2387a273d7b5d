"""Test-only: write pickles in the format of NVIDIA's EDM code, from the project's networks, without NVIDIA's code.

The byte stream has what NVlabs/edm ``training/training_loop.py`` + ``torch_utils/persistence.py`` produce
(docs/reference-code.md#nvidias-edm-checkpoints):

* top level ``dict(ema=<EDMPrecond>, loss_fn=<EDMLoss>, augment_pipe=<AugmentPipe>, dataset_kwargs=<EasyDict>)``
  (EDM) or ``dict(ema=<EDMPrecond>)`` (SiD snapshots);
* every persistent object reduces to the global ``torch_utils.persistence._reconstruct_persistent_obj`` called with
  ``meta = dict(type='class', version=6, module_src=<source text>, class_name=<bare class name>, state=<__dict__>)``,
  the state being the nn.Module ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``, hook dicts, ``training``,
  the class's attributes) plus ``_init_args`` / ``_init_kwargs``; NVIDIA's inner layers (Linear, Conv2d, GroupNorm,
  UNetBlock, PositionalEmbedding) are persistent too, so records nest: EDMPrecond -> SongUNet -> layers;
* ``torch.nn.ModuleDict`` (``enc``/``dec``) is not persistent and pickles as a plain torch object;
* tensors go through torch's reducers; ``skip_scale`` and the attention init weight are numpy float64, as NVIDIA's.

While writing, stand-in modules ``torch_utils``, ``torch_utils.persistence``, ``dnnlib``, ``dnnlib.util`` are put
into ``sys.modules`` (pickle looks a global up there to name it); they are removed before :func:`write_edm_pickle`
returns, so the loader under test never has them.
"""
from __future__ import annotations

import copy
import hashlib
import io
import math
import pickle
import sys
import types
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sim_core.core.edm import EDMPrecond
from sim_core.nets.songunet import SONGUNET_DEFAULTS

PERSISTENCE_VERSION = 6  # torch_utils/persistence.py `_version`
DEFAULT_NETWORKS_SRC = "raise RuntimeError('the embedded networks.py source was executed')\n"
LOSS_SRC = "raise RuntimeError('the embedded loss.py source was executed')\n"
AUGMENT_SRC = "raise RuntimeError('the embedded augment.py source was executed')\n"
# keys EDM's train.py always passes for --arch=ddpmpp (the rest of SongUNet's arguments keep their defaults)
_DDPMPP_TRAIN_KEYS = ("embedding_type", "encoder_type", "decoder_type", "channel_mult_noise", "resample_filter",
                      "model_channels", "channel_mult", "augment_dim", "dropout")
_FAKE_MODULES = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")


def _reconstruct_persistent_obj(meta):  # pickled by name only; the stand-in module makes the name resolvable
    raise RuntimeError("test stand-in for torch_utils.persistence._reconstruct_persistent_obj: not for loading")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


class EasyDict(dict):
    """Pickles as dnnlib.util.EasyDict."""


EasyDict.__module__ = "dnnlib.util"


class Persistent:
    """Pickles exactly as an instance of a ``persistence.persistent_class`` does (its ``__reduce__``)."""

    def __init__(self, class_name: str, module_src: str, state: dict):
        self.class_name, self.module_src, self.state = class_name, module_src, state

    def __reduce__(self):
        meta = dict(type="class", version=PERSISTENCE_VERSION, module_src=self.module_src,
                    class_name=self.class_name, state=self.state)
        return _reconstruct_persistent_obj, (meta,), None


@contextmanager
def _nvidia_names_importable():
    saved = {name: sys.modules.get(name) for name in _FAKE_MODULES}
    persistence, util = types.ModuleType("torch_utils.persistence"), types.ModuleType("dnnlib.util")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util.EasyDict = EasyDict
    torch_utils, dnnlib = types.ModuleType("torch_utils"), types.ModuleType("dnnlib")
    torch_utils.persistence, dnnlib.util = persistence, util
    sys.modules.update({"torch_utils": torch_utils, "torch_utils.persistence": persistence, "dnnlib": dnnlib,
                        "dnnlib.util": util})
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:  # pragma: no cover - nothing in the test suite installs them
                sys.modules[name] = module


def _layer_init_kwargs(module) -> dict:
    """Plausible NVIDIA constructor kwargs of an inner layer (the loader never reads them; they carry numpy
    scalars as the real ones do)."""
    name = type(module).__name__
    xavier = dict(init_mode="xavier_uniform")
    if name == "Linear":
        return dict(in_features=module.in_features, out_features=module.out_features, **xavier)
    if name == "Conv2d":
        kernel = module.weight.shape[-1] if module.weight is not None else 0
        return dict(in_channels=module.in_channels, out_channels=module.out_channels, kernel=kernel,
                    up=module.up, down=module.down, resample_filter=[1, 1], **xavier)
    if name == "GroupNorm":
        return dict(num_channels=module.weight.shape[0], eps=module.eps)
    if name == "PositionalEmbedding":
        return dict(num_channels=module.num_channels, endpoint=module.endpoint)
    if name == "UNetBlock":
        return dict(in_channels=module.in_channels, out_channels=module.out_channels,
                    emb_channels=module.emb_channels, attention=bool(module.num_heads), num_heads=1,
                    dropout=module.dropout, skip_scale=np.sqrt(0.5), eps=1e-6, resample_filter=[1, 1],
                    resample_proj=True, adaptive_scale=False, init=dict(xavier),
                    init_zero=dict(init_mode="xavier_uniform", init_weight=1e-5),
                    init_attn=dict(init_mode="xavier_uniform", init_weight=np.sqrt(0.2)))
    raise TypeError(f"no NVIDIA counterpart for {name}")


def _frozen_copy(t):
    if t is None:
        return None
    if isinstance(t, torch.nn.Parameter):
        return torch.nn.Parameter(t.detach().clone(), requires_grad=False)  # EDM saves requires_grad_(False)
    return t.detach().clone()


def _module_state(module, init_kwargs, src) -> dict:
    """A layer's pickled state: its __dict__ with tensors copied, children converted, NVIDIA's extra fields."""
    state = dict(module.__dict__)
    state.pop("init_kwargs", None)  # the project's attribute; NVIDIA's objects record _init_kwargs instead
    state["_parameters"] = OrderedDict((k, _frozen_copy(v)) for k, v in module._parameters.items())
    state["_buffers"] = OrderedDict((k, _frozen_copy(v)) for k, v in module._buffers.items())
    state["_modules"] = OrderedDict((k, _convert(v, src)) for k, v in module._modules.items())
    state["training"] = False
    if "skip_scale" in state:
        state["skip_scale"] = np.float64(state["skip_scale"])  # NVIDIA: np.sqrt(0.5)
    state["_init_args"], state["_init_kwargs"] = (), init_kwargs
    return state


def _convert(module, src):
    if module is None:
        return None
    if isinstance(module, torch.nn.ModuleDict):  # not persistent: a real ModuleDict whose children are records
        md = torch.nn.ModuleDict()
        md.__dict__["_modules"] = OrderedDict((k, _convert(v, src)) for k, v in module._modules.items())
        md.training = False
        return md
    return Persistent(type(module).__name__, src, _module_state(module, _layer_init_kwargs(module), src))


def songunet_record_kwargs(init_kwargs: dict) -> dict:
    """SongUNet's _init_kwargs as EDM records them: the interface arguments, train.py's ddpmpp keys, and any
    argument that differs from NVIDIA's default (the others are simply absent)."""
    out = {k: init_kwargs[k] for k in ("img_resolution", "in_channels", "out_channels", "label_dim")}
    for k, v in init_kwargs.items():
        if k in _DDPMPP_TRAIN_KEYS or (k in SONGUNET_DEFAULTS and SONGUNET_DEFAULTS[k] != v):
            out[k] = copy.deepcopy(v)
    return out


def edm_records(D: EDMPrecond, module_src: str = DEFAULT_NETWORKS_SRC, use_fp16: bool = False,
                precond_class: str = "EDMPrecond", model_class: str = "SongUNet") -> Persistent:
    """The persistent record tree of an EDMPrecond(SongUNet), as NVIDIA's objects would pickle."""
    net = D.model
    kw = net.init_kwargs
    model_kwargs = songunet_record_kwargs(kw)
    model = Persistent(model_class, module_src, _module_state(net, model_kwargs, module_src))
    precond_kwargs = {k: v for k, v in model_kwargs.items() if k not in ("in_channels", "out_channels")}
    precond_kwargs.update(model_type="SongUNet", use_fp16=use_fp16, img_channels=kw["in_channels"])
    state = dict(torch.nn.Module().__dict__)  # the bookkeeping fields of any nn.Module
    state.update(training=False, _parameters=OrderedDict(), _buffers=OrderedDict(),
                 _modules=OrderedDict(model=model), img_resolution=kw["img_resolution"],
                 img_channels=kw["in_channels"], label_dim=kw["label_dim"], use_fp16=use_fp16, sigma_min=0,
                 sigma_max=float("inf"), sigma_data=D.sigma_data, _init_args=(), _init_kwargs=precond_kwargs)
    return Persistent(precond_class, module_src, state)


def edm_top_level(D: EDMPrecond, layout: str = "edm", **kw) -> dict:
    """The object EDM (``layout='edm'``) or SiD (``'sid'``) pickles."""
    ema = edm_records(D, **kw)
    if layout == "sid":
        return dict(ema=ema)
    loss = Persistent("EDMLoss", LOSS_SRC, dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5, _init_args=(),
                                                 _init_kwargs={}))
    augment_kwargs = dict(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    augment = Persistent("AugmentPipe", AUGMENT_SRC, dict(augment_kwargs, _init_args=(),
                                                          _init_kwargs=dict(augment_kwargs)))
    dataset = EasyDict(class_name="training.dataset.ImageFolderDataset", path="datasets/cifar10-32x32.zip",
                       use_labels=bool(D.label_dim), xflip=False, cache=True, resolution=32, max_size=50000)
    return dict(ema=ema, loss_fn=loss, augment_pipe=augment, dataset_kwargs=dataset)


def module_state(top: dict, key: str, path: str) -> dict:
    """The pickled state dict of the module at ``path`` (e.g. 'model.enc.16x16_block0.qkv') under ``top[key]``,
    for tests that tamper with a checkpoint before writing it."""
    node = top[key]
    for part in [p for p in path.split(".") if p]:
        children = node.state["_modules"] if isinstance(node, Persistent) else node._modules
        node = children[part]
    return node.state


def pickle_bytes(obj, protocol=None) -> bytes:
    with _nvidia_names_importable():
        buf = io.BytesIO()
        pickle.dump(obj, buf, protocol=protocol)
    return buf.getvalue()


def write_edm_pickle(path, D: EDMPrecond = None, top: dict = None, layout: str = "edm", protocol=None,
                     **kw) -> str:
    """Write ``top`` (default: :func:`edm_top_level` of D) to ``path``; returns the file's SHA-256."""
    if top is None:
        top = edm_top_level(D, layout=layout, **kw)
    data = pickle_bytes(top, protocol=protocol)
    with open(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def randomize_(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every weight with O(1)-scale random values (in place), so that the near-zero DDPM++ init of the
    residual/attention/output convolutions does not hide parts of the forward pass from a test."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim >= 2:  # Linear / Conv2d weight: unit-variance pre-activations
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            elif name.endswith("weight"):  # GroupNorm gain
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return net


def write_stand_in_paper_assets(d, D: EDMPrecond, rank: int = 64) -> str:
    """The paper-scale files under their manifest names (sim_core/assets.py), as stand-ins in the real formats:
    ``D`` as NVIDIA's EDM pickle, random Inception-v3 weights in torch-fidelity's format, and full-rank reference
    statistics in EDM's npz format. Returns the Inception file's SHA-256 (not the published one)."""
    from sim_core.assets import MANIFEST
    from sim_core.files import sha256_file
    from sim_core.testbeds.cifar10.image_metrics import save_reference_stats
    write_edm_pickle(Path(d) / MANIFEST.get("teacher_cond" if D.label_dim else "teacher_uncond").filename, D)
    inception = Path(d) / MANIFEST.get("inception").filename
    torch.save(random_inception_state_dict(Path(d)), inception)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((2048, rank))
    save_reference_stats(Path(d) / MANIFEST.get("fid_ref").filename, rng.standard_normal(2048) * 0.1,
                         A @ A.T / rank + 0.05 * np.eye(2048))
    return sha256_file(inception)


def random_inception_state_dict(tmp_path, seed=0):
    """torch-fidelity's FeatureExtractorInceptionV3 structure with random weights (He-normal convs, perturbed
    batch-norm statistics, a non-zero output bias), as the plain state dict torch.save'd that its loader reads."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # the empty file below: keep the init
            assert len(state_dict) == 0

    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    net = Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.8 + 0.4 * torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.8 + 0.4 * torch.rand(m.running_var.shape, generator=g))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(m.in_features))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return net.state_dict()
