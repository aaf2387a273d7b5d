"""Toy testbeds that ship with the project: a teacher, its data, its evaluation and its sample pictures.

- ``gmm``: a Gaussian mixture with exact diffused score; metrics against the true mixture.
- ``digits``: scikit-learn's 8x8 digits in [-1, 1]; FID/KID/IS in a small CNN classifier's features.
Paper-scale testbeds (CIFAR-10) provide the same attributes and methods.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import CheckpointError, atomic_savefig
from .generator import random_labels
from .teacher import load_teacher


@torch.no_grad()
def generate(G, n: int, data_shape, label_dim: int, seed: int, batch_size: int = 1000,
             device="cpu", dtype=torch.float32):
    """n samples of a one-step generator with fixed noise (seeded independently of training)."""
    rng = torch.Generator().manual_seed(seed)
    out, labels_all = [], []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        z = G.sample_z(b, data_shape, rng, dtype, device)
        labels = random_labels(b, label_dim, rng, dtype, device)
        out.append(G(z, labels).cpu())
        labels_all.append(labels.cpu() if labels is not None else None)
    return torch.cat(out), (torch.cat(labels_all) if label_dim else None)


class Testbed:
    kind = ""

    def __init__(self, D_teacher, meta: dict):
        self.D_teacher, self.meta = D_teacher, meta
        self.data_shape = tuple(meta["data_shape"])
        self.label_dim = int(meta["label_dim"])

    def evaluator(self, eval_cfg, device, dtype):
        def evaluate(G, step):
            x, labels = generate(G, eval_cfg.num_samples, self.data_shape, self.label_dim, eval_cfg.seed,
                                 eval_cfg.batch_size, device, dtype)
            return self.metrics(x, labels, eval_cfg)
        return evaluate

    def metrics(self, x: torch.Tensor, labels, eval_cfg) -> dict:
        raise NotImplementedError

    def save_samples(self, G, path, seed: int) -> None:
        raise NotImplementedError


class GMMTestbed(Testbed):
    kind = "gmm"

    def __init__(self, D_teacher, meta):
        super().__init__(D_teacher, meta)
        from .toy.gmm import GaussianMixture
        self.gmm = GaussianMixture.from_spec(meta["testbed_spec"])

    def metrics(self, x, labels, eval_cfg):
        from .toy.metrics import gmm_metrics
        m = gmm_metrics(x.double(), self.gmm)
        return {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in m.items()}

    def save_samples(self, G, path, seed):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        x, _ = generate(G, 2000, self.data_shape, 0, seed)
        real, _ = self.gmm.sample(2000, torch.Generator().manual_seed(seed))
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        ax.scatter(real[:, 0], real[:, 1], s=2, alpha=0.3, c="tab:gray", label="true mixture")
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, c="tab:blue", label="generator (EMA)")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=7, markerscale=4)
        ax.set_title(Path(path).stem, fontsize=8)
        atomic_savefig(fig, path)
        plt.close(fig)


class DigitsTestbed(Testbed):
    kind = "digits"

    def __init__(self, D_teacher, meta, classifier: str | None):
        super().__init__(D_teacher, meta)
        self.classifier = classifier
        if classifier is not None:
            from .toy.classifier import load_classifier
            load_classifier(classifier)  # fail now, before training, on a missing or corrupt file

    def metrics(self, x, labels, eval_cfg):
        if self.classifier is None:
            return {}
        from .toy.fidelity import digits_fidelity
        # Reference: the train split the teacher learned from (as CIFAR-10 FID uses the training images).
        return digits_fidelity(x.clamp(-1, 1), self.classifier, real="train", kid_subsets=eval_cfg.kid_subsets)

    def save_samples(self, G, path, seed):
        from torchvision.utils import save_image
        n = 100
        rng = torch.Generator().manual_seed(seed)
        z = G.sample_z(n, self.data_shape, rng)
        labels = None
        if self.label_dim:  # one row per class
            labels = torch.nn.functional.one_hot(torch.arange(n) // (n // self.label_dim) % self.label_dim,
                                                 self.label_dim).float()
        with torch.no_grad():
            x = G(z, labels)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).with_suffix(".tmp.png")
        x = torch.nn.functional.interpolate((x.clamp(-1, 1) + 1) / 2, scale_factor=4, mode="nearest")
        save_image(x, tmp, nrow=10, padding=2)
        tmp.replace(path)


def load_testbed(tb_cfg) -> Testbed:
    """Load and check a testbed from the config's ``testbed`` section; fails with one line on any mismatch."""
    D, meta = load_teacher(tb_cfg.teacher, sha256=tb_cfg.teacher_sha256, expect_testbed=tb_cfg.kind)
    if tb_cfg.conditional and meta["label_dim"] == 0:
        raise CheckpointError(f"testbed.conditional is true but teacher {tb_cfg.teacher} is unconditional")
    if not tb_cfg.conditional and meta["label_dim"] > 0:
        raise CheckpointError(f"teacher {tb_cfg.teacher} is conditional ({meta['label_dim']} classes); "
                              "set testbed.conditional: true")
    if tb_cfg.kind == "gmm":
        return GMMTestbed(D, meta)
    return DigitsTestbed(D, meta, tb_cfg.classifier)
