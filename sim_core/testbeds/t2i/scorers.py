"""Table 3's three image scorers, native on transformers 5 (the published packages do not import with it), with the
original preprocessing (CLIP's PIL bicubic resize, centre crop, CLIP mean/std). Images are what the harness
saves: uint8 tensors (B, 3, H, W).

- Aesthetic score, LAION aesthetic predictor v2 ("linearMSE"): the CLIP ViT-L/14 image embedding, L2-normalised,
  through a stack of linear layers with dropout and no nonlinearity (so an affine map of the normalised
  embedding); the head is ``sac+logos+ava1-l14-linearMSE.pth``, keys ``layers.{0,2,4,6,7}.{weight,bias}``.
- PickScore (``PickScore_v1``, a CLIP ViT-H/14): ``logit_scale.exp() * cos(text, image)`` per prompt and image;
  Table 3 prints the cosine (score / 100 for the released model), so both are reported.
- ImageReward: below.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from sim_core.errors import CheckpointError, ConfigError
from sim_core.files import load_checked
from sim_core.testbeds.t2i.state_dicts import load_exactly

HEAD_KEYS = {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
PICKSCORE_MAX_TOKENS = 77  # PickScore's processor: CLIP's context length


def _features(out) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features where 4.x returned the tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _pixels(processor, images: torch.Tensor, device) -> torch.Tensor:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"scorers take uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    return processor(images=[im.permute(1, 2, 0).numpy() for im in images.cpu()],
                      return_tensors="pt")["pixel_values"].to(device)


class AestheticHead(nn.Module):
    """Linear(d, 1024) Dropout(0.2) Linear(1024, 128) Dropout(0.2) Linear(128, 64) Dropout(0.1) Linear(64, 16)
    Linear(16, 1), as the improved-aesthetic-predictor repository defines it (d = 768 for ViT-L/14)."""

    def __init__(self, in_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.layers(e).squeeze(-1)

    @classmethod
    def from_file(cls, path) -> "AestheticHead":
        p = Path(path)
        sd = load_checked(p, "aesthetic head")
        if set(sd) != HEAD_KEYS:
            keys = sorted(map(str, sd))[:4]
            raise CheckpointError(f"{p} is not an aesthetic-predictor head (expected layers.{{0,2,4,6,7}}.weight/bias, "
                                  f"found {keys})")
        head = cls(int(sd["layers.0.weight"].shape[1]))
        try:
            head.load_state_dict(sd)
        except RuntimeError as e:
            raise CheckpointError(f"aesthetic head {p}: {str(e).splitlines()[-1].strip()[:160]}") from None
        return head.eval()

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(w, b) with head(e) = e @ w + b in eval mode: the product of the five linear maps."""
        w, b = None, None
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                w = layer.weight.T if w is None else w @ layer.weight.T
                b = layer.bias if b is None else b @ layer.weight.T + layer.bias
        return w.squeeze(-1), b.squeeze(-1)


class AestheticScorer:
    def __init__(self, vision, processor, head: AestheticHead):
        dim = vision.config.projection_dim
        if head.layers[0].in_features != dim:
            raise ConfigError(f"the aesthetic head takes {head.layers[0].in_features}-d embeddings, the CLIP vision "
                              f"model gives {dim}")
        self.vision, self.processor, self.head = vision.eval().requires_grad_(False), processor, head.eval()

    @classmethod
    def from_files(cls, clip_dir, head_path, device="cpu") -> "AestheticScorer":
        """A local CLIP ViT-L/14 folder (``openai/clip-vit-large-patch14`` layout) and the head file."""
        from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection
        if not Path(clip_dir).is_dir():
            raise ConfigError(f"CLIP folder {clip_dir} does not exist")
        try:
            vision = CLIPVisionModelWithProjection.from_pretrained(str(clip_dir), local_files_only=True)
            processor = CLIPImageProcessorPil.from_pretrained(str(clip_dir), local_files_only=True)
        except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: transformers' size mismatch
            raise ConfigError(f"cannot load CLIP from {clip_dir}: {str(e).splitlines()[0][:200]}") from None
        return cls(vision.to(device), processor, AestheticHead.from_file(head_path).to(device))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.vision.parameters()).device
        e = self.vision(pixel_values=_pixels(self.processor, images, device)).image_embeds
        return self.head(e / e.norm(dim=-1, keepdim=True)).float().cpu()


class PickScorer:
    def __init__(self, model, processor):
        self.model, self.processor = model.eval().requires_grad_(False), processor

    @classmethod
    def from_folders(cls, model_dir, processor_dir, device="cpu") -> "PickScorer":
        """``PickScore_v1`` and its processor (``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``), local folders."""
        from transformers import CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer
        for what, d in (("PickScore model", model_dir), ("PickScore processor", processor_dir)):
            if not Path(d).is_dir():
                raise ConfigError(f"{what} folder {d} does not exist")
        try:
            model = CLIPModel.from_pretrained(str(model_dir), local_files_only=True)
            processor = CLIPProcessor(CLIPImageProcessorPil.from_pretrained(str(processor_dir), local_files_only=True),
                                      CLIPTokenizer.from_pretrained(str(processor_dir), local_files_only=True))
        except (OSError, ValueError, RuntimeError) as e:
            raise ConfigError(f"cannot load PickScore from {model_dir}: {str(e).splitlines()[0][:200]}") from None
        return cls(model.to(device), processor)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {images.shape[0]} images")
        device = next(self.model.parameters()).device
        pixels = _pixels(self.processor.image_processor, images, device)
        text = self.processor.tokenizer(list(prompts), padding=True, truncation=True, max_length=PICKSCORE_MAX_TOKENS,
                                        return_tensors="pt").to(device)
        e_img = _features(self.model.get_image_features(pixel_values=pixels))
        e_txt = _features(self.model.get_text_features(**text))
        cos = (e_img / e_img.norm(dim=-1, keepdim=True) * e_txt / e_txt.norm(dim=-1, keepdim=True)).sum(-1)
        return {"cosine": cos.float().cpu(), "score": (self.model.logit_scale.exp() * cos).float().cpu()}


# ---- ImageReward ---------------------------------------------------------------------------------------------------
# THUDM/ImageReward (image-reward 1.5): BLIP's ViT-L/16 at 224 encodes the image; BLIP's BERT "MED" text encoder
# reads the prompt (35 tokens, padded) with cross-attention to every image token; its [CLS] state goes through the
# same five linear layers as the aesthetic head, then the published z-normalisation. The vision names below are those
# of BLIP's vit.py (timm's layout); the real ImageReward.pt cannot be fetched here, so they are checked only on a
# checkpoint written in that layout: a real file whose names differ fails to load, naming the keys, never silently.
IMAGEREWARD_MEAN, IMAGEREWARD_STD = 0.16717362830052426, 1.0333394966054072  # ImageReward.py
IMAGEREWARD_MAX_TOKENS = 35
IMAGEREWARD_SIZE = 224
# optional files beside the checkpoint: ImageReward's download ships med_config.json (BLIP's text encoder in BERT's
# format); a toy stand-in adds its vision config and its z-normalisation, which ImageReward fixes in its code
IMAGEREWARD_TEXT_CONFIG = "med_config.json"
IMAGEREWARD_VISION_CONFIG = "vision_config.json"
IMAGEREWARD_NORMALISATION = "reward_normalisation.json"
MED_CONFIG_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "max_position_embeddings", "layer_norm_eps", "hidden_act", "pad_token_id")
VIT_RENAMES = [  # BLIP's vit.py (timm's layout) -> transformers' BlipVisionModel
    (r"cls_token", "embeddings.class_embedding"),
    (r"pos_embed", "embeddings.position_embedding"),
    (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embedding.\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"encoder.layers.\1.layer_norm1.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"encoder.layers.\1.layer_norm2.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"encoder.layers.\1.self_attn.qkv.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.projection.\2"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"encoder.layers.\1.mlp.\2.\3"),
    (r"norm\.(weight|bias)", r"post_layernorm.\1"),
]
IMAGEREWARD_SET_ASIDE = {  # keys of ImageReward.pt the reward does not read, and why
    "blip.vision_proj.": "BLIP's contrastive image projection (ITC), unused by the reward",
    "blip.text_proj.": "BLIP's contrastive text projection (ITC), unused by the reward",
    "blip.text_encoder.embeddings.position_ids": "a buffer transformers rebuilds",
}


def convert_imagereward(sd: dict) -> tuple[dict, dict, dict, dict]:
    """ImageReward.pt's state dict to (vision, text, head) state dicts in transformers' names, and the keys set
    aside with their reasons; a key nothing explains is a CheckpointError naming it."""
    import re
    vision, text, head, aside, unknown = {}, {}, {}, {}, []
    for key, value in sd.items():
        reason = next((r for prefix, r in IMAGEREWARD_SET_ASIDE.items() if key.startswith(prefix)), None)
        if reason is not None:
            aside[key] = reason
        elif key.startswith("blip.text_encoder."):
            text[key[len("blip.text_encoder."):]] = value  # MED and BlipTextModel share BERT's names
        elif key.startswith("mlp.layers."):
            head[key[len("mlp."):]] = value
        elif key.startswith("blip.visual_encoder."):
            name = key[len("blip.visual_encoder."):]
            for pattern, target in VIT_RENAMES:
                if re.fullmatch(pattern, name):
                    vision[re.sub(f"^{pattern}$", target, name)] = value
                    break
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"ImageReward checkpoint: {len(unknown)} unknown keys ({', '.join(unknown[:4])}"
                              f"{', ...' if len(unknown) > 4 else ''})")
    return vision, text, head, aside


class ImageRewardScorer:
    """``vision`` a transformers ``BlipVisionModel``, ``text`` a ``BlipTextModel`` (cross-attention, no pooler),
    ``head`` an :class:`AestheticHead` of the text width, ``tokenizer`` BLIP's (bert-base-uncased with [DEC] and
    [ENC] added), ``processor`` CLIP's PIL preprocessing at 224 (ImageReward's transform); ``mean`` and ``std``
    the z-normalisation of the head's output (ImageReward's published constants unless given)."""

    def __init__(self, vision, text, head: AestheticHead, tokenizer, processor, mean: float = IMAGEREWARD_MEAN,
                 std: float = IMAGEREWARD_STD):
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ConfigError(f"ImageReward z-normalisation needs a finite mean and a positive std, got {mean}, {std}")
        self.vision, self.text = vision.eval().requires_grad_(False), text.eval().requires_grad_(False)
        self.head, self.tokenizer, self.processor = head.eval(), tokenizer, processor
        self.mean, self.std = float(mean), float(std)

    @classmethod
    def from_state_dict(cls, sd: dict, vision_config, text_config, tokenizer, processor, mean: float = IMAGEREWARD_MEAN,
                        std: float = IMAGEREWARD_STD) -> "ImageRewardScorer":
        from transformers.models.blip.modeling_blip import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel
        vision_sd, text_sd, head_sd, _ = convert_imagereward(sd)
        vision, text = BlipVisionModel(vision_config), BlipTextModel(text_config, add_pooling_layer=False)
        head = AestheticHead(text_config.hidden_size)
        for module, part, what in ((vision, vision_sd, "BLIP ViT"), (text, text_sd, "BERT text encoder"),
                                   (head, head_sd, "reward head")):
            load_exactly(module, part, f"ImageReward checkpoint does not fit its {what}")
        return cls(vision, text, head, tokenizer, processor, mean, std)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {images.shape[0]} images")
        device = next(self.vision.parameters()).device
        image_states = self.vision(pixel_values=_pixels(self.processor, images, device)).last_hidden_state
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=IMAGEREWARD_MAX_TOKENS,
                             return_tensors="pt").to(device)
        out = self.text(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                        encoder_hidden_states=image_states,
                        encoder_attention_mask=torch.ones(image_states.shape[:2], dtype=torch.long, device=device))
        r = self.head(out.last_hidden_state[:, 0].float())
        return ((r - self.mean) / self.std).cpu()


def imagereward_configs():
    """transformers configs of ImageReward's networks: BLIP's ViT-L/16 at 224 (timm's LayerNorm eps 1e-6, exact
    GELU) and BLIP's med_config.json (BERT-base, 30524 tokens with [DEC] and [ENC], cross-attention to 1024-d image
    tokens)."""
    from transformers import BlipTextConfig, BlipVisionConfig
    vision = BlipVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=IMAGEREWARD_SIZE, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu")
    text = BlipTextConfig(vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, max_position_embeddings=512, encoder_hidden_size=1024,
                          layer_norm_eps=1e-12, hidden_act="gelu")
    return vision, text


def _json_beside(path: Path, what: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{what} {path} is not readable JSON: {str(e).splitlines()[0][:160]}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{what} {path} holds a {type(obj).__name__}, not a JSON object")
    return obj


def imagereward_text_config(med: dict, encoder_width: int, bos_token_id: int = 30522, sep_token_id: int = 102,
                            source="med_config.json"):
    """BLIP's text encoder config from med_config.json (BERT's format): its architecture keys, and the
    cross-attention width set to the vision width, as BLIP does (``med_config.encoder_width = vision_width``; the
    file's own encoder_width, 768, is ViT-B's). ``bos_token_id`` and ``sep_token_id`` are the tokenizer's [DEC] and
    [SEP] (30522 and 102 in bert-base-uncased with BLIP's tokens); only generation would read them."""
    from transformers import BlipTextConfig
    missing = [k for k in MED_CONFIG_KEYS if k not in med]
    if missing:
        raise ConfigError(f"{source} lacks {', '.join(missing)} (a BERT config is expected)")
    return BlipTextConfig(**{k: med[k] for k in MED_CONFIG_KEYS}, encoder_hidden_size=int(encoder_width),
                          bos_token_id=int(bos_token_id), sep_token_id=int(sep_token_id))


def load_imagereward(checkpoint, tokenizer_dir, device="cpu") -> ImageRewardScorer:
    """``ImageReward.pt`` and a local ``bert-base-uncased`` tokenizer folder (BLIP adds [DEC] and [ENC] to it).

    Read beside the checkpoint when present: ``med_config.json`` (the text encoder, BERT's format, as the download
    ships it), ``vision_config.json`` (a BlipVisionConfig; absent for the real file, whose ViT-L/16 at 224 is fixed
    in ImageReward's code) and ``reward_normalisation.json`` (``{"mean", "std"}``; absent: the published
    constants). Without them the networks are :func:`imagereward_configs`'s."""
    from transformers import BertTokenizer, BlipVisionConfig, CLIPImageProcessorPil
    p = Path(checkpoint)
    if not Path(tokenizer_dir).is_dir():
        raise ConfigError(f"BERT tokenizer folder {tokenizer_dir} does not exist")
    sd = load_checked(p, "ImageReward checkpoint")
    if not any(str(k).startswith("blip.") for k in sd):
        raise CheckpointError(f"{p} is not an ImageReward checkpoint (no blip.* keys)")
    tokenizer = BertTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    # BLIP's init_tokenizer
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    vision, text = imagereward_configs()
    vision_path = p.parent / IMAGEREWARD_VISION_CONFIG
    if (v := _json_beside(vision_path, "ImageReward vision config")) is not None:
        try:
            vision = BlipVisionConfig.from_dict(v)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"ImageReward vision config {vision_path}: {str(e).splitlines()[0][:160]}") from None
    med_path = p.parent / IMAGEREWARD_TEXT_CONFIG
    if (med := _json_beside(med_path, "ImageReward text config")) is not None:
        text = imagereward_text_config(med, vision.hidden_size, tokenizer.bos_token_id, tokenizer.sep_token_id,
                                       med_path)
    norm_path = p.parent / IMAGEREWARD_NORMALISATION
    mean, std = IMAGEREWARD_MEAN, IMAGEREWARD_STD
    if (norm := _json_beside(norm_path, "ImageReward normalisation")) is not None:
        try:
            mean, std = float(norm["mean"]), float(norm["std"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"ImageReward normalisation {norm_path} needs a numeric mean and std, found "
                              f"{sorted(norm)}") from None
    if len(tokenizer) != text.vocab_size:  # another model's tokenizer would load, and index past the embeddings
        raise ConfigError(f"tokenizer folder {tokenizer_dir} has {len(tokenizer)} tokens with BLIP's [DEC] and [ENC], "
                          f"the ImageReward text encoder {text.vocab_size}")
    size = int(vision.image_size)  # ImageReward's transform resizes to the ViT's input size
    processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    scorer = ImageRewardScorer.from_state_dict(sd, vision, text, tokenizer, processor, mean, std)
    scorer.vision.to(device), scorer.text.to(device), scorer.head.to(device)
    return scorer
