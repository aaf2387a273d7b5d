"""FID and Inception Score of image generators by the community's reporting protocols (CIFAR-10, paper scale).

FID (Heusel et al. 2017) = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}), computed as EDM fid.py does: feature
moments accumulated in float64, scipy.linalg.sqrtm, real part. Two details differ between the reference codes
(docs/reference-code.md#fid-and-is-protocols) and are explicit parameters here:

* covariance normalisation of the generated features: EDM fid.py divides by N - 1 (``sigma /= N - 1``); SiD and DI
  in-training metrics (metrics/*_metric_utils.py FeatureStats.get_mean_cov, from StyleGAN2-ADA) divide by N. The
  reference side is EDM's cifar10-32x32.npz (N - 1) for both EDM and SiD (`--data_stat`).
* reporting: EDM computes FID on 3 disjoint seed ranges and reports the minimum (EDM paper, Table 2 note; fid.py
  usage with generate.py --seeds); SiD runs 10 independent 50k trials and reports mean +- std (sid_metrics.py).

Inception Score (Salimans et al. 2016): softmax of the bias-free logits, 10 contiguous splits, exp(E_x KL(p(y|x) ||
p(y))) per split, mean and (population) std over the splits, as SiD/DI metrics/*_inception_score.py and
torch-fidelity's metric_isc.py.
"""
from __future__ import annotations

import io
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import scipy.linalg
import torch

from sim_core.errors import CheckpointError
from sim_core.files import atomic_write_bytes, check_file, sha256_file
from sim_core.registry import Registry
from sim_core.testbeds.cifar10.inception import POOL3_DIM, check_images_uint8

# docs/reference-code.md#nvidias-edm-checkpoints
EDM_REF_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz"
EDM_DDOF = 1   # EDM fid.py: sigma /= len(dataset_obj) - 1 (generated and reference statistics)
SID_DDOF = 0   # SiD/DI metrics/*_metric_utils.py FeatureStats.get_mean_cov: cov = raw_cov / num_items - mu mu^T
IS_SPLITS = 10  # is50k: num_splits=10 (SiD/DI metric_main.py; torch-fidelity isc_splits default)


def _as_f64(a) -> np.ndarray:
    a = a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)
    return a.astype(np.float64, copy=False)


# ---------------------------------------------------------------------------------------------- statistics
class FeatureStats:
    """Streaming first and second moments of features in float64: sum, sum of outer products, count.

    The same accumulation as EDM fid.py (``mu += f.sum(0); sigma += f.T @ f``) and SiD/DI FeatureStats
    (``raw_mean``, ``raw_cov``); :meth:`mean_cov` chooses the normalisation.
    """

    def __init__(self, dim: Optional[int] = None):
        self.dim, self.count, self.sum, self.sum_outer = None, 0, None, None
        if dim is not None:
            self._allocate(int(dim))

    def _allocate(self, dim: int) -> None:
        self.dim = dim
        self.sum = np.zeros(dim, np.float64)
        self.sum_outer = np.zeros((dim, dim), np.float64)

    def update(self, features) -> "FeatureStats":
        f = _as_f64(features)
        if f.ndim != 2 or (self.dim is not None and f.shape[1] != self.dim):
            want = f"(N, {self.dim})" if self.dim is not None else "(N, D)"
            raise ValueError(f"FeatureStats.update: features must have shape {want}, got {f.shape}")
        if not np.isfinite(f).all():
            raise ValueError(f"FeatureStats.update: features of shape {f.shape} contain NaN or inf")
        if self.dim is None:
            self._allocate(f.shape[1])
        self.sum += f.sum(axis=0)
        self.sum_outer += f.T @ f
        self.count += f.shape[0]
        return self

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Add another accumulator's totals (e.g. from another process), as EDM's all_reduce of mu and sigma."""
        if other.count == 0:
            return self
        if self.dim is None:
            self._allocate(other.dim)
        if other.dim != self.dim:
            raise ValueError(f"FeatureStats.merge: feature dims differ ({self.dim} vs {other.dim})")
        self.sum += other.sum
        self.sum_outer += other.sum_outer
        self.count += other.count
        return self

    def mean_cov(self, ddof: int) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) with sigma = (sum_outer - N mu mu^T) / (N - ddof).

        ddof=1 (EDM_DDOF): EDM fid.py, generated and reference statistics. ddof=0 (SID_DDOF): SiD/DI in-training
        metrics for the generated side.
        """
        if ddof not in (0, 1):
            raise ValueError(f"ddof must be 0 (divide by N: SiD/DI) or 1 (N - 1: EDM), got {ddof}")
        if self.count < 2:
            raise ValueError(f"FeatureStats: need at least 2 feature vectors, have {self.count}")
        n = self.count
        mu = self.sum / n
        sigma = (self.sum_outer - n * np.outer(mu, mu)) / (n - ddof)
        return mu, sigma


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr sqrtm(S1 S2) for symmetric PSD S1, S2 through two symmetric eigendecompositions: with R = S1^(1/2),
    S1 S2 = R (R S2) has the eigenvalues of (R S2) R = R S2 R (symmetric PSD), so the trace is the sum of the
    square roots of eigvalsh(R S2 R). ~20x faster than a Schur-based sqrtm at 2048 dimensions (~1 s, not ~20 s)."""
    w, V = np.linalg.eigh(s1)
    R = (V * np.sqrt(np.clip(w, 0.0, None))) @ V.T
    lam = np.linalg.eigvalsh(R @ s2 @ R)
    return float(np.sqrt(np.clip(lam, 0.0, None)).sum())


def fid_from_stats(mu1, sigma1, mu2, sigma2, method: str = "eigh") -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)) in float64 (EDM fid.py calculate_fid_from_inception_stats;
    the same formula as SiD's sid_frechet_inception_distance.py).

    ``method="sqrtm"`` computes it as the reference code does (scipy.linalg.sqrtm of the product, real part);
    the default ``"eigh"`` computes the same trace from symmetric eigendecompositions (the covariances are
    symmetric PSD), equal to it to ~1e-9 relative (tests/test_image_metrics.py) and ~20x faster at 2048-d, which
    matters for SiD's 10-trial protocol and evaluations every 100 kimg."""
    mu1, mu2 = _as_f64(mu1), _as_f64(mu2)
    s1, s2 = _as_f64(sigma1), _as_f64(sigma2)
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if d < 1 or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"fid_from_stats: need means (d,) and covariances (d, d); got {mu1.shape}, {s1.shape}, "
                         f"{mu2.shape}, {s2.shape}")
    for name, a in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise ValueError(f"fid_from_stats: {name} contains NaN or inf")
    m = np.square(mu1 - mu2).sum()
    if method == "sqrtm":
        s = scipy.linalg.sqrtm(s1 @ s2)
        return float(np.real(m + np.trace(s1 + s2 - 2.0 * s)))
    if method != "eigh":
        raise ValueError(f"fid_from_stats: unknown method {method!r}; valid: eigh, sqrtm")
    return float(m + np.trace(s1) + np.trace(s2) - 2.0 * _trace_sqrt_product(s1, s2))


# ----------------------------------------------------------------------------------- reference statistics
def save_reference_stats(path, mu, sigma) -> str:
    """Write (mu, sigma) atomically in EDM's fid-refs format (np.savez keys 'mu', 'sigma'); returns the SHA-256."""
    buf = io.BytesIO()
    np.savez(buf, mu=_as_f64(mu), sigma=_as_f64(sigma))
    atomic_write_bytes(path, buf.getvalue())
    return sha256_file(path)


def load_reference_stats(path, sha256: Optional[str] = None, dim: int = POOL3_DIM) -> tuple[np.ndarray, np.ndarray]:
    """(mu (dim,), sigma (dim, dim)) float64 from an EDM fid-refs .npz (e.g. cifar10-32x32.npz).

    Every problem (missing file, checksum, not an npz, missing key, shape, non-finite or asymmetric sigma) is one
    CheckpointError line naming the file, raised before any sampling starts.
    """
    path = Path(path)
    what = "FID reference statistics"
    check_file(path, what, sha256, f"for CIFAR-10 download {EDM_REF_URL} (or write one with save_reference_stats)")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            for key in ("mu", "sigma"):
                if key in keys:
                    arrays[key] = np.asarray(npz[key])
    except Exception as e:  # truncated zip, not a zip, a pickled object array
        first = " ".join(str(e).split())[:200] or type(e).__name__
        raise CheckpointError(f"{what} {path} is corrupt or not an .npz file ({first})") from None
    for key in ("mu", "sigma"):
        if key not in arrays:
            raise CheckpointError(f"{what} {path} has no key {key!r} (keys: {', '.join(keys) or 'none'}); "
                                  f"expected EDM's format with 'mu' and 'sigma'")
    mu, sigma = arrays["mu"], arrays["sigma"]
    for key, a, shape in (("mu", mu, (dim,)), ("sigma", sigma, (dim, dim))):
        if a.shape != shape:
            raise CheckpointError(f"{what} {path}: {key!r} has shape {a.shape}, expected {shape}")
        if not np.issubdtype(a.dtype, np.floating):
            raise CheckpointError(f"{what} {path}: {key!r} has dtype {a.dtype}, expected floating point")
        if not np.isfinite(a).all():
            raise CheckpointError(f"{what} {path}: {key!r} contains NaN or inf")
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    asym = float(np.abs(sigma - sigma.T).max())
    if asym > 1e-6 * max(1.0, float(np.abs(sigma).max())):
        raise CheckpointError(f"{what} {path}: 'sigma' is not symmetric (max |S - S^T| = {asym:.3g})")
    return mu, sigma


# -------------------------------------------------------------------------------------------- Inception Score
def inception_score(logits, splits: int = IS_SPLITS, shuffle_seed: Optional[int] = None) -> tuple[float, float]:
    """(mean, std) over ``splits`` contiguous parts of exp(E_x KL(p(y|x) || p(y))), p = softmax(logits) in float64.

    Parts are ``[i N // splits, (i + 1) N // splits)`` and std is the population std (np.std), as SiD/DI
    metrics/*_inception_score.py and torch-fidelity's isc_features_to_metric. The reference metrics split in sample
    order (no shuffle, the default here); ``shuffle_seed`` permutes first with np.random.RandomState(seed), which
    is torch-fidelity's default (samples_shuffle=True, rng_seed=2020).
    """
    x = torch.as_tensor(_as_f64(logits))
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"inception_score: logits must have shape (N, C >= 2), got {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= int(splits) <= n:
        raise ValueError(f"inception_score: need 1 <= splits <= N, got splits={splits}, N={n}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("inception_score: logits contain NaN or inf")
    if shuffle_seed is not None:
        x = x[torch.as_tensor(np.random.RandomState(shuffle_seed).permutation(n))]
    p, log_p = x.softmax(dim=1), x.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        p_y = p[lo:hi].mean(dim=0, keepdim=True)
        kl = (p[lo:hi] * (log_p[lo:hi] - p_y.log())).sum(dim=1).mean()
        scores.append(math.exp(float(kl)))
    return float(np.mean(scores)), float(np.std(scores))


# ------------------------------------------------------------------------------------------ reporting protocols
@dataclass(frozen=True)
class FIDProtocol:
    """How a paper turns FID trials into one table number.

    Trial k uses the seeds ``[k N, (k + 1) N)`` (N = samples per trial), one image per seed, so each trial is
    reproducible and the trials are disjoint.
    """
    name: str
    title: str            # how a table cell names it
    num_trials: int
    reduce: str           # "min" (spread = max - min) or "mean_std" (spread = sample std, ddof 1)
    gen_ddof: int         # covariance normalisation of the generated features
    source: str           # where the protocol comes from

    def seeds(self, trial: int, num_samples: int) -> list[int]:
        if not 0 <= trial < self.num_trials:
            raise ValueError(f"{self.name} protocol has trials 0..{self.num_trials - 1}, not {trial}")
        return list(range(trial * num_samples, (trial + 1) * num_samples))

    def reduce_trials(self, values: Sequence[float]) -> tuple[float, float]:
        vals = [float(v) for v in values]
        if len(vals) != self.num_trials:
            raise ValueError(f"{self.name} protocol needs {self.num_trials} trial values, got {len(vals)}")
        if self.reduce == "min":
            return min(vals), max(vals) - min(vals)
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    @property
    def spread_kind(self) -> str:
        return "range (max - min)" if self.reduce == "min" else "std (ddof 1)"

    def cell(self, value: float, spread: float, digits: int = 2) -> str:
        if self.reduce == "min":
            return f"{value:.{digits}f} (min of {self.num_trials}, {self.title})"
        return f"{value:.{digits}f} ± {spread:.{digits}f} (mean ± std of {self.num_trials}, {self.title})"


FID_PROTOCOLS = Registry("FID protocol")
# EDM (Karras et al. 2022): FID of seeds 0-49999, 50000-99999, 100000-149999, minimum reported (EDM README /
# fid.py usage; NVlabs/edm#16); covariances / (N - 1) (fid.py).
FID_PROTOCOLS.register("edm", FIDProtocol(
    name="edm", title="EDM protocol", num_trials=3, reduce="min", gen_ddof=EDM_DDOF,
    source="EDM fid.py + generate.py --seeds 0-49999/50000-99999/100000-149999, min of 3"))
# SiD (Zhou et al. 2024): sid_metrics.py repeats fid50k_full 10 times, mean and std reported; generated covariance
# / N (metric_utils FeatureStats). SiD draws each trial's noise from an unseeded RNG; here the trials are disjoint
# seed ranges, which are equally independent and reproducible. The std's ddof is not in the code ([unverified]);
# ddof 1 (sample std, as sim_core/train/evaluate.py) is used.
FID_PROTOCOLS.register("sid", FIDProtocol(
    name="sid", title="SiD protocol", num_trials=10, reduce="mean_std", gen_ddof=SID_DDOF,
    source="SiD sid_metrics.py: 10 independent fid50k_full trials, mean ± std"))


def get_protocol(protocol) -> FIDProtocol:
    """A protocol by name ('edm', 'sid'), or the object itself; unknown names list the valid ones."""
    return protocol if isinstance(protocol, FIDProtocol) else FID_PROTOCOLS.get(protocol)


def _extractor(features) -> Callable:
    """``features`` is an InceptionFeatures-like object (``.features(images, batch_size)``) or a plain callable
    ``images_uint8 -> (pool, logits)``."""
    if hasattr(features, "features"):
        return features.features
    if callable(features):
        return lambda images, batch_size: features(images)
    raise ValueError(f"features must be an InceptionFeatures or a callable images -> (pool, logits), "
                     f"got {type(features).__name__}")


def _check_ref(ref_stats) -> tuple[np.ndarray, np.ndarray]:
    try:
        mu, sigma = ref_stats
    except (TypeError, ValueError):
        raise ValueError("ref_stats must be a (mu, sigma) pair, e.g. from load_reference_stats") from None
    mu, sigma = _as_f64(mu), _as_f64(sigma)
    d = mu.shape[0] if mu.ndim == 1 else -1
    if d < 1 or sigma.shape != (d, d):
        raise ValueError(f"ref_stats: need mu (d,) and sigma (d, d), got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError("ref_stats contain NaN or inf")
    return mu, sigma


def evaluate_fid_protocol(protocol, sample_fn: Callable[[list], torch.Tensor], features, ref_stats,
                          num_samples: int = 50000, batch_size: int = 250, is_splits: int = IS_SPLITS,
                          log: Optional[Callable[[str], None]] = None) -> dict:
    """Run every FID trial of a protocol and reduce them into the number a table reports.

    sample_fn(seeds) -> uint8 images (len(seeds), 3, H, W), one image per seed (the caller draws the noise, and
    labels for conditional models, from each seed). features: InceptionFeatures, or a callable
    images -> (pool (N, d), logits (N, C)) (tests use a tiny one). ref_stats: (mu, sigma), e.g.
    load_reference_stats(...). The Inception Score is that of the first trial's images (10 splits).

    Returns dict(protocol, trials, value, spread, spread_kind, cell, inception_score, inception_score_std, is_cell,
    num_samples, num_trials, trial_seeds [(first, last)], gen_cov_ddof, feature_dim, source).
    """
    proto = get_protocol(protocol)
    num_samples, batch_size = int(num_samples), int(batch_size)
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 (a covariance needs two samples), got {num_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 1 <= int(is_splits) <= num_samples:
        raise ValueError(f"is_splits must lie in [1, num_samples={num_samples}], got {is_splits}")
    mu_ref, sigma_ref = _check_ref(ref_stats)
    extract = _extractor(features)
    dim = mu_ref.shape[0]

    trials, logits_first, trial_seeds = [], [], []
    for trial in range(proto.num_trials):
        seeds = proto.seeds(trial, num_samples)
        trial_seeds.append((seeds[0], seeds[-1]))
        stats = FeatureStats(dim)
        for lo in range(0, num_samples, batch_size):
            chunk = seeds[lo:lo + batch_size]
            images = check_images_uint8(sample_fn(chunk), "sample_fn output")
            if images.shape[0] != len(chunk):
                raise ValueError(f"sample_fn returned {images.shape[0]} images for {len(chunk)} seeds; it must "
                                 f"return one image per seed")
            pool, logits = extract(images, batch_size)
            if tuple(pool.shape) != (len(chunk), dim):
                raise ValueError(f"features gave shape {tuple(pool.shape)} for {len(chunk)} images; the reference "
                                 f"statistics have dimension {dim}")
            stats.update(pool)
            if trial == 0:
                logits_first.append(torch.as_tensor(logits).to(torch.float32).cpu())  # float32: Inception's dtype
        mu, sigma = stats.mean_cov(proto.gen_ddof)
        fid = fid_from_stats(mu, sigma, mu_ref, sigma_ref)
        trials.append(fid)
        if log is not None:
            log(f"{proto.name} FID trial {trial + 1}/{proto.num_trials} (seeds {seeds[0]}-{seeds[-1]}): {fid:.4f}")
    value, spread = proto.reduce_trials(trials)
    is_mean, is_std = inception_score(torch.cat(logits_first), splits=is_splits)
    return dict(protocol=proto.name, trials=trials, value=value, spread=spread, spread_kind=proto.spread_kind,
                cell=proto.cell(value, spread), inception_score=is_mean, inception_score_std=is_std,
                is_cell=f"{is_mean:.2f} ± {is_std:.2f} ({is_splits} splits of trial 1)",
                num_samples=num_samples, num_trials=proto.num_trials, trial_seeds=trial_seeds,
                gen_cov_ddof=proto.gen_ddof, feature_dim=dim, source=proto.source)
