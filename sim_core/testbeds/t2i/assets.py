"""The text-to-image testbed's downloaded files in the asset manifest (sim_core/assets.py): PixArt-alpha's diffusers
folder (its transformer, T5-XXL text encoder and tokenizer, and sd-vae-ft-ema), the three scorers' files, and the two
prompt sets. Hugging Face publishes no checksum of a whole repository: each folder's tree digest (files.tree_sha256)
is pinned in SHA256SUMS on first use, as the CIFAR-10 files without published checksums are. The content checks read
config values from the real configs (docs/text-to-image.md), so a wrong folder fails at verify_assets in one line."""
from __future__ import annotations

import json
from pathlib import Path

from sim_core.assets import VALIDATORS, Asset, first_line, register_asset
from sim_core.errors import CheckpointError, ConfigError

_HF = "https://huggingface.co"

register_asset(Asset(
    "pixart_512", "PixArt-XL-2-512x512", (f"{_HF}/PixArt-alpha/PixArt-XL-2-512x512",), "hf_folder",
    "PixArt-alpha 512px teacher (diffusers folder: transformer, T5-XXL text_encoder + tokenizer, sd-vae-ft-ema vae)",
    folder=True,
    params={"repo": "PixArt-alpha/PixArt-XL-2-512x512",
            "allow_patterns": ["transformer/*", "text_encoder/*", "tokenizer/*", "vae/*", "model_index.json"],
            "files": ["transformer/config.json", "text_encoder/config.json", "tokenizer/spiece.model",
                      "vae/config.json"],
            # PixArt_XL_2 at 512 (T2I config table): 28 blocks, 16 x 72 = 1152 wide, patch 2, learned sigma
            "configs": {"transformer/config.json": {"sample_size": 64, "num_layers": 28, "in_channels": 4,
                                                    "out_channels": 8, "caption_channels": 4096,
                                                    "cross_attention_dim": 1152, "patch_size": 2},
                        "text_encoder/config.json": {"d_model": 4096},   # t5-v1_1-xxl
                        "vae/config.json": {"latent_channels": 4}}}))    # sd-vae-ft-ema
register_asset(Asset(
    "clip_vit_l14", "clip-vit-large-patch14", (f"{_HF}/openai/clip-vit-large-patch14",), "hf_folder",
    "CLIP ViT-L/14, the aesthetic predictor's image encoder (vision tower and processor)", folder=True,
    params={"repo": "openai/clip-vit-large-patch14",
            "allow_patterns": ["config.json", "preprocessor_config.json", "*.safetensors"],
            "files": ["config.json", "preprocessor_config.json"],
            "configs": {"config.json": {"projection_dim": 768, "vision_config.patch_size": 14}}}))
register_asset(Asset(
    "aesthetic_head", "sac+logos+ava1-l14-linearMSE.pth",
    ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth",),
    "aesthetic_head", "LAION aesthetic predictor v2 head (linear MLP on the normalised CLIP ViT-L/14 embedding)",
    params={"in_dim": 768}))
register_asset(Asset(
    "pickscore", "PickScore_v1", (f"{_HF}/yuvalkirstain/PickScore_v1",), "hf_folder",
    "PickScore v1 (a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences)", folder=True,
    params={"repo": "yuvalkirstain/PickScore_v1", "allow_patterns": ["config.json", "*.safetensors"],
            "files": ["config.json"], "configs": {"config.json": {"projection_dim": 1024}}}))
register_asset(Asset(
    "clip_h_processor", "CLIP-ViT-H-14-laion2B-s32B-b79K", (f"{_HF}/laion/CLIP-ViT-H-14-laion2B-s32B-b79K",),
    "hf_folder", "PickScore's processor: CLIP-ViT-H-14's tokenizer and image preprocessing (no weights)",
    folder=True,
    params={"repo": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
            "allow_patterns": ["preprocessor_config.json", "tokenizer*", "vocab.json", "merges.txt",
                               "special_tokens_map.json"],
            "files": ["preprocessor_config.json", "vocab.json", "merges.txt"], "configs": {}}))
register_asset(Asset(
    "imagereward", "ImageReward", (f"{_HF}/THUDM/ImageReward",), "hf_folder",
    "ImageReward v1.0 (ImageReward.pt: BLIP ViT-L + BERT with cross-attention + reward head; med_config.json)",
    folder=True,
    params={"repo": "THUDM/ImageReward", "allow_patterns": ["ImageReward.pt", "med_config.json"],
            "files": ["ImageReward.pt", "med_config.json"],
            "configs": {"med_config.json": {"hidden_size": 768, "num_hidden_layers": 12}}}))
register_asset(Asset(
    "bert_base_uncased", "bert-base-uncased", (f"{_HF}/google-bert/bert-base-uncased",), "hf_folder",
    "bert-base-uncased's tokenizer (BLIP adds [DEC] and [ENC] to it for ImageReward)", folder=True,
    params={"repo": "google-bert/bert-base-uncased",
            "allow_patterns": ["vocab.txt", "tokenizer_config.json", "tokenizer.json", "config.json"],
            "files": ["vocab.txt"], "configs": {}}))
register_asset(Asset(
    "coco_captions", "captions_val2017.json",
    ("http://images.cocodataset.org/annotations/annotations_trainval2017.zip",), "coco_captions",
    "COCO-2017 validation captions (Table 3's evaluation prompts)",
    params={"images": 5000,  # COCO-2017 val
            "manual": "captions_val2017.json is a member of the annotations archive: download "
                      "http://images.cocodataset.org/annotations/annotations_trainval2017.zip and unzip "
                      "annotations/captions_val2017.json from it"}))
register_asset(Asset(
    "sam_llava", "SA1B_caption.tar.gz",
    (f"{_HF}/datasets/PixArt-alpha/SAM-LLaVA-Captions10M/resolve/main/SA1B_caption.tar.gz",), "sam_llava",
    "SAM-LLaVA-Captions10M (the prompts SIM distils on, Appendix B.3): a webdataset tar of .txt captions"))


def _value(config: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(config, dict) or key not in config:
            return KeyError
        config = config[key]
    return config


@VALIDATORS.register("hf_folder")
def validate_hf_folder(path: Path, asset: Asset) -> None:
    """The files a loader needs are there, and the configs hold the real architecture's values."""
    for rel in asset.params.get("files", ()):
        if not (path / rel).is_file():
            raise CheckpointError(f"{path} has no {rel}: not the {asset.params.get('repo', asset.filename)} folder")
    for rel, expected in asset.params.get("configs", {}).items():
        try:
            config = json.loads((path / rel).read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path / rel} is not readable JSON: {first_line(e)}") from None
        for key, want in expected.items():
            got = _value(config, key)
            if got != want:
                found = "missing" if got is KeyError else repr(got)
                raise CheckpointError(f"{path / rel}: {key} is {found}, expected {want!r}: not "
                                      f"{asset.params.get('repo', asset.filename)}")


@VALIDATORS.register("aesthetic_head")
def validate_aesthetic_head(path: Path, asset: Asset) -> None:
    from sim_core.testbeds.t2i.scorers import AestheticHead
    head = AestheticHead.from_file(path)
    if head.layers[0].in_features != asset.params.get("in_dim", head.layers[0].in_features):
        raise CheckpointError(f"{path} takes {head.layers[0].in_features}-d embeddings, expected "
                              f"{asset.params['in_dim']} (CLIP ViT-L/14)")


def _prompt_check(load, path: Path) -> list:
    try:
        return load(path)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


@VALIDATORS.register("coco_captions")
def validate_coco_captions(path: Path, asset: Asset) -> None:
    from sim_core.testbeds.t2i.prompts import coco_captions
    n = len(_prompt_check(coco_captions, path))
    if "images" in asset.params and n != asset.params["images"]:
        raise CheckpointError(f"{path} holds captions of {n} images, expected {asset.params['images']} (COCO-2017 val)")


@VALIDATORS.register("sam_llava")
def validate_sam_llava(path: Path, asset: Asset) -> None:
    from sim_core.testbeds.t2i.prompts import sam_llava_tar
    _prompt_check(lambda p: sam_llava_tar(p, limit=16), path)
