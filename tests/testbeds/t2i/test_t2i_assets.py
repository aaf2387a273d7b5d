"""The paper-scale text-to-image files in the asset manifest: folders (Hugging Face repositories) verified by a tree
digest pinned on first use and by the real configs' values, the aesthetic head and the prompt sets by their loaders;
a file served only inside an archive says how to get it. Each failure is one line, and nothing is written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sim_core.assets import MANIFEST, SHA256SUMS, download_asset, read_sha256sums, verify_assets
from sim_core.errors import CheckpointError
from sim_core.files import tree_sha256

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "t2i"
PIXART_CONFIG = {"sample_size": 64, "num_layers": 28, "in_channels": 4, "out_channels": 8, "caption_channels": 4096,
                 "cross_attention_dim": 1152, "patch_size": 2, "num_attention_heads": 16}


def pixart_folder(root: Path) -> Path:
    """The files PixArt-XL-2-512x512's content check reads (configs as published, stand-in weight bytes)."""
    d = root / "PixArt-XL-2-512x512"
    for rel, obj in (("transformer/config.json", PIXART_CONFIG), ("text_encoder/config.json", {"d_model": 4096}),
                     ("vae/config.json", {"latent_channels": 4})):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(json.dumps(obj))
    (d / "tokenizer").mkdir()
    (d / "tokenizer" / "spiece.model").write_bytes(b"sentencepiece")
    (d / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
    (d / ".cache" / "huggingface").mkdir(parents=True)  # the hub client's bookkeeping: not part of the digest
    (d / ".cache" / "huggingface" / "x.lock").write_text("")
    return d


def test_a_folder_is_pinned_by_its_tree_digest_and_a_change_is_caught(tmp_path):
    d = pixart_folder(tmp_path)
    info = verify_assets(["pixart_512"], tmp_path)["pixart_512"]
    assert info["sha256"] == tree_sha256(d) and info["sha256_source"] == "pinned now"
    assert read_sha256sums(tmp_path) == {"PixArt-XL-2-512x512": info["sha256"]}
    (d / ".cache" / "huggingface" / "x.lock").write_text("changed")  # hidden files do not count
    assert verify_assets(["pixart_512"], tmp_path)["pixart_512"]["sha256_source"] == SHA256SUMS
    (d / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"\1" * 64)
    with pytest.raises(CheckpointError, match=r"asset pixart_512: .*\(tree digest\) has SHA-256 .*pinned on first use"):
        verify_assets(["pixart_512"], tmp_path)


@pytest.mark.parametrize("case, match", [
    ("architecture", r"transformer/config.json: num_layers is 2, expected 28: not PixArt-alpha/PixArt-XL-2-512x512"),
    ("missing file", r"has no vae/config.json: not the PixArt-alpha/PixArt-XL-2-512x512 folder"),
    ("a file", r"is a file, expected the folder PixArt-XL-2-512x512/"),
])
def test_a_wrong_folder_is_named_in_one_line_and_nothing_is_pinned(tmp_path, case, match):
    d = pixart_folder(tmp_path)
    if case == "architecture":
        (d / "transformer" / "config.json").write_text(json.dumps({**PIXART_CONFIG, "num_layers": 2}))
    elif case == "missing file":
        (d / "vae" / "config.json").unlink()
    else:
        shutil.rmtree(d)
        d.write_text("not a folder")
    with pytest.raises(CheckpointError, match=match) as e:
        verify_assets(["pixart_512"], tmp_path)
    assert "\n" not in str(e.value) and not (tmp_path / SHA256SUMS).exists()


def test_the_aesthetic_head_is_checked_by_its_loader(tmp_path):
    from sim_core.testbeds.t2i.scorers import AestheticHead
    torch.save(AestheticHead(768).state_dict(), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    assert verify_assets(["aesthetic_head"], tmp_path)["aesthetic_head"]["sha256_source"] == "pinned now"
    torch.save(AestheticHead(512).state_dict(), tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="takes 512-d embeddings, expected 768"):
        verify_assets(["aesthetic_head"], tmp_path / "elsewhere", {"aesthetic_head": tmp_path / "other.pth"})


def test_the_prompt_sets_are_checked_by_their_readers(tmp_path):
    captions = FIXTURES / "captions_val2017_mini.json"
    images = len(json.loads(captions.read_text())["images"])
    with pytest.raises(CheckpointError, match=f"holds captions of {images} images, expected 5000"):
        verify_assets(["coco_captions"], tmp_path, {"coco_captions": captions})
    info = verify_assets(["sam_llava"], tmp_path, {"sam_llava": FIXTURES / "sam_llava_mini.tar"})
    assert info["sam_llava"]["size"] == (FIXTURES / "sam_llava_mini.tar").stat().st_size
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.tar"):
        verify_assets(["sam_llava"], tmp_path / "other", {"sam_llava": tmp_path / "empty.tar"})


def test_a_member_of_an_archive_says_how_to_get_it_and_writes_nothing(tmp_path):
    assert "unzip annotations/captions_val2017.json" in MANIFEST.get("coco_captions").params["manual"]
    with pytest.raises(CheckpointError, match=r"asset coco_captions: captions_val2017.json is a member .* then put "
                                              r"it at .*captions_val2017.json"):
        download_asset("coco_captions", tmp_path / "captions_val2017.json", asset_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_every_text_to_image_folder_names_its_repository_and_what_it_checks():
    for name in ("pixart_512", "clip_vit_l14", "pickscore", "clip_h_processor", "imagereward", "bert_base_uncased"):
        a = MANIFEST.get(name)
        assert a.folder and a.urls[0] == f"https://huggingface.co/{a.params['repo']}" and a.params["files"]
        assert set(a.params["configs"]) <= set(a.params["files"])
