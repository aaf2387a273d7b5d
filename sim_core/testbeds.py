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
             device="cpu", dtype=torch.float32, label_fn=None):
    """n samples of a one-step generator with fixed noise (seeded independently of training).
    ``label_fn(n, rng, dtype, device)`` draws the class labels (default: uniform)."""
    rng = torch.Generator().manual_seed(seed)
    label_fn = label_fn or (lambda b, g, dt, dev: random_labels(b, label_dim, g, dt, dev))
    out, labels_all = [], []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        z = G.sample_z(b, data_shape, rng, dtype, device)
        labels = label_fn(b, rng, dtype, device)
        out.append(G(z, labels).cpu())
        labels_all.append(labels.cpu() if labels is not None else None)
    return torch.cat(out), (torch.cat(labels_all) if label_dim else None)


class Testbed:
    kind = ""

    def __init__(self, D_teacher, meta: dict):
        self.D_teacher, self.meta = D_teacher, meta
        self.data_shape = tuple(meta["data_shape"])
        self.label_dim = int(meta["label_dim"])

    def sample_labels(self, n: int, rng: torch.Generator, dtype=torch.float32, device="cpu"):
        """Class labels of a batch, one-hot (n, label_dim), or None: uniform classes unless the testbed says
        otherwise (CIFAR-10: labels of random training images, as SiD/DI)."""
        return random_labels(n, self.label_dim, rng, dtype, device)

    def final_metrics(self, G, eval_cfg, seeds, protocol=None, device="cpu") -> dict:
        """The final evaluation of a generator: the mean of each metric over independent noise draws (one per
        seed) and its standard deviation over them (key_std_seeds). CIFAR-10 uses a FID protocol instead."""
        results = []
        for seed in seeds:
            ecfg = eval_cfg.model_copy(update={"seed": int(seed)})
            results.append(self.evaluator(ecfg, torch.device(device), torch.float32)(G, -1))
        return _mean_over_draws(results)

    def teacher_metrics(self, nfe: int, seed: int, eval_cfg, protocol=None, device="cpu") -> dict:
        """The teacher's own EDM Heun sampler at ``nfe`` evaluations, evaluated as the generators are."""
        from .sampler import heun_sampler
        g = torch.Generator().manual_seed(10_000 + seed)
        latents = torch.randn((eval_cfg.num_samples, *self.data_shape), generator=g)
        labels = None
        if self.label_dim:
            labels = torch.nn.functional.one_hot(torch.randint(0, self.label_dim, (eval_cfg.num_samples,),
                                                               generator=g), self.label_dim).float()
        x = heun_sampler(self.D_teacher, latents, labels, num_steps=(nfe + 1) // 2)
        return self.metrics(x, labels, eval_cfg)

    def evaluator(self, eval_cfg, device, dtype):
        def evaluate(G, step):
            x, labels = generate(G, eval_cfg.num_samples, self.data_shape, self.label_dim, eval_cfg.seed,
                                 eval_cfg.batch_size, device, dtype, label_fn=self.sample_labels)
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


def _mean_over_draws(results: list) -> dict:
    import statistics
    out = {}
    for k in results[0]:
        vals = [r[k] for r in results]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[k] = statistics.fmean(vals)
            if len(vals) > 1:
                out[f"{k}_std_seeds"] = statistics.stdev(vals)
    return out


class CIFAR10Testbed(Testbed):
    """CIFAR-10 with NVIDIA's EDM teacher (paper scale): FID and Inception Score in Inception-v3 features
    (torch-fidelity's weights, a local file) against EDM's reference statistics, 50k samples quantised as the
    reference code; conditional labels as SiD draws them. During training: one trial (SiD's fid50k_full,
    generated covariance / N); at the end: a named protocol (sim_core/image_metrics.py: EDM's min of 3 seed
    ranges or SiD's mean ± std of 10)."""
    kind = "cifar10"

    def __init__(self, D_teacher, meta, tb_cfg):
        super().__init__(D_teacher, meta)
        from .image_metrics import load_reference_stats
        for key in ("inception", "fid_ref"):
            if getattr(tb_cfg, key) is None:
                raise CheckpointError(f"testbed.{key} is required for the cifar10 testbed (sim_core/assets.py)")
        self.cfg = tb_cfg
        self.ref = load_reference_stats(tb_cfg.fid_ref)  # fail now, before training, on a bad file
        self._features = {}
        self.label_dist = None
        if self.label_dim:
            from .cifar10 import build_label_distribution, load_cifar10
            train_labels = None
            if tb_cfg.labels == "training_images":
                if tb_cfg.dataset is None:
                    raise CheckpointError("testbed.dataset (CIFAR-10) is needed to draw the labels of training "
                                          "images; or set testbed.labels: uniform")
                train_labels = load_cifar10(tb_cfg.dataset, "train")[1]
            self.label_dist = build_label_distribution(tb_cfg.labels, labels=train_labels,
                                                       num_classes=self.label_dim)
        self.features("cpu")  # checks the Inception weights (checksum, format) before training

    def features(self, device):
        from .inception import INCEPTION_SHA256, InceptionFeatures
        key = str(device)
        if key not in self._features:
            sha = self.cfg.inception_sha256 or INCEPTION_SHA256
            self._features = {key: InceptionFeatures(self.cfg.inception, sha256=sha, device=device)}  # one at a time
        return self._features[key]

    def sample_labels(self, n, rng, dtype=torch.float32, device="cpu"):
        if self.label_dist is None:
            return None
        return self.label_dist.sample(n, rng).to(dtype=dtype, device=device)

    @torch.no_grad()
    def _images(self, sample, seeds, batch_size: int, device) -> torch.Tensor:
        """uint8 images, one per seed (its own noise and label, as EDM's generate.py --seeds), from
        ``sample(z_or_latents, labels)`` in batches."""
        from .inception import quantize
        out = []
        for start in range(0, len(seeds), batch_size):
            zs, labels = [], []
            for seed in seeds[start:start + batch_size]:
                g = torch.Generator().manual_seed(int(seed))
                zs.append(torch.randn(self.data_shape, generator=g))
                if self.label_dim:
                    labels.append(self.sample_labels(1, g)[0])
            lab = torch.stack(labels).to(device) if labels else None
            out.append(quantize(sample(torch.stack(zs).to(device), lab)).cpu())
        return torch.cat(out)

    def _one_trial(self, sample, n: int, seed0: int, eval_cfg, device) -> dict:
        from .image_metrics import SID_DDOF, FeatureStats, fid_from_stats, inception_score
        stats, logits = FeatureStats(), []
        for start in range(0, n, eval_cfg.batch_size):
            seeds = list(range(seed0 + start, seed0 + min(start + eval_cfg.batch_size, n)))
            pool, logit = self.features(device).features(self._images(sample, seeds, len(seeds), device))
            stats.update(pool)
            logits.append(logit)
        mu, sigma = stats.mean_cov(ddof=SID_DDOF)  # SiD's in-training fid50k_full divides by N
        logits = torch.cat(logits)
        isc, isc_std = inception_score(logits, splits=min(10, len(logits)))  # 10 splits (SiD/DI)
        return {"fid": fid_from_stats(mu, sigma, *self.ref), "isc": isc, "isc_std": isc_std}

    def evaluator(self, eval_cfg, device, dtype):
        def evaluate(G, step):
            return self._one_trial(lambda z, lab: G(z.to(dtype) * G.t_star, lab), eval_cfg.num_samples,
                                   eval_cfg.seed, eval_cfg, device)
        return evaluate

    def _protocol(self, sample, eval_cfg, protocol, device) -> dict:
        from .image_metrics import evaluate_fid_protocol
        r = evaluate_fid_protocol(protocol, lambda seeds: self._images(sample, seeds, eval_cfg.batch_size, device),
                                  self.features(device), self.ref, num_samples=eval_cfg.num_samples,
                                  batch_size=eval_cfg.batch_size, is_splits=min(10, eval_cfg.num_samples))
        out = {"fid": r["value"], "fid_spread": r["spread"], "fid_trials": len(r["trials"])}
        out.update({k: v for k, v in r.items() if k.startswith("is") and isinstance(v, (int, float))})
        return out

    def final_metrics(self, G, eval_cfg, seeds, protocol=None, device="cpu"):
        if protocol is None:
            raise ValueError("the cifar10 testbed's final evaluation needs a FID protocol (edm or sid)")
        return self._protocol(lambda z, lab: G(z * G.t_star, lab), eval_cfg, protocol, device)

    def teacher_metrics(self, nfe, seed, eval_cfg, protocol=None, device="cpu"):
        from .sampler import heun_sampler
        if protocol is None:
            raise ValueError("the cifar10 testbed's teacher rows need a FID protocol (edm or sid)")
        D = self.D_teacher.to(device)
        return self._protocol(lambda z, lab: heun_sampler(D, z, lab, num_steps=(nfe + 1) // 2), eval_cfg,
                              protocol, device)

    def metrics(self, x, labels, eval_cfg):
        from .image_metrics import SID_DDOF, FeatureStats, fid_from_stats, inception_score
        from .inception import quantize
        pool, logits = self.features("cpu").features(quantize(x))
        stats = FeatureStats()
        stats.update(pool)
        mu, sigma = stats.mean_cov(ddof=SID_DDOF)
        isc, isc_std = inception_score(logits, splits=min(10, len(logits)))
        return {"fid": fid_from_stats(mu, sigma, *self.ref), "isc": isc, "isc_std": isc_std}

    def save_samples(self, G, path, seed):
        from torchvision.utils import save_image
        device = next(G.parameters()).device
        x = self._images(lambda z, lab: G(z * G.t_star, lab), list(range(seed, seed + 100)), 100, device)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).with_suffix(".tmp.png")
        save_image(x.float() / 255, tmp, nrow=10, padding=2)
        tmp.replace(path)


def load_testbed(tb_cfg) -> Testbed:
    """Load and check a testbed from the config's ``testbed`` section; fails with one line on any mismatch."""
    if tb_cfg.kind == "cifar10":
        from .edm_pickle import load_edm_pickle
        D, meta = load_edm_pickle(tb_cfg.teacher, expect_label_dim=10 if tb_cfg.conditional else 0,
                                  sha256=tb_cfg.teacher_sha256)
        return CIFAR10Testbed(D, meta, tb_cfg)
    D, meta = load_teacher(tb_cfg.teacher, sha256=tb_cfg.teacher_sha256, expect_testbed=tb_cfg.kind)
    if tb_cfg.conditional and meta["label_dim"] == 0:
        raise CheckpointError(f"testbed.conditional is true but teacher {tb_cfg.teacher} is unconditional")
    if not tb_cfg.conditional and meta["label_dim"] > 0:
        raise CheckpointError(f"teacher {tb_cfg.teacher} is conditional ({meta['label_dim']} classes); "
                              "set testbed.conditional: true")
    if tb_cfg.kind == "gmm":
        return GMMTestbed(D, meta)
    return DigitsTestbed(D, meta, tb_cfg.classifier)
