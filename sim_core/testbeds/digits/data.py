"""scikit-learn's bundled 8x8 digits (1797 images, 10 classes; UCI optdigits test set), offline.

Pixels 0..16 are mapped to [-1, 1] by x = v / 8 - 1, the range EDM assumes (sigma_data = 0.5). The train/test
split is stratified by class and deterministic: within each class the indices are permuted by
numpy.random.default_rng(seed) and the first round(test_fraction * n_class) go to test.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

NUM_CLASSES = 10
SPLITS = ("train", "test", "all")


@functools.lru_cache(maxsize=1)
def _raw():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float64), d.target.astype(np.int64)


@functools.lru_cache(maxsize=8)
def _split_indices(seed: int, test_fraction: float):
    _, y = _raw()
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits_split(split: str = "train", seed: int = 0, test_fraction: float = 0.2):
    """Images (N, 1, 8, 8) float32 in [-1, 1] and labels (N,) int64 of the given split ('train'|'test'|'all')."""
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; valid: {', '.join(SPLITS)}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    images, labels = _raw()
    if split != "all":
        train, test = _split_indices(int(seed), float(test_fraction))
        idx = train if split == "train" else test
        images, labels = images[idx], labels[idx]
    x = torch.from_numpy(images / 8.0 - 1.0).to(torch.float32).unsqueeze(1)
    return x, torch.from_numpy(labels.copy())


def one_hot(labels: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Integer labels (B,) -> float32 one-hot (B, num_classes), the class_labels format of EDM networks."""
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"labels must be a 1-D integer tensor, got shape {tuple(labels.shape)} dtype {labels.dtype}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    return torch.nn.functional.one_hot(labels.long(), num_classes).to(torch.float32)


def random_one_hot(n: int, generator: torch.Generator | None = None, num_classes: int = NUM_CLASSES):
    """n uniformly drawn classes as (labels (n,), one-hot (n, num_classes))."""
    labels = torch.randint(0, num_classes, (int(n),), generator=generator)
    return labels, one_hot(labels, num_classes)


def labels_from_one_hot(y: torch.Tensor) -> torch.Tensor:
    """One-hot (B, C) -> integer labels (B,) by argmax."""
    if y.ndim != 2:
        raise ValueError(f"one-hot labels must have shape (B, C), got {tuple(y.shape)}")
    return y.argmax(1)


def to_uint8_rgb(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images (B, 1|3, H, W) -> uint8 (B, 3, H, W) by EDM's generate.py quantisation
    (x * 127.5 + 128).clip(0, 255).to(uint8); grey is replicated to 3 channels (the input torch-fidelity wants)."""
    if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be a tensor of shape (B, 1 or 3, H, W), got {getattr(x, 'shape', type(x))}")
    u = (x.detach().float() * 127.5 + 128).clip(0, 255).to(torch.uint8)
    return u.expand(-1, 3, -1, -1).contiguous() if u.shape[1] == 1 else u


def from_uint8(u: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 single channel (B, 1, H, W) in [-1, 1]: the channel mean / 127.5 - 1."""
    if not torch.is_tensor(u) or u.dtype != torch.uint8 or u.ndim != 4 or u.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 images of shape (B, 1 or 3, H, W), got "
                         f"{getattr(u, 'dtype', type(u))} {tuple(getattr(u, 'shape', ()))}")
    return u.float().mean(1, keepdim=True) / 127.5 - 1.0
