"""FID / KID / Inception Score of 8x8 digit samples through torch-fidelity with the 'digits-cnn' extractor.

torch-fidelity (Obukhov et al.) computes FID (Heusel et al. 2017), KID (Binkowski et al. 2018) and IS (Salimans et
al. 2016); here the features come from the project's DigitsCNN instead of Inception-v3, which cannot be
downloaded offline. Inputs are in-memory Datasets, which torch-fidelity never caches (its cache is keyed by
name, not content); cache=False is passed as well so no stale statistics can ever be read.
"""
from __future__ import annotations

import numpy as np
import torch
import torch_fidelity
from torch.utils.data import Dataset

from sim_core.testbeds.digits.classifier import (
    EXTRACTOR_NAME,
    DigitsFeatureExtractor,
    load_classifier,
    register_extractor,
)
from sim_core.testbeds.digits.data import load_digits_split, to_uint8_rgb
from sim_core.testbeds.gmm.metrics import frechet_distance


class UInt8Images(Dataset):
    """A Dataset of uint8 (3, H, W) tensors, the form torch-fidelity reads (each item a tensor, no label)."""

    def __init__(self, images_uint8: torch.Tensor):
        self.images = images_uint8

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i]


def _as_uint8(x: torch.Tensor, who: str) -> torch.Tensor:
    if not torch.is_tensor(x) or x.ndim != 4 or tuple(x.shape[2:]) != (8, 8):
        raise ValueError(f"{who} must be images of shape (N, 1, 8, 8) in [-1, 1], got {getattr(x, 'shape', type(x))}")
    if x.dtype == torch.uint8:
        return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x
    if not torch.isfinite(x).all():
        raise ValueError(f"{who} contain non-finite values")
    return to_uint8_rgb(x)


def _real_images(real) -> torch.Tensor:
    if isinstance(real, str):
        return load_digits_split(real)[0]
    return real


def digits_fidelity(samples: torch.Tensor, classifier_path: str, real="train", kid_subset_size: int | None = None,
                    kid_subsets: int = 100, isc_splits: int = 10, batch_size: int = 500, rng_seed: int = 2020) -> dict:
    """fid, kid, kid_std (samples vs real digits) and isc, isc_std (of the samples) through torch-fidelity.

    samples: (N, 1, 8, 8) in [-1, 1] (quantised to uint8 as EDM does) or already uint8; real: a split name
    ('train' | 'test' | 'all') or an image tensor. kid_subset_size defaults to min(1000, N, N_real).
    """
    register_extractor()
    load_classifier(classifier_path)  # fail early, with a one-line message, on a missing or corrupt file
    fake, ref = _as_uint8(samples, "samples"), _as_uint8(_real_images(real), "real images")
    n_min = min(fake.shape[0], ref.shape[0])
    if kid_subset_size is None:
        kid_subset_size = min(1000, n_min)
    if not 2 <= kid_subset_size <= n_min:
        raise ValueError(f"kid_subset_size must be in [2, {n_min}] (the smaller sample count), got {kid_subset_size}")
    if fake.shape[0] < isc_splits:
        raise ValueError(f"need at least isc_splits={isc_splits} samples, got {fake.shape[0]}")
    m = torch_fidelity.calculate_metrics(
        input1=UInt8Images(fake), input2=UInt8Images(ref), feature_extractor=EXTRACTOR_NAME,
        feature_extractor_weights_path=str(classifier_path), fid=True, kid=True, isc=True,
        kid_subset_size=int(kid_subset_size), kid_subsets=int(kid_subsets), isc_splits=int(isc_splits),
        batch_size=int(batch_size), rng_seed=int(rng_seed), cuda=False, cache=False, save_cpu_ram=True,
        verbose=False)
    return {"fid": m[torch_fidelity.KEY_METRIC_FID], "kid": m[torch_fidelity.KEY_METRIC_KID_MEAN],
            "kid_std": m[torch_fidelity.KEY_METRIC_KID_STD], "isc": m[torch_fidelity.KEY_METRIC_ISC_MEAN],
            "isc_std": m[torch_fidelity.KEY_METRIC_ISC_STD]}


@torch.no_grad()
def extract_features(images: torch.Tensor, classifier_path: str, features=("64",)) -> tuple:
    """The features torch-fidelity sees: the same uint8 quantisation and the same extractor class."""
    ex = DigitsFeatureExtractor(EXTRACTOR_NAME, list(features), feature_extractor_weights_path=str(classifier_path))
    return ex(_as_uint8(images, "images"))


def fid_from_features(f1, f2) -> float:
    """FID computed directly: frechet_distance of the two feature sets' means and (unbiased) covariances."""
    f1 = f1.detach().cpu().double().numpy() if torch.is_tensor(f1) else np.asarray(f1, np.float64)
    f2 = f2.detach().cpu().double().numpy() if torch.is_tensor(f2) else np.asarray(f2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise ValueError(f"features must be (N >= 2, D) arrays of equal D, got {f1.shape} and {f2.shape}")
    return frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
