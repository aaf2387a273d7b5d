"""Paper-scale assets: manifest, checksums (config > manifest > SHA256SUMS pinned on first use), content checks and
downloads, exercised with file:// URLs to files made here (no network)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tarfile

import numpy as np
import pytest
import torch

from conftest import one_line
from sim_core.assets import (
    MANIFEST,
    SHA256SUMS,
    VALIDATORS,
    download_asset,
    download_assets,
    main,
    manifest_names,
    read_sha256sums,
    resolve_paths,
    verify_assets,
)
from sim_core.errors import CheckpointError, ConfigError
from sim_core.registry import UnknownNameError
from sim_core.testbeds.cifar10.data import BATCH_DIR, cifar10_batch_files, write_cifar10_archive

N_TRAIN, N_TEST = 50, 10


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()



def fake_cifar(path, seed=0):
    g = np.random.default_rng(seed)
    split = lambda n: (g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), g.integers(0, 10, n))  # noqa: E731
    return write_cifar10_archive(path, split(N_TRAIN), split(N_TEST))


def fake_inception(path, fc_shape=(1008, 2048)):
    """The two tensors the validator checks, with torch-fidelity's names and shapes, plus a bias."""
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.randn(32, 3, 3, 3), "fc.weight": torch.zeros(fc_shape),
                "fc.bias": torch.zeros(fc_shape[0])}, path)
    return path


@pytest.fixture
def remote(tmp_path):
    """Files 'on a server' (a folder reached through file:// URLs) and a manifest pointing at them."""
    src = tmp_path / "remote"
    src.mkdir()
    cifar = fake_cifar(src / "cifar-10-python.tar.gz")
    inc = fake_inception(src / "inception.pth")
    manifest = {n: MANIFEST.get(n) for n in MANIFEST.names()}
    # cifar10 keeps its MD5 check (of the stand-in) and gets small counts; SHA-256 unknown, as in the manifest
    manifest["cifar10"] = dataclasses.replace(manifest["cifar10"], urls=(cifar.as_uri(),), md5=md5(cifar),
                                              size=cifar.stat().st_size,
                                              params={"train_count": N_TRAIN, "test_count": N_TEST})
    manifest["inception"] = dataclasses.replace(manifest["inception"], urls=(inc.as_uri(),), sha256=sha(inc),
                                                size=inc.stat().st_size)
    return dict(src=src, cifar=cifar, inc=inc, manifest=manifest, dir=tmp_path / "assets")


def no_partial_files(d):
    return not [p for p in d.iterdir() if p.name.endswith(".part")] if d.exists() else True


CIFAR10_FILES = {"teacher_uncond", "teacher_cond", "fid_ref", "inception", "cifar10", "sid_uncond", "sid_cond"}
T2I_FILES = {"pixart_512", "clip_vit_l14", "aesthetic_head", "pickscore", "clip_h_processor", "imagereward",
             "bert_base_uncased", "coco_captions", "sam_llava"}  # tests/testbeds/t2i/test_t2i_assets.py


def test_manifest_entries():
    assert set(manifest_names()) == CIFAR10_FILES | T2I_FILES  # every testbed declared
    for n in CIFAR10_FILES:
        a = MANIFEST.get(n)
        assert a.kind in VALIDATORS and a.urls[0].startswith("https://") and a.urls[0].endswith(
            a.filename.rsplit("-", 1)[-1] if n.startswith("sid") else a.filename)
    inc = MANIFEST.get("inception")
    assert inc.sha256.startswith(inc.filename.rsplit("-", 1)[1].split(".")[0])  # torch hub's hash-prefix convention
    assert MANIFEST.get("teacher_uncond").params["label_dim"] == 0
    assert MANIFEST.get("teacher_cond").params["label_dim"] == 10
    assert MANIFEST.get("cifar10").md5 == "c58f30108f718f92721af3b95e74349a" and MANIFEST.get("cifar10").sha256 is None
    assert MANIFEST.get("sid_uncond").optional and not MANIFEST.get("teacher_cond").optional


def test_download_by_file_url_pins_then_skips(remote):
    d = remote["dir"]
    out = download_assets(["cifar10", "inception"], d, manifest=remote["manifest"])
    assert out["cifar10"]["downloaded"] and out["inception"]["downloaded"]
    assert (d / "cifar-10-python.tar.gz").read_bytes() == remote["cifar"].read_bytes()
    assert out["cifar10"]["sha256"] == sha(remote["cifar"]) and out["cifar10"]["sha256_source"] == "pinned now"
    assert out["inception"]["sha256_source"] == "manifest"
    assert read_sha256sums(d) == {"cifar-10-python.tar.gz": sha(remote["cifar"]),
                                  "weights-inception-2015-12-05-6726825d.pth": sha(remote["inc"])}
    assert (d / SHA256SUMS).read_text().splitlines()[0] == f"{sha(remote['cifar'])}  cifar-10-python.tar.gz"
    assert no_partial_files(d)
    # second call: both verify, nothing is fetched (the server's files are gone)
    remote["cifar"].unlink()
    remote["inc"].unlink()
    again = download_assets(["cifar10", "inception"], d, manifest=remote["manifest"])
    assert not again["cifar10"]["downloaded"] and not again["inception"]["downloaded"]
    assert again["cifar10"]["sha256_source"] == SHA256SUMS


def test_corrupted_download_leaves_no_file(remote):
    d, m = remote["dir"], remote["manifest"]
    good = remote["cifar"].read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    remote["cifar"].write_bytes(bytes(bad))
    dest = d / "cifar-10-python.tar.gz"
    with pytest.raises(CheckpointError) as e:
        download_asset("cifar10", dest, manifest=m)
    msg = one_line(e)
    assert f"the download from {remote['cifar'].as_uri()} has MD5 {md5(remote['cifar'])}, expected {m['cifar10'].md5}" \
        in msg and "nothing was written" in msg
    assert not dest.exists() and no_partial_files(d) and not (d / SHA256SUMS).exists()

    # a pinned SHA-256 (no MD5 in the entry): the good file is pinned, a changed server file is refused
    m["cifar10"] = dataclasses.replace(m["cifar10"], md5=None, size=None)
    remote["cifar"].write_bytes(good)
    download_asset("cifar10", dest, manifest=m)
    dest.unlink()
    other = fake_cifar(remote["cifar"], seed=1)
    with pytest.raises(CheckpointError) as e:
        download_asset("cifar10", dest, manifest=m)
    assert f"has SHA-256 {sha(other)}, expected {hashlib.sha256(good).hexdigest()} (pinned on first use in " \
        f"{d / SHA256SUMS}" in one_line(e)
    assert not dest.exists() and no_partial_files(d)

    # checksums fine (the user's), content wrong: still nothing written
    garbage = remote["src"] / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError) as e:
        download_asset("inception", d / "inc.pth", url=garbage.as_uri(), sha256=sha(garbage), manifest=m)
    assert "is not a torch state dict" in one_line(e)
    assert not (d / "inc.pth").exists() and no_partial_files(d)

    with pytest.raises(CheckpointError) as e:
        download_asset("inception", d / "inc.pth", url=(remote["src"] / "absent").as_uri(), manifest=m)
    assert "download from file://" in one_line(e) and "failed" in one_line(e)


def test_missing_file_names_path_and_url(tmp_path):
    with pytest.raises(CheckpointError) as e:
        verify_assets(["teacher_cond"], tmp_path)
    p = tmp_path / "edm-cifar10-32x32-cond-vp.pkl"
    assert one_line(e) == (f"asset teacher_cond: {p} not found; run `snakemake download_assets` or download "
                           "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl to "
                           f"{p} (or set asset_files.paths.teacher_cond)")


def test_missing_files_are_named_together_before_any_check(tmp_path):
    (tmp_path / "edm-cifar10-32x32-uncond-vp.pkl").write_bytes(b"garbage that would fail its content check")
    with pytest.raises(CheckpointError) as e:
        verify_assets(["teacher_uncond", "teacher_cond", "fid_ref", "sid_cond"], tmp_path)
    msg = one_line(e)
    assert msg.startswith("3 assets missing: teacher_cond (")
    for n, f in (("fid_ref", "cifar10-32x32.npz"), ("sid_cond", "network-snapshot-1.200000-713312.pkl")):
        assert f"{n} (" in msg and f in msg
    assert "teacher_uncond" not in msg
    with pytest.raises(UnknownNameError, match="valid names: aesthetic_head, .*, cifar10, .*, fid_ref, .*, inception"):
        verify_assets(["teacher"], tmp_path)


def test_user_sha256_wins_and_a_wrong_one_fails_in_one_line(tmp_path):
    inc = fake_inception(tmp_path / "weights-inception-2015-12-05-6726825d.pth")
    with pytest.raises(CheckpointError) as e:  # the manifest's size and SHA-256 are those of the real file
        verify_assets(["inception"], tmp_path)
    assert f"{inc} has {inc.stat().st_size} bytes, expected 95628359" in one_line(e)
    wrong = "0" * 64
    with pytest.raises(CheckpointError) as e:
        verify_assets(["inception"], tmp_path, sha256={"inception": wrong})
    assert one_line(e) == (f"asset inception: {inc} has SHA-256 {sha(inc)}, expected {wrong} "
                           "(asset_files.sha256.inception)")
    out = verify_assets(["inception"], tmp_path, sha256={"inception": sha(inc).upper()})
    assert out["inception"] == dict(path=str(inc), sha256=sha(inc), size=inc.stat().st_size, sha256_source="config")
    # checksums before content: a teacher pickle with a wrong checksum fails without opening it
    t = tmp_path / "edm-cifar10-32x32-uncond-vp.pkl"
    t.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=f"asset teacher_uncond: {t} has SHA-256 {sha(t)}, expected 1{'0' * 63}"):
        verify_assets(["teacher_uncond"], tmp_path, sha256={"teacher_uncond": "1" + "0" * 63})
    with pytest.raises(ConfigError, match="asset_files.sha256.inception: 'abc' is not a SHA-256"):
        verify_assets(["inception"], tmp_path, sha256={"inception": "abc"})
    with pytest.raises(ConfigError, match="asset_files.sha256.teacher: unknown asset"):
        verify_assets(["inception"], tmp_path, sha256={"teacher": wrong})


def test_overrides_point_at_files_elsewhere(tmp_path):
    elsewhere = tmp_path / "shared" / "my-inception.pth"
    elsewhere.parent.mkdir()
    fake_inception(elsewhere)
    d = tmp_path / "assets"
    paths = resolve_paths(d, {"inception": str(elsewhere)})
    assert paths["inception"] == elsewhere and paths["teacher_cond"] == d / "edm-cifar10-32x32-cond-vp.pkl"
    out = verify_assets(["inception"], d, overrides={"inception": elsewhere}, sha256={"inception": sha(elsewhere)})
    assert out["inception"]["path"] == str(elsewhere)
    # the record is kept in the asset directory, under the manifest's file name
    assert read_sha256sums(d) == {"weights-inception-2015-12-05-6726825d.pth": sha(elsewhere)}
    with pytest.raises(ConfigError, match="asset_files.paths.incepton: unknown asset; valid names: aesthetic_head, .*, cifar10"):
        resolve_paths(d, {"incepton": elsewhere})


def test_first_use_pins_and_later_changes_are_caught(tmp_path, remote):
    m, d = remote["manifest"], remote["dir"]
    m["cifar10"] = dataclasses.replace(m["cifar10"], md5=None, size=None)
    f = fake_cifar(d / "cifar-10-python.tar.gz", seed=5)
    first = verify_assets(["cifar10"], d, manifest=m)
    assert first["cifar10"]["sha256_source"] == "pinned now" and read_sha256sums(d) == {f.name: sha(f)}
    assert verify_assets(["cifar10"], d, manifest=m)["cifar10"]["sha256_source"] == SHA256SUMS
    pinned = sha(f)
    fake_cifar(f, seed=6)  # a different, valid archive at the same path
    with pytest.raises(CheckpointError) as e:
        verify_assets(["cifar10"], d, manifest=m)
    assert f"{f} has SHA-256 {sha(f)}, expected {pinned} (pinned on first use in {d / SHA256SUMS}; remove its line" \
        in one_line(e)
    assert verify_assets(["cifar10"], d, sha256={"cifar10": sha(f)}, manifest=m)["cifar10"]["sha256_source"] == \
        "config"
    assert read_sha256sums(d) == {f.name: pinned}  # the user's checksum does not rewrite the record
    (d / SHA256SUMS).write_text("deadbeef  cifar-10-python.tar.gz\n")
    with pytest.raises(CheckpointError, match=f"{d / SHA256SUMS}:1 is not a '<sha256>  <filename>' line"):
        verify_assets(["cifar10"], d, manifest=m)


def test_content_checks(tmp_path, remote):
    m, d = remote["manifest"], remote["dir"]
    d.mkdir()
    inc = fake_inception(d / "weights-inception-2015-12-05-6726825d.pth", fc_shape=(1000, 2048))
    with pytest.raises(CheckpointError) as e:
        verify_assets(["inception"], d, sha256={"inception": sha(inc)}, manifest=m)
    assert one_line(e) == (f"asset inception: {inc} tensor fc.weight is (1000, 2048), expected (1008, 2048); "
                           "not torch-fidelity's Inception-v3 weights")
    inc.write_bytes(remote["inc"].read_bytes()[:-100])  # truncated
    with pytest.raises(CheckpointError, match="is not a torch state dict"):
        verify_assets(["inception"], d, sha256={"inception": sha(inc)}, manifest=m)
    assert not (d / SHA256SUMS).exists()  # nothing that failed was pinned

    # a CIFAR-10 archive with the wrong image count (checksums of the stand-in match)
    m["cifar10"] = dataclasses.replace(m["cifar10"], md5=None, size=None,
                                       params={**m["cifar10"].params, "train_count": 50000})
    c = fake_cifar(d / "cifar-10-python.tar.gz")
    with pytest.raises(CheckpointError) as e:
        verify_assets(["cifar10"], d, manifest=m)
    assert one_line(e).startswith(f"asset cifar10: CIFAR-10 {c}: the train split has {N_TRAIN} images, expected 50000")

    # an extracted directory: checked by per-file MD5s, then read
    ext = tmp_path / "extracted"
    with tarfile.open(remote["cifar"]) as tf:
        tf.extractall(ext, filter="data")
    member_md5 = {f.name: md5(f) for f in (ext / BATCH_DIR).iterdir()}
    m["cifar10"] = dataclasses.replace(m["cifar10"], params={"train_count": N_TRAIN, "test_count": N_TEST,
                                                             "member_md5": member_md5})
    out = verify_assets(["cifar10"], d, overrides={"cifar10": ext}, manifest=m)
    assert out["cifar10"]["sha256"] is None and out["cifar10"]["sha256_source"] == "member MD5s"
    assert out["cifar10"]["size"] == sum(f.stat().st_size for f in (ext / BATCH_DIR).iterdir())
    batch = ext / BATCH_DIR / "data_batch_4"
    batch.write_bytes(cifar10_batch_files(*[(np.zeros((5 * k, 3, 32, 32), np.uint8), np.zeros(5 * k, int))
                                            for k in (N_TRAIN // 5, N_TEST // 5)])["data_batch_4"])
    with pytest.raises(CheckpointError) as e:
        verify_assets(["cifar10"], d, overrides={"cifar10": ext / BATCH_DIR}, manifest=m)
    assert f"asset cifar10: {batch} has MD5 {md5(batch)}, expected {member_md5['data_batch_4']}" in one_line(e)
    with pytest.raises(CheckpointError, match="is a directory, expected the file"):
        verify_assets(["inception"], d, overrides={"inception": ext}, manifest=m)


def test_command_line(tmp_path, capsys):
    assert main(["verify", "--asset-dir", str(tmp_path), "teacher_cond", "fid_ref"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 2 assets missing: teacher_cond (") and err.count("\n") == 1
    assert main(["list", "--asset-dir", str(tmp_path)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["cifar10"]["md5"] == "c58f30108f718f92721af3b95e74349a"
    assert set(listed) == CIFAR10_FILES | T2I_FILES
    inc = fake_inception(tmp_path / "x.pth")
    assert main(["verify", "--asset-dir", str(tmp_path / "a"), "--path", f"inception={inc}",
                 "--sha256", f"inception={sha(inc)}", "inception"]) == 0
    assert json.loads(capsys.readouterr().out)["inception"]["sha256"] == sha(inc)


def test_the_module_command_lists_what_the_testbeds_register(tmp_path):
    """`python -m sim_core.assets` runs the module as __main__; the testbeds register their files in sim_core.assets,
    and the listing must show them (it once printed {})."""
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "sim_core.assets", "list", "--asset-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    listed = json.loads(p.stdout)
    assert set(listed) == CIFAR10_FILES | T2I_FILES
    assert listed["teacher_uncond"]["urls"][0].endswith("/edm-cifar10-32x32-uncond-vp.pkl")


def test_fid_ref_content_check(tmp_path):
    """fid_ref goes through sim_core.testbeds.cifar10.image_metrics.load_reference_stats (EDM's npz: mu (2048,), sigma
    (2048, 2048))."""
    ref = tmp_path / "cifar10-32x32.npz"
    np.savez(ref, mu=np.zeros(2048, np.float32), sigma=np.eye(2048, dtype=np.float32))
    out = verify_assets(["fid_ref"], tmp_path)
    assert out["fid_ref"]["sha256_source"] == "pinned now" and read_sha256sums(tmp_path) == {ref.name: sha(ref)}
    (tmp_path / SHA256SUMS).unlink()
    np.savez(ref, mu=np.zeros(2048, np.float32))
    with pytest.raises(CheckpointError) as e:
        verify_assets(["fid_ref"], tmp_path)
    assert one_line(e).startswith(f"asset fid_ref: FID reference statistics {ref} has no key 'sigma'")
    assert not (tmp_path / SHA256SUMS).exists()
