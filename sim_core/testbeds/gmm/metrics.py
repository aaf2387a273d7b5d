"""Sample-quality metrics against a known Gaussian mixture: Fréchet distance, per-mode mass, NLL gap.

Mode assignment rule (used by mode_mass, off_mode_fraction, modes_covered, mode_mass_tv)
-----------------------------------------------------------------------------------------
A sample x is *near* component k when its squared Mahalanobis distance (x - mu_k)^T Sigma_k^{-1} (x - mu_k) is at
most chi2_d.ppf(quantile) (default quantile 0.999: a true draw from component k is near it with probability
0.999). Among the components it is near, x is assigned to the one with the largest true posterior
responsibility r_k(x) at sigma = 0; a sample near no component is *off-mode*. So a perfect generator puts
~0.1% of its samples off-mode, and mode_mass_k ~ 0.999 w_k.

* mode_mass[k]       fraction of all samples assigned to k;
* off_mode_fraction  1 - sum_k mode_mass[k];
* modes_covered      number of k with mode_mass[k] >= coverage_fraction * w_k (default 0.25);
* mode_mass_tv       total-variation distance between the (K+1)-bin histogram (mode_mass, off_mode_fraction)
                     and the target (w, 0): 0.5 (sum_k |mode_mass_k - w_k| + off_mode_fraction).

Likelihood metrics
------------------
With p the true density and q the generator's: nll = E_q[-log p(x)] = H(q, p) = KL(q || p) + H(q) (a cross-entropy,
estimated on the samples), and nll_gap = nll - H(p) = KL(q || p) + H(q) - H(p), where H(p) is a Monte Carlo
estimate on the mixture's own draws (fixed seed). nll_gap is 0 for a perfect generator but is NOT a divergence:
it is negative for a generator that concentrates on mode centres (low H(q)), and ~0 for one that drops whole modes
but reproduces the kept ones exactly (KL(q||p) = log(1/kept mass) is then cancelled by H(p) - H(q)). Read it with
the mode metrics, which are what make Diff-Instruct's mode collapse visible.
"""
from __future__ import annotations

import json

import numpy as np
import scipy.linalg
import scipy.stats
import torch

from sim_core.testbeds.gmm.mixture import GaussianMixture

_ENTROPY_CACHE: dict = {}


def _f64(name: str, a) -> np.ndarray:
    a = a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite values")
    return a


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})  (Fréchet/2-Wasserstein distance between Gaussians,
    Dowson & Landau 1982; the FID formula of Heusel et al. 2017), in float64 with scipy's sqrtm.

    If (S1 S2)^{1/2} is not finite, eps I is added to both covariances (as pytorch-fid does). Imaginary parts from
    round-off are dropped when they are below 1e-3 of the largest real diagonal entry; larger ones raise.
    """
    mu1, mu2 = np.atleast_1d(_f64("mu1", mu1)), np.atleast_1d(_f64("mu2", mu2))
    s1, s2 = np.atleast_2d(_f64("sigma1", sigma1)), np.atleast_2d(_f64("sigma2", sigma2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"frechet_distance: need means (d,) and covariances (d, d); got {mu1.shape}, {s1.shape}, "
                         f"{mu2.shape}, {s2.shape}")
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = eps * np.eye(d)
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        tol = 1e-3 * max(1.0, float(np.abs(covmean.real.diagonal()).max()))
        if np.abs(covmean.imag.diagonal()).max() > tol:
            raise ValueError(f"frechet_distance: sqrtm has imaginary part {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def mixture_entropy(gmm: GaussianMixture, n: int = 200_000, seed: int = 0) -> float:
    """H(p) = -E_p[log p(x)] by Monte Carlo on n draws (std error ~ std(log p) / sqrt(n)); cached per spec."""
    key = (json.dumps(gmm.spec(), sort_keys=True), int(n), int(seed))
    if key not in _ENTROPY_CACHE:
        x, _ = gmm.sample(n, torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
        _ENTROPY_CACHE[key] = float(-gmm.log_prob(x).mean())
    return _ENTROPY_CACHE[key]


def mode_assignment(x: torch.Tensor, gmm: GaussianMixture, quantile: float = 0.999) -> torch.Tensor:
    """Component index per sample by the rule in the module docstring; -1 for off-mode samples. Shape (N,)."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    x = x.to(torch.float64)
    y = torch.einsum("nkd,kde->nke", x[:, None, :] - gmm.means[None], gmm.eigvecs)
    maha2 = (y * y / gmm.eigvals[None]).sum(-1)                            # (N, K)
    near = maha2 <= float(scipy.stats.chi2.ppf(quantile, gmm.d))
    r = gmm.responsibilities(x, 0.0).masked_fill(~near, -1.0)
    best = r.argmax(1)
    return torch.where(near.any(1), best, torch.full_like(best, -1))


def gmm_metrics(samples, gmm: GaussianMixture, coverage_fraction: float = 0.25, quantile: float = 0.999,
                entropy_n: int = 200_000, entropy_seed: int = 0) -> dict:
    """fd, mode_mass, off_mode_fraction, modes_covered, mode_mass_tv, nll, nll_gap of samples (N, d) against gmm.

    fd is the Fréchet distance between the samples' mean/covariance and the mixture's analytic ones; see the
    module docstring for the other definitions.
    """
    x = torch.as_tensor(_f64("samples", samples))
    if x.ndim != 2 or x.shape[1] != gmm.d or x.shape[0] < 2:
        raise ValueError(f"samples must have shape (N >= 2, {gmm.d}), got {tuple(x.shape)}")
    n = x.shape[0]
    xn = x.numpy()
    fd = frechet_distance(xn.mean(0), np.atleast_2d(np.cov(xn, rowvar=False)), gmm.mean(), gmm.cov())
    k = mode_assignment(x, gmm, quantile)
    mass = torch.bincount(k[k >= 0], minlength=gmm.K).to(torch.float64) / n
    off = 1.0 - float(mass.sum())
    w = gmm.weights
    nll = float(-gmm.log_prob(x).mean())
    return {
        "fd": fd,
        "mode_mass": mass.tolist(),
        "off_mode_fraction": off,
        "modes_covered": int((mass >= coverage_fraction * w).sum()),
        "mode_mass_tv": 0.5 * (float((mass - w).abs().sum()) + off),
        "nll": nll,
        "nll_gap": nll - mixture_entropy(gmm, entropy_n, entropy_seed),
        "num_modes": gmm.K,
        "num_samples": n,
    }
