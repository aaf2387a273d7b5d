"""Loading NVIDIA's EDM pickles without NVIDIA's code: a small SongUNet written in the real format (tests/
nvidia_format.py) comes back tensor for tensor, its embedded source is never run, and every kind of bad file is
refused in one line before any network exists."""
from __future__ import annotations

import hashlib
import math
import os
import pickle
import sys

import pytest
import torch
import torch.nn.functional as F

from sim_core.core.edm import EDMPrecond
from sim_core.errors import CheckpointError
from sim_core.nets import build_network
from sim_core.nets.songunet import SongUNet
from sim_core.testbeds.cifar10.edm_pickle import inspect_edm_pickle, load_edm_pickle

import nvidia_format as nv

torch.set_num_threads(1)

SMALL = dict(img_resolution=16, in_channels=3, out_channels=3, augment_dim=9, model_channels=16, channel_mult=[1, 2],
             num_blocks=1, attn_resolutions=[8], dropout=0.13)
NVIDIA_NAMES = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")


def make_D(label_dim: int, seed: int = 0) -> EDMPrecond:
    torch.manual_seed(seed)
    net = nv.randomize_(SongUNet(**SMALL, label_dim=label_dim), seed + 1)
    return EDMPrecond(net, label_dim=label_dim).eval()


@pytest.fixture(scope="module")
def nets():
    return {0: make_D(0), 10: make_D(10, seed=1)}


def refused(path, match, **kw) -> str:
    """Both entry points refuse the file with one line matching ``match``; returns the message."""
    for fn in (load_edm_pickle, inspect_edm_pickle):
        with pytest.raises(CheckpointError, match=match) as e:
            fn(path, **kw)
        assert "\n" not in str(e.value)
    return str(e.value)


def write_tampered(tmp_path, D, edit, name="bad.pkl", **kw):
    top = nv.edm_top_level(D, **kw)
    edit(top)
    path = tmp_path / name
    nv.write_edm_pickle(path, top=top)
    return path


@pytest.mark.parametrize("label_dim", [0, 10])
def test_round_trip_is_exact(tmp_path, nets, label_dim):
    D = nets[label_dim]
    path = tmp_path / "net.pkl"
    sha = nv.write_edm_pickle(path, D)
    assert not any(name in sys.modules for name in NVIDIA_NAMES)  # the loader runs without NVIDIA's modules
    modules_before = set(sys.modules)
    rng = torch.random.get_rng_state()

    D2, meta = load_edm_pickle(path, expect_label_dim=label_dim, sha256=sha)

    assert torch.equal(torch.random.get_rng_state(), rng)
    new_modules = set(sys.modules) - modules_before  # torch imports some of its own parts lazily; nothing else
    assert all(name.startswith("torch.") for name in new_modules), new_modules
    sd, sd2 = D.state_dict(), D2.state_dict()
    assert list(sd2) == list(sd) and all(k.startswith("model.") for k in sd)
    for k in sd:
        assert sd2[k].dtype == sd[k].dtype and torch.equal(sd2[k], sd[k]), k
    assert not D2.training and not any(p.requires_grad for p in D2.parameters())
    g = torch.Generator().manual_seed(2)
    x, sigma = torch.randn(4, 3, 16, 16, generator=g), torch.tensor([0.002, 0.3, 2.5, 80.0])
    labels = F.one_hot(torch.tensor([0, 3, 7, 9]), 10).float() if label_dim else None
    aug = torch.randn(4, 9, generator=g)
    with torch.no_grad():
        for a in (None, aug):
            assert torch.equal(D2(x, sigma, labels, augment_labels=a), D(x, sigma, labels, augment_labels=a))

    assert meta["data_shape"] == [3, 16, 16] and meta["label_dim"] == label_dim and meta["sigma_data"] == 0.5
    assert meta["network"] == dict(name="songunet", kwargs=D.model.init_kwargs)
    assert meta["class_names"] == {"ema": "EDMPrecond", "ema.model": "SongUNet", "loss_fn": "EDMLoss",
                                   "augment_pipe": "AugmentPipe", "dataset_kwargs": "dict"}
    src_sha = hashlib.sha256(nv.DEFAULT_NETWORKS_SRC.encode()).hexdigest()
    assert meta["module_src_sha256"] == dict(precond=src_sha, model=src_sha)
    assert meta["file_sha256"] == sha and meta["use_fp16"] is False and meta["notes"] == []
    assert meta["sigma_min"] == 0 and meta["sigma_max"] == math.inf
    assert meta["num_params"] == sum(p.numel() for p in D.parameters())
    assert meta["dataset_kwargs"]["use_labels"] is bool(label_dim)
    assert inspect_edm_pickle(path) == meta
    rebuilt = build_network(meta["network"]["name"], **meta["network"]["kwargs"])  # as a teacher file would
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k[6:]: v.shape for k, v in sd.items()}


def test_sid_snapshot_protocol2_and_fp16_flag(tmp_path, nets):
    """SiD's dict(ema=G_ema); an older pickle protocol (sets and dicts through their classes); use_fp16 noted."""
    D = nets[10]
    path = tmp_path / "sid.pkl"
    nv.write_edm_pickle(path, D, layout="sid", protocol=2, use_fp16=True)
    D2, meta = load_edm_pickle(path, expect_label_dim=10)
    assert meta["top_level_keys"] == ["ema"] and meta["use_fp16"] is True
    assert "use_fp16=True" in meta["notes"][0]
    assert all(torch.equal(a, b) for a, b in zip(D.state_dict().values(), D2.state_dict().values()))
    other = tmp_path / "di.pkl"  # Diff-Instruct keeps a second network under "Sg"
    nv.write_edm_pickle(other, top=dict(ema=nv.edm_records(nets[0]), Sg=nv.edm_records(nets[10])))
    assert load_edm_pickle(other, key="Sg")[1]["label_dim"] == 10
    refused(other, "has no key 'G' \\(keys: ema, Sg\\)", key="G")


def test_embedded_source_is_never_executed(tmp_path, nets):
    marker = tmp_path / "executed.txt"
    src = f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit('embedded source executed')\n"
    path = tmp_path / "net.pkl"
    nv.write_edm_pickle(path, nets[0], module_src=src)
    D2, meta = load_edm_pickle(path)
    inspect_edm_pickle(path)
    assert not marker.exists()
    assert meta["module_src_sha256"]["model"] == hashlib.sha256(src.encode()).hexdigest()
    assert not any(name.startswith("_imported_module_") for name in sys.modules)
    with pytest.raises(ModuleNotFoundError, match="torch_utils"):  # what a plain pickle.load would need
        with open(path, "rb") as f:
            pickle.load(f)


class _Reduces:
    """An object that pickles as a call of ``fn(*args)``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_foreign_pickles_are_refused_without_running_anything(tmp_path, nets):
    marker = tmp_path / "pwned"
    bomb = tmp_path / "os_system.pkl"
    bomb.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())  # protocol 0: os.system("touch ...")
    msg = refused(bomb, "foreign object os.system in .*os_system.pkl: not an EDM pickle")
    assert msg == f"foreign object os.system in {bomb}: not an EDM pickle"

    evil = tmp_path / "eval.pkl"
    evil.write_bytes(pickle.dumps(_Reduces(eval, f"open({str(marker)!r}, 'w')")))
    refused(evil, "foreign object builtins.eval in")

    # a valid EDM pickle with one foreign object deep inside its extras
    nested = write_tampered(tmp_path, nets[0], lambda top: top["dataset_kwargs"].update(
        hook=_Reduces(os.system, f"touch {marker}")), name="nested.pkl")
    refused(nested, "foreign object posix.system in")

    # a tensor storage whose bytes are a foreign pickle: torch.load(weights_only=True) refuses it
    storage = tmp_path / "storage.pkl"
    payload = pickle.dumps(_Reduces(os.system, f"touch {marker}"))
    storage.write_bytes(pickle.dumps(dict(ema=_Reduces(torch.storage._load_from_bytes, payload))))
    refused(storage, "a tensor storage does not load with torch.load\\(weights_only=True\\)")
    assert not marker.exists()

    # a persistent object of another torch_utils.persistence version
    old = tmp_path / "v5.pkl"
    old.write_bytes(nv.pickle_bytes(dict(ema=_Reduces(nv._reconstruct_persistent_obj, dict(
        type="class", version=5, module_src="", class_name="EDMPrecond", state={})))))
    refused(old, "persistent object 'EDMPrecond' has type 'class' version 5; .* version 6$")


def test_missing_truncated_garbage_and_wrong_checksum(tmp_path, nets):
    path = tmp_path / "net.pkl"
    sha = nv.write_edm_pickle(path, nets[0])
    refused(tmp_path / "absent.pkl", "EDM pickle not found: .*absent.pkl")
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    refused(cut, "cut.pkl is truncated or not a pickle")
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(os.urandom(4096))
    refused(garbage, "garbage.pkl is truncated or not a pickle")
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    refused(empty, "empty.pkl is truncated or not a pickle")
    wrong = "0" * 64
    refused(path, f"SHA-256 {sha[:16]}... does not match the expected {wrong[:16]}", sha256=wrong)
    notdict = tmp_path / "list.pkl"
    notdict.write_bytes(pickle.dumps([1, 2]))
    refused(notdict, "holds a list, not EDM's dict of networks")


def test_label_dim_mismatch(tmp_path, nets):
    cond, uncond = tmp_path / "cond.pkl", tmp_path / "uncond.pkl"
    nv.write_edm_pickle(cond, nets[10])
    nv.write_edm_pickle(uncond, nets[0])
    refused(cond, r"conditional checkpoint \(10 classes\) where an unconditional one is expected$",
            expect_label_dim=0)
    refused(uncond, r"unconditional checkpoint where a conditional one \(10 classes\) is expected$",
            expect_label_dim=10)


def test_tensor_set_and_shapes_are_checked(tmp_path, nets):
    D = nets[0]

    def wrong_shape(top):
        nv.module_state(top, "ema", "model.map_layer0")["_parameters"]["weight"] = torch.nn.Parameter(
            torch.zeros(64, 8), requires_grad=False)
    refused(write_tampered(tmp_path, D, wrong_shape),
            r"tensor model.map_layer0.weight has shape \(64, 8\), expected \(64, 16\)$")

    def missing(top):
        del nv.module_state(top, "ema", "model.dec.16x16_aux_conv")["_parameters"]["bias"]
    refused(write_tampered(tmp_path, D, missing), r"tensor model.dec.16x16_aux_conv.bias \(3,\) is missing")

    def extra(top):
        nv.module_state(top, "ema", "model.map_layer1")["_buffers"]["running"] = torch.zeros(2)
    refused(write_tampered(tmp_path, D, extra), r"unexpected tensor model.map_layer1.running \(2,\)")

    def nan(top):
        nv.module_state(top, "ema", "model.enc.8x8_block0.qkv")["_parameters"]["weight"][0, 0, 0, 0] = math.nan
    refused(write_tampered(tmp_path, D, nan), "tensor model.enc.8x8_block0.qkv.weight has non-finite values")


def test_architecture_and_arithmetic_settings_are_checked(tmp_path, nets):
    D = nets[0]
    refused(write_tampered(tmp_path, D, lambda top: None, precond_class="VPPrecond"),
            "is a VPPrecond, not an EDMPrecond")
    refused(write_tampered(tmp_path, D, lambda top: None, model_class="DhariwalUNet"),
            "the model is a DhariwalUNet .*not a SongUNet")

    def fourier(top):
        nv.module_state(top, "ema", "model")["_init_kwargs"]["embedding_type"] = "fourier"
    refused(write_tampered(tmp_path, D, fourier), "embedding_type='fourier' is not implemented")

    def eps(top):
        nv.module_state(top, "ema", "model.enc.16x16_block0.norm1")["eps"] = 1e-5
    refused(write_tampered(tmp_path, D, eps), r"model.enc.16x16_block0.norm1.eps = 1e-05 in the checkpoint, 1e-06")

    def skip_scale(top):
        nv.module_state(top, "ema", "model.dec.8x8_in0")["skip_scale"] = 1.0
    refused(write_tampered(tmp_path, D, skip_scale), "model.dec.8x8_in0.skip_scale = 1.0 in the checkpoint")

    def dropout(top):  # the block attributes must agree with the network's recorded kwargs
        nv.module_state(top, "ema", "model.enc.16x16_block0")["dropout"] = 0.3
    refused(write_tampered(tmp_path, D, dropout), "model.enc.16x16_block0.dropout = 0.3 in the checkpoint, 0.13")

    def layer_class(top):  # a block where a plain convolution belongs
        top["ema"].state["_modules"]["model"].state["_modules"]["enc"]._modules["16x16_conv"].class_name = "Linear"
    refused(write_tampered(tmp_path, D, layer_class), "module model.enc.16x16_conv is a Linear, expected Conv2d")

    def unknown_arg(top):
        nv.module_state(top, "ema", "model")["_init_kwargs"]["use_flash"] = True
    refused(write_tampered(tmp_path, D, unknown_arg), "SongUNet arguments .* are not this SongUNet's")

    def channels(top):
        top["ema"].state["img_channels"] = 1
    refused(write_tampered(tmp_path, D, channels), "SongUNet in_channels=3 disagrees with EDMPrecond's 1")
