"""Two of Table 3's image scorers, native on transformers 5 (the published packages do not import with it), with the
original preprocessing (CLIP's PIL bicubic resize, centre crop, CLIP mean/std). Images are what the harness
saves: uint8 tensors (B, 3, H, W).

- Aesthetic score, LAION aesthetic predictor v2 ("linearMSE"): the CLIP ViT-L/14 image embedding, L2-normalised,
  through a stack of linear layers with dropout and no nonlinearity (so an affine map of the normalised
  embedding); the head is ``sac+logos+ava1-l14-linearMSE.pth``, keys ``layers.{0,2,4,6,7}.{weight,bias}``.
- PickScore (``PickScore_v1``, a CLIP ViT-H/14): ``logit_scale.exp() * cos(text, image)`` per prompt and image;
  Table 3 prints the cosine (score / 100 for the released model), so both are reported.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sim_core.errors import CheckpointError, ConfigError

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
        if not p.is_file():
            raise CheckpointError(f"aesthetic head {p} does not exist")
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"aesthetic head {p} is not a torch file that loads with weights_only "
                                  f"({str(e).splitlines()[0][:120]})") from None
        if not isinstance(sd, dict) or set(sd) != HEAD_KEYS:
            keys = sorted(map(str, sd))[:4] if isinstance(sd, dict) else type(sd).__name__
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
        except (OSError, ValueError) as e:
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
        except (OSError, ValueError) as e:
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
