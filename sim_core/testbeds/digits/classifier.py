"""A small CNN classifier of 8x8 digits: the feature network for FID/KID/IS on the digits testbed.

It plays Inception-v3's role in torch-fidelity (Heusel et al. 2017; Salimans et al. 2016): '64' is the 64-d
penultimate layer (pre-activation, so no dead units make the feature covariance singular) for FID/KID, and
'logits_unbiased' the 10 class logits for the Inception Score. The exported '64' features are centred and
scaled to unit mean variance on the training split (calibrate()), so FID values are in those units (a fixed
factor 1/feat_scale^2 times the raw-activation FD) and KID's kernel sees order-1 features. Weights are saved
with a SHA-256 checksum and metadata in a JSON file alongside (path + '.json'), both written atomically
(temp file + os.replace).
"""
from __future__ import annotations

import json
import os
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from sim_core.files import atomic_torch_save, atomic_write_json, sha256_file
from sim_core.testbeds.digits.data import NUM_CLASSES, from_uint8, load_digits_split

EXTRACTOR_NAME = "digits-cnn"
FEATURE_DIM = 64


class DigitsCNN(nn.Module):
    """conv3x3(1->c1) ReLU, conv3x3(c1->c2) ReLU, maxpool -> 4x4, conv3x3(c2->c3) ReLU, maxpool -> 2x2,
    Linear(4 c3 -> 64) = features, ReLU, dropout, Linear(64 -> 10) = logits."""

    def __init__(self, c1: int = 16, c2: int = 32, c3: int = 64, dropout: float = 0.3):
        super().__init__()
        self.init_kwargs = dict(c1=c1, c2=c2, c3=c3, dropout=dropout)
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.fc = nn.Linear(4 * c3, FEATURE_DIM)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)
        # affine map of the exported features, set by calibrate(): (f - feat_shift) / feat_scale
        self.register_buffer("feat_shift", torch.zeros(FEATURE_DIM))
        self.register_buffer("feat_scale", torch.ones(()))

    def features_and_logits(self, x: torch.Tensor):
        """x: (B, 1, 8, 8) in [-1, 1] -> (features (B, 64), logits (B, 10))."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"DigitsCNN expects images of shape (B, 1, 8, 8), got {tuple(x.shape)}")
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)
        f = self.fc(h.flatten(1))
        return f, self.head(self.drop(F.relu(f)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The exported 64-d features: penultimate activations, centred and scaled by calibrate()."""
        return self.export(self.features_and_logits(x)[0])

    def export(self, f: torch.Tensor) -> torch.Tensor:
        return (f - self.feat_shift) / self.feat_scale

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Centre the exported features on x and give them unit mean variance per dimension. Features of order 1
        suit KID's polynomial kernel (x.y / d + 1)^3; FID is shift invariant and scales by 1/feat_scale^2."""
        was = self.training
        self.eval()
        f = self.features_and_logits(x)[0]
        self.feat_shift.copy_(f.mean(0))
        self.feat_scale.copy_(f.var(0).mean().sqrt())
        self.train(was)


@torch.no_grad()
def accuracy(model: DigitsCNN, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    acc = float((model(x).argmax(1) == y).float().mean())
    model.train(was)
    return acc


def train_classifier(seed: int = 0, epochs: int = 30, batch_size: int = 64, lr: float = 3e-3,
                     weight_decay: float = 1e-2, **arch):
    """Train DigitsCNN on the 'train' split (AdamW, cosine LR decay, no augmentation); returns (model in eval
    mode, accuracy on the held-out 'test' split). Defaults reach 98-99% in ~6 s on one CPU thread."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = load_digits_split("train")
    xt, yt = load_digits_split("test")
    model = DigitsCNN(**arch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.calibrate(x)
    model.eval()
    return model, accuracy(model, xt, yt)


# ------------------------------------------------------------------------------------------ persistence
def meta_path(path: str) -> str:
    return str(path) + ".json"


def save_classifier(model: DigitsCNN, path: str, **meta) -> dict:
    """Write the weights to path and {sha256, arch, meta...} to path + '.json', each atomically."""
    path = str(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"arch": dict(model.init_kwargs), "state_dict": state}
    sha256 = atomic_torch_save(payload, path)
    info = {"sha256": sha256, "arch": dict(model.init_kwargs), "format": "digits-cnn/1",
            "torch": torch.__version__, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta}
    atomic_write_json(meta_path(path), info)
    return info


def load_classifier(path: str) -> DigitsCNN:
    """Rebuild a saved DigitsCNN after checking its SHA-256 against path + '.json'; eval mode, no grad."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"digits classifier weights not found: {path}")
    if not os.path.isfile(meta_path(path)):
        raise FileNotFoundError(f"digits classifier metadata not found: {meta_path(path)}")
    try:
        with open(meta_path(path)) as f:
            info = json.load(f)
        expected = info["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"digits classifier metadata {meta_path(path)} is unreadable: {e}") from None
    if sha256_file(path) != expected:
        raise ValueError(f"digits classifier {path} is corrupt: SHA-256 does not match {meta_path(path)}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model = DigitsCNN(**payload["arch"])
        model.load_state_dict(payload["state_dict"])
    except Exception as e:  # checksum matched but content is not a DigitsCNN checkpoint
        raise ValueError(f"digits classifier {path} cannot be loaded: {type(e).__name__}: {e}") from None
    model.eval().requires_grad_(False)
    return model


# --------------------------------------------------------------------------- torch-fidelity feature extractor
class DigitsFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity extractor 'digits-cnn': uint8 (B, 3, 8, 8) -> ('64' features, 'logits_unbiased').

    The weights file comes from calculate_metrics(feature_extractor_weights_path=...)."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"feature extractor {name} needs feature_extractor_weights_path (a saved DigitsCNN)")
        self.model = load_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list():
        return "64", "logits_unbiased"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits_unbiased", "fid": "64", "kid": "64", "prc": "64"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

    def forward(self, x: torch.Tensor):
        f, logits = self.model.features_and_logits(from_uint8(x))
        out = {"64": self.model.export(f), "logits_unbiased": logits}
        return tuple(out[name] for name in self.features_list)


def register_extractor() -> None:
    """Register DigitsFeatureExtractor as 'digits-cnn' with torch-fidelity; a repeated call is a no-op."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    existing = FEATURE_EXTRACTORS_REGISTRY.get(EXTRACTOR_NAME)
    if existing is None:
        register_feature_extractor(EXTRACTOR_NAME, DigitsFeatureExtractor)
    elif existing.__qualname__ == DigitsFeatureExtractor.__qualname__ and existing.__module__ == __name__:
        FEATURE_EXTRACTORS_REGISTRY[EXTRACTOR_NAME] = DigitsFeatureExtractor  # this module was reloaded
    else:
        raise ValueError(f"torch-fidelity feature extractor {EXTRACTOR_NAME!r} is registered to another class")


register_extractor()
