"""Building the toy assets: teachers trained with the EDM loss on the Gaussian mixture or the 8x8 digits.

Sizes and budgets were chosen from measurements on this 2-core CPU (../shared/ENVIRONMENT.md): a residual MLP
of 256 hidden units and 3 blocks reaches recognisable digits after 3000 iterations at batch 256 (~2 min);
128 units and 3 blocks cover every mode of the 8-mode ring after 4000 iterations at batch 512 (~1.5 min).
"""
from __future__ import annotations

import torch

from .nets import ResidualMLP
from .teacher import save_teacher, train_edm_teacher

TEACHER_DEFAULTS = {
    "gmm": dict(hidden=128, blocks=3, iterations=4000, batch_size=512, lr=1e-3),
    "digits": dict(hidden=256, blocks=3, iterations=3000, batch_size=256, lr=1e-3),
}


def gmm_sampler(gmm):
    def sample(n, rng):
        return gmm.sample(n, rng)[0].float(), None
    return sample


def digits_sampler(images: torch.Tensor, labels: torch.Tensor, conditional: bool):
    def sample(n, rng):
        idx = torch.randint(0, images.shape[0], (n,), generator=rng)
        onehot = torch.nn.functional.one_hot(labels[idx], 10).float() if conditional else None
        return images[idx], onehot
    return sample


def build_toy_teacher(kind: str, out, conditional: bool = False, mixture: str = "ring", mixture_kwargs=None,
                      seed: int = 0, progress: bool = False, **overrides) -> dict:
    """Train a toy teacher and write it atomically to ``out``; returns its training facts and checksum."""
    if kind not in TEACHER_DEFAULTS:
        raise ValueError(f"unknown testbed {kind!r}; valid names: {', '.join(sorted(TEACHER_DEFAULTS))}")
    bad = set(overrides) - set(TEACHER_DEFAULTS[kind])
    if bad:
        raise ValueError(f"unknown teacher setting(s) {sorted(bad)}; valid: {sorted(TEACHER_DEFAULTS[kind])}")
    hp = {**TEACHER_DEFAULTS[kind], **overrides}
    if kind == "gmm":
        if conditional:
            raise ValueError("the gmm testbed is unconditional")
        from .toy.gmm import by_name
        gmm = by_name(mixture, **(mixture_kwargs or {}))
        data_shape, label_dim, sampler, spec = (gmm.d,), 0, gmm_sampler(gmm), gmm.spec()
    else:
        from .toy.digits import load_digits_split
        images, labels = load_digits_split("train")
        data_shape, label_dim = tuple(images.shape[1:]), 10 if conditional else 0
        sampler, spec = digits_sampler(images, labels, conditional), {"split": "train"}
    torch.manual_seed(seed)
    net = ResidualMLP(data_shape, hidden=hp["hidden"], blocks=hp["blocks"], label_dim=label_dim)
    D, info = train_edm_teacher(net, sampler, label_dim, hp["iterations"], hp["batch_size"], lr=hp["lr"],
                                seed=seed, progress=progress)
    info.update(hidden=hp["hidden"], blocks=hp["blocks"], conditional=conditional)
    info["sha256"] = save_teacher(out, D, kind, data_shape, spec, info)
    return info
