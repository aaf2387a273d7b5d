"""The digits testbed at run time: the teacher, FID/KID/IS in the classifier's features, sample grids."""
from __future__ import annotations

import torch

from sim_core.testbeds.base import Testbed, net_dtype_device, save_image_grid
from sim_core.testbeds.edm_teacher import build_mlp_teacher, load_for

# Measured on a 2-core CPU: a residual MLP of 256 hidden units and 3 blocks reaches recognisable digits after 3000
# iterations at batch 256 (~2 min).
TEACHER_DEFAULTS = dict(hidden=256, blocks=3, iterations=3000, batch_size=256, lr=1e-3)


class DigitsTestbed(Testbed):
    data_range = (-1.0, 1.0)

    def __init__(self, D_teacher, meta, classifier: str | None):
        super().__init__(D_teacher, meta)
        self.classifier = classifier
        if classifier is not None:
            from sim_core.testbeds.digits.classifier import load_classifier
            load_classifier(classifier)  # fail now, before training, on a missing or corrupt file

    def metrics(self, x, cond, eval_cfg):
        if self.classifier is None:
            return {}
        from sim_core.testbeds.digits.fidelity import digits_fidelity
        # Reference: the train split the teacher learned from (as CIFAR-10 FID uses the training images).
        return digits_fidelity(x.clamp(-1, 1), self.classifier, real="train", kid_subsets=eval_cfg.kid_subsets)

    def save_samples(self, G, path, seed):
        n = 100
        rng = torch.Generator().manual_seed(seed)
        dtype, device = net_dtype_device(G)
        z = G.sample_z(n, self.data_shape, rng, dtype, device)
        labels = None
        if self.label_dim:  # one row per class
            labels = torch.nn.functional.one_hot(torch.arange(n) // (n // self.label_dim) % self.label_dim,
                                                 self.label_dim).to(dtype=dtype, device=device)
        with torch.no_grad():
            x = G(z, labels).float().cpu()
        save_image_grid((x.clamp(-1, 1) + 1) / 2, path, nrow=10, scale=4)


def load(cfg) -> DigitsTestbed:
    return DigitsTestbed(*load_for(cfg), cfg.classifier)


def build_teacher(out, conditional: bool = False, seed: int = 0, progress: bool = False, **overrides) -> dict:
    """Train a digits teacher on the train split (TEACHER_DEFAULTS, some replaced by ``overrides``)."""
    from sim_core.testbeds.digits.data import load_digits_split
    images, labels = load_digits_split("train")

    def sample(n, rng):
        idx = torch.randint(0, images.shape[0], (n,), generator=rng)
        onehot = torch.nn.functional.one_hot(labels[idx], 10).float() if conditional else None
        return images[idx], onehot
    return build_mlp_teacher("digits", out, tuple(images.shape[1:]), 10 if conditional else 0, sample,
                             {"split": "train"}, TEACHER_DEFAULTS, seed=seed, progress=progress,
                             conditional=conditional, **overrides)


def build_classifier(out, seed: int = 0, **_) -> dict:
    """Train the digits CNN whose features FID/KID/IS use, and write it to ``out``."""
    from sim_core.testbeds.digits.classifier import save_classifier, train_classifier
    model, acc = train_classifier(seed=seed)
    save_classifier(model, str(out), test_accuracy=acc)
    return {"test_accuracy": acc}
