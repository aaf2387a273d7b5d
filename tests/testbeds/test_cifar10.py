"""CIFAR-10 reader: tiny archives in the real format (Python-2 protocol-2 pickles, real member names), read from the
tarball and from the extracted folder; refused foreign globals; label samplers."""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools
import tarfile

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from conftest import one_line
from sim_core.errors import CheckpointError
from sim_core.registry import UnknownNameError
from sim_core.testbeds.cifar10.data import (
    BATCH_DIR,
    LABEL_DISTRIBUTIONS,
    TrainingLabels,
    UniformLabels,
    build_label_distribution,
    cifar10_batch_files,
    load_cifar10,
    load_cifar10_splits,
    to_model_range,
    write_cifar10_archive,
)

N_TRAIN, N_TEST = 100, 20  # 5 training batches of 20 images, one test batch of 20
MEMBERS = [f"{BATCH_DIR}/{n}" for n in ("batches.meta", "data_batch_1", "data_batch_2", "data_batch_3",
                                        "data_batch_4", "data_batch_5", "test_batch")]
COUNTS = {"train": N_TRAIN, "test": N_TEST}


def fake_split(n, seed):
    g = np.random.default_rng(seed)
    return g.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8), g.integers(0, 10, size=n)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    train, test = fake_split(N_TRAIN, 0), fake_split(N_TEST, 1)
    tar = write_cifar10_archive(root / "cifar-10-python.tar.gz", train, test)
    with tarfile.open(tar) as tf:
        tf.extractall(root / "extracted", filter="data")
    return dict(tar=tar, dir=root / "extracted", train=train, test=test, root=root)



def test_written_archive_has_the_real_format(fake):
    """Independent of our reader: the member names, Python-2 opcodes, and torchvision's own CIFAR10 reader."""
    with tarfile.open(fake["tar"]) as tf:
        assert sorted(tf.getnames()) == sorted(MEMBERS)
        raw = tf.extractfile(f"{BATCH_DIR}/data_batch_2").read()
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(raw)]
    assert ops[0] == ("PROTO", 2)
    assert ("GLOBAL", "numpy.core.multiarray _reconstruct") in ops
    names = {name for name, _ in ops}
    assert "SHORT_BINSTRING" in names and not names & {"BINUNICODE", "SHORT_BINBYTES", "BINBYTES"}
    plain = pickle.loads(raw, encoding="bytes")  # the standard unpickler, as the CIFAR-10 page loads batches
    assert set(plain) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert plain[b"data"].shape == (20, 3072) and plain[b"data"].dtype == np.uint8
    np.testing.assert_array_equal(plain[b"data"], fake["train"][0][20:40].reshape(20, -1))

    # batches.meta holds no data of ours: the writer reproduces the real file byte for byte (torchvision's MD5)
    with tarfile.open(fake["tar"]) as tf:
        meta = tf.extractfile(f"{BATCH_DIR}/batches.meta").read()
    assert hashlib.md5(meta).hexdigest() == "5ff9c542aee3614f3951f8cda6e48888"

    import torchvision

    class Unchecked(torchvision.datasets.CIFAR10):
        def _check_integrity(self):  # torchvision checks the real data batches' MD5s; ours are stand-ins
            return True

    tv = Unchecked(str(fake["dir"]), train=True, download=False)
    assert tv.classes[0] == "airplane" and len(tv.classes) == 10
    np.testing.assert_array_equal(tv.data, fake["train"][0].transpose(0, 2, 3, 1))  # torchvision stores HWC
    np.testing.assert_array_equal(np.asarray(tv.targets), fake["train"][1])


def test_tarball_and_directory_read_identically(fake):
    for split, (x_true, y_true) in (("train", fake["train"]), ("test", fake["test"])):
        x_tar, y_tar = load_cifar10(fake["tar"], split, num_images=COUNTS[split])
        x_dir, y_dir = load_cifar10(fake["dir"] / BATCH_DIR, split, num_images=COUNTS[split])
        x_par, _ = load_cifar10(fake["dir"], split, num_images=COUNTS[split])  # the parent folder works too
        assert x_tar.dtype == torch.uint8 and x_tar.shape == (COUNTS[split], 3, 32, 32)
        assert y_tar.dtype == torch.int64 and y_tar.shape == (COUNTS[split],)
        assert torch.equal(x_tar, x_dir) and torch.equal(y_tar, y_dir) and torch.equal(x_tar, x_par)
        assert np.array_equal(x_tar.numpy(), x_true) and np.array_equal(y_tar.numpy(), y_true)
    both = load_cifar10_splits(fake["tar"], num_images=COUNTS)
    assert torch.equal(both["test"][0], torch.from_numpy(fake["test"][0]))


def test_counts_default_to_the_real_dataset(fake):
    with pytest.raises(CheckpointError) as e:
        load_cifar10(fake["tar"], "train")
    assert "the train split has 100 images, expected 50000" in one_line(e)
    with pytest.raises(CheckpointError) as e:
        load_cifar10(fake["dir"], "test")
    assert "expected 10000" in one_line(e)
    with pytest.raises(ValueError, match="unknown CIFAR-10 split 'val'"):
        load_cifar10(fake["tar"], "val")


def _archive_with(tmp_path, replace: dict, drop=()):
    files = cifar10_batch_files(fake_split(N_TRAIN, 0), fake_split(N_TEST, 1))
    files.update(replace)
    path = tmp_path / "bad.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            if name in drop:
                continue
            info = tarfile.TarInfo(f"{BATCH_DIR}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


class _Payload:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


@pytest.mark.parametrize("fn,global_name", [(os.system, f"{os.system.__module__}.system"), (eval, "builtins.eval")])
def test_foreign_global_is_refused_without_running(tmp_path, fn, global_name):
    # hand-made pickles use protocol 4: Python 3 writes bytes at protocol 2 through the global _codecs.encode
    marker = tmp_path / "ran"
    code = f"touch {marker}" if fn is os.system else f"open({str(marker)!r}, 'w').close()"
    evil = pickle.dumps({b"data": _Payload(fn, code), b"labels": []}, protocol=4)
    tar = _archive_with(tmp_path, {"data_batch_3": evil})
    with pytest.raises(CheckpointError) as e:
        load_cifar10(tar, "train", num_images=N_TRAIN)
    msg = one_line(e)
    assert f"refused global {global_name}" in msg and "data_batch_3" in msg
    assert not marker.exists()
    # the same file on disk in an extracted folder
    d = tmp_path / "dir" / BATCH_DIR
    d.mkdir(parents=True)
    for name, data in cifar10_batch_files(fake_split(N_TRAIN, 0), fake_split(N_TEST, 1)).items():
        (d / name).write_bytes(evil if name == "data_batch_3" else data)
    with pytest.raises(CheckpointError, match="refused global"):
        load_cifar10(d, "train", num_images=N_TRAIN)
    assert not marker.exists()


def test_corrupt_and_foreign_archives_fail_in_one_line(tmp_path, fake):
    good = fake["tar"].read_bytes()
    trunc = tmp_path / "trunc.tar.gz"
    trunc.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError) as e:
        load_cifar10(trunc, "test", num_images=N_TEST)
    assert "corrupt or not a tar archive" in one_line(e) or "lacks" in one_line(e)

    x, y = fake_split(N_TEST, 1)
    y_bad = y.copy()
    y_bad[3] = 10
    bad_label = cifar10_batch_files(fake_split(N_TRAIN, 0), (x, y_bad))["test_batch"]
    with pytest.raises(CheckpointError) as e:
        load_cifar10(_archive_with(tmp_path, {"test_batch": bad_label}), "test", num_images=N_TEST)
    assert "labels span [0, 10], expected 0..9" in one_line(e)

    short = pickle.dumps({b"data": np.zeros((N_TEST, 3071), np.uint8), b"labels": [0] * N_TEST}, protocol=4)
    with pytest.raises(CheckpointError) as e:
        load_cifar10(_archive_with(tmp_path, {"test_batch": short}), "test", num_images=N_TEST)
    assert "expected uint8 (N, 3072)" in one_line(e)

    with pytest.raises(CheckpointError) as e:
        load_cifar10(_archive_with(tmp_path, {}, drop=("test_batch",)), "test", num_images=N_TEST)
    assert f"lacks {BATCH_DIR}/test_batch" in one_line(e)

    cifar100_meta = pickle.dumps({b"label_names": [b"c%d" % i for i in range(100)]}, protocol=4)
    with pytest.raises(CheckpointError) as e:
        load_cifar10(_archive_with(tmp_path, {"batches.meta": cifar100_meta}), "test", num_images=N_TEST)
    assert "label_names has 100 entries, expected 10" in one_line(e)

    with pytest.raises(CheckpointError, match="not found"):
        load_cifar10(tmp_path / "nope.tar.gz")


def test_to_model_range():
    x = torch.tensor([0, 1, 127, 128, 255], dtype=torch.uint8)
    y = to_model_range(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, torch.tensor([-1.0, 1 / 127.5 - 1, 127 / 127.5 - 1, 128 / 127.5 - 1, 1.0]))
    with pytest.raises(ValueError, match="uint8"):
        to_model_range(y)


def _chi2(onehot, probs):
    counts = onehot.sum(0).double()
    expected = probs.double() * onehot.shape[0]
    return float(((counts - expected) ** 2 / expected).sum())


def test_label_samplers_follow_their_distribution_and_reproduce():
    # a skewed tiny "training set": class c appears counts[c] times
    counts = torch.tensor([40, 20, 10, 8, 6, 5, 4, 3, 2, 2])
    labels = torch.repeat_interleave(torch.arange(10), counts)[torch.randperm(100, generator=torch.Generator()
                                                                               .manual_seed(3))]
    p_train = counts.double() / counts.sum()
    crit = chi2.ppf(0.999, df=9)  # ~27.9
    n = 20000

    train = build_label_distribution("training_images", labels=labels)
    assert isinstance(train, TrainingLabels)
    draw = train.sample(n, torch.Generator().manual_seed(0))
    assert draw.dtype == torch.float32 and draw.shape == (n, 10)
    assert torch.equal(draw.sum(1), torch.ones(n)) and set(draw.unique().tolist()) == {0.0, 1.0}
    assert _chi2(draw, p_train) < crit
    assert _chi2(draw, torch.full((10,), 0.1)) > 100 * crit  # and it is not uniform

    uni = build_label_distribution("uniform", labels=labels)
    assert isinstance(uni, UniformLabels)
    u = uni.sample(n, torch.Generator().manual_seed(0))
    assert _chi2(u, torch.full((10,), 0.1)) < crit
    assert _chi2(u, p_train) > 100 * crit

    again = train.sample(n, torch.Generator().manual_seed(0))
    other = train.sample(n, torch.Generator().manual_seed(1))
    assert torch.equal(draw, again) and not torch.equal(draw, other)

    assert LABEL_DISTRIBUTIONS.names() == ["training_images", "uniform"]
    with pytest.raises(UnknownNameError, match="valid names: training_images, uniform"):
        build_label_distribution("balanced")
    with pytest.raises(ValueError, match="needs the training labels"):
        build_label_distribution("training_images")
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
        TrainingLabels(torch.tensor([0, 10]))
