"""The CIFAR-10 testbed at run time: NVIDIA's teacher, Inception FID/IS by the reference protocols, sample grids."""
from __future__ import annotations

import torch

from sim_core.errors import CheckpointError
from sim_core.testbeds.base import Testbed, save_image_grid


class CIFAR10Testbed(Testbed):
    """CIFAR-10 with NVIDIA's EDM teacher (paper scale): FID and Inception Score in Inception-v3 features
    (torch-fidelity's weights, a local file) against EDM's reference statistics, 50k samples quantised as the reference
    code; conditional labels as SiD draws them. During training: one trial (SiD's fid50k_full, generated covariance /
    N); at the end: a named protocol (sim_core/testbeds/cifar10/image_metrics.py: EDM's min of 3 seed ranges or SiD's
    mean ± std of 10)."""
    data_range = (-1.0, 1.0)

    def __init__(self, D_teacher, meta, tb_cfg):
        super().__init__(D_teacher, meta)
        from sim_core.testbeds.cifar10.image_metrics import load_reference_stats
        for key in ("inception", "fid_ref"):
            if getattr(tb_cfg, key) is None:
                raise CheckpointError(f"testbed.{key} is required for the cifar10 testbed "
                                      "(sim_core/testbeds/cifar10/assets.py lists its files)")
        self.cfg = tb_cfg
        self.ref = load_reference_stats(tb_cfg.fid_ref)  # fail now, before training, on a bad file
        self._features = {}
        self.label_dist = None
        if self.label_dim:
            from sim_core.testbeds.cifar10.data import build_label_distribution, load_cifar10
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
        from sim_core.testbeds.cifar10.inception import INCEPTION_SHA256, InceptionFeatures
        key = str(device)
        if key not in self._features:
            sha = self.cfg.inception_sha256 or INCEPTION_SHA256
            self._features = {key: InceptionFeatures(self.cfg.inception, sha256=sha, device=device)}  # one at a time
        return self._features[key]

    def draw_cond(self, n, rng, dtype=torch.float32, device="cpu"):
        if self.label_dist is None:
            return None
        return self.label_dist.sample(n, rng).to(dtype=dtype, device=device)

    @torch.no_grad()
    def _images(self, sample, seeds, batch_size: int, device) -> torch.Tensor:
        """uint8 images, one per seed (its own noise and label, as EDM's generate.py --seeds), from
        ``sample(z_or_latents, labels)`` in batches."""
        from sim_core.testbeds.cifar10.inception import quantize
        out = []
        for start in range(0, len(seeds), batch_size):
            zs, labels = [], []
            for seed in seeds[start:start + batch_size]:
                g = torch.Generator().manual_seed(int(seed))
                zs.append(torch.randn(self.data_shape, generator=g))
                if self.label_dim:
                    labels.append(self.draw_cond(1, g)[0])
            lab = torch.stack(labels).to(device) if labels else None
            out.append(quantize(sample(torch.stack(zs).to(device), lab)).cpu())
        return torch.cat(out)

    def _one_trial(self, sample, n: int, seed0: int, eval_cfg, device) -> dict:
        from sim_core.testbeds.cifar10.image_metrics import SID_DDOF, FeatureStats, fid_from_stats, inception_score
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
        from sim_core.testbeds.cifar10.image_metrics import evaluate_fid_protocol
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
        from sim_core.core.sampler import heun_sampler
        if protocol is None:
            raise ValueError("the cifar10 testbed's teacher rows need a FID protocol (edm or sid)")
        D = self.D_teacher.to(device)
        return self._protocol(lambda z, lab: heun_sampler(D, z, lab, num_steps=(nfe + 1) // 2), eval_cfg,
                              protocol, device)

    def metrics(self, x, cond, eval_cfg):
        from sim_core.testbeds.cifar10.image_metrics import SID_DDOF, FeatureStats, fid_from_stats, inception_score
        from sim_core.testbeds.cifar10.inception import quantize
        pool, logits = self.features("cpu").features(quantize(x))
        stats = FeatureStats()
        stats.update(pool)
        mu, sigma = stats.mean_cov(ddof=SID_DDOF)
        isc, isc_std = inception_score(logits, splits=min(10, len(logits)))
        return {"fid": fid_from_stats(mu, sigma, *self.ref), "isc": isc, "isc_std": isc_std}

    def save_samples(self, G, path, seed):
        device = next(G.parameters()).device
        x = self._images(lambda z, lab: G(z * G.t_star, lab), list(range(seed, seed + 100)), 100, device)
        save_image_grid(x.float() / 255, path, nrow=10)


def load(cfg) -> CIFAR10Testbed:
    """NVIDIA's pickle (checked: checksum, conditioning) and the evaluation files, before any training."""
    from sim_core.testbeds.cifar10.edm_pickle import load_edm_pickle
    D, meta = load_edm_pickle(cfg.teacher, expect_label_dim=10 if cfg.conditional else 0, sha256=cfg.teacher_sha256)
    return CIFAR10Testbed(D, meta, cfg)
