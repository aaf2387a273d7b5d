"""8x8 digits, the digits-cnn classifier, and FID/KID/IS through torch-fidelity with it."""
import json
import os
import re
import time

import pytest
import torch

from sim_core.testbeds.digits.classifier import (
    load_classifier,
    meta_path,
    register_extractor,
    save_classifier,
    train_classifier,
)
from sim_core.testbeds.digits.data import from_uint8, labels_from_one_hot, load_digits_split, one_hot, to_uint8_rgb
from sim_core.testbeds.digits.fidelity import digits_fidelity, extract_features, fid_from_features

KID_SUBSETS = 20  # torch-fidelity's KID cost is 3 kernel matrices per subset; 20 keep the tests fast


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster for this small network on this CPU (docs/environment.md#threads-on-small-cpus)
    try:
        t0 = time.time()
        model, acc = train_classifier(seed=0)
        seconds = time.time() - t0
    finally:
        torch.set_num_threads(threads)
    path = str(tmp_path_factory.mktemp("clf") / "digits_cnn.pt")
    save_classifier(model, path, seed=0, test_accuracy=acc, train_seconds=seconds)
    return model, acc, path


@pytest.fixture(scope="module")
def real_test_vs_train(trained):
    x_test, _ = load_digits_split("test")
    return digits_fidelity(x_test, trained[2], real="train", kid_subsets=KID_SUBSETS)


@pytest.fixture(scope="module")
def noise_vs_train(trained):
    noise = 2 * torch.rand(1000, 1, 8, 8, generator=torch.Generator().manual_seed(0)) - 1
    return digits_fidelity(noise, trained[2], real="train", kid_subsets=KID_SUBSETS)


def test_split_is_stratified_and_deterministic():
    xa, ya = load_digits_split("all")
    xtr, ytr = load_digits_split("train")
    xte, yte = load_digits_split("test")
    assert xa.shape == (1797, 1, 8, 8) and xa.dtype == torch.float32 and ya.dtype == torch.int64
    assert xa.min() == -1 and xa.max() == 1
    assert len(xtr) + len(xte) == 1797 and abs(len(xte) / 1797 - 0.2) < 0.01
    counts_all, counts_te = torch.bincount(ya), torch.bincount(yte)
    assert ((counts_te - 0.2 * counts_all).abs() <= 0.5).all()  # stratified
    assert torch.equal(load_digits_split("test")[0], xte)
    rows = {tuple(r.tolist()) + (int(y),) for r, y in zip(xa.flatten(1), ya)}
    assert {tuple(r.tolist()) + (int(y),) for r, y in zip(xte.flatten(1), yte)} <= rows
    with pytest.raises(ValueError, match="valid: train, test, all"):
        load_digits_split("val")


def test_one_hot_and_uint8_helpers():
    y = torch.tensor([0, 3, 9])
    oh = one_hot(y)
    assert oh.shape == (3, 10) and oh.dtype == torch.float32 and torch.equal(labels_from_one_hot(oh), y)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        one_hot(torch.tensor([10]))
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 2, 2)
    u = to_uint8_rgb(x)
    assert u.dtype == torch.uint8 and u.shape == (1, 3, 2, 2)
    assert u[0, 0].flatten().tolist() == [0, 128, 255, 255] and torch.equal(u[:, 0], u[:, 2])
    xd, _ = load_digits_split("test")
    assert (from_uint8(to_uint8_rgb(xd)) - xd).abs().max() <= 1 / 127.5 + 1e-6


def test_classifier_accuracy_and_round_trip(trained):
    model, acc, path = trained
    assert acc >= 0.97
    info = json.load(open(meta_path(path)))
    assert info["test_accuracy"] == acc and len(info["sha256"]) == 64
    assert info["train_seconds"] < 60
    x, _ = load_digits_split("test")
    assert torch.equal(load_classifier(path)(x), model(x))


def test_torch_fidelity_fid_equals_direct_fid(trained, real_test_vs_train):
    path = trained[2]
    (f_test,) = extract_features(load_digits_split("test")[0], path)
    (f_train,) = extract_features(load_digits_split("train")[0], path)
    assert f_test.shape == (359, 64)
    assert real_test_vs_train["fid"] == pytest.approx(fid_from_features(f_test, f_train), rel=1e-3)


def test_real_fid_kid_far_below_noise(real_test_vs_train, noise_vs_train):
    real, noise = real_test_vs_train, noise_vs_train
    assert 0 < real["fid"] < noise["fid"] / 20
    assert abs(real["kid"]) < 3 * real["kid_std"] + 1e-3  # KID is unbiased: ~0 for the same distribution
    assert noise["kid"] > 20 * (abs(real["kid"]) + real["kid_std"])


def test_inception_score_real_vs_noise(real_test_vs_train, noise_vs_train):
    # 10 balanced classes classified at ~98%: IS close to its maximum 10
    assert real_test_vs_train["isc"] > 8.0
    assert noise_vs_train["isc"] < 0.5 * real_test_vs_train["isc"]


def test_missing_or_corrupt_classifier_file(trained, tmp_path):
    path = tmp_path / "clf.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load_classifier(path)
    save_classifier(trained[0], path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=re.escape(f"{path} is corrupt")):
        load_classifier(path)
    with pytest.raises(ValueError, match="corrupt"):
        digits_fidelity(load_digits_split("test")[0], path)
    os.remove(meta_path(path))
    with pytest.raises(FileNotFoundError, match="metadata"):
        load_classifier(path)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # atomic writes leave no temp files


def test_fidelity_input_checks(trained):
    x = load_digits_split("test")[0][:100]
    with pytest.raises(ValueError, match="kid_subset_size"):
        digits_fidelity(x, trained[2], kid_subset_size=200)
    with pytest.raises(ValueError, match="non-finite"):
        digits_fidelity(torch.full((20, 1, 8, 8), float("nan")), trained[2])
    register_extractor()  # registering twice is a no-op
