"""Gaussian mixtures in R^d whose diffused densities are exact in closed form.

Under the variance-exploding forward process x_t = x0 + sigma * eps (paper eq. B.3), a mixture
p_0 = sum_k w_k N(mu_k, Sigma_k) diffuses to p_sigma = sum_k w_k N(mu_k, Sigma_k + sigma^2 I), because the
sum of independent Gaussians is Gaussian. Everything below follows from that:

* score      grad log p_sigma(x) = sum_k r_k(x) (Sigma_k + sigma^2 I)^{-1} (mu_k - x),
             with responsibilities r_k(x) = w_k N_k(x) / sum_j w_j N_j(x) (Bishop, PRML eq. 9.13);
* denoiser   D(x; sigma) = E[x0 | x_t = x] = sum_k r_k(x) (mu_k + Sigma_k (Sigma_k + sigma^2 I)^{-1} (x - mu_k))
             (Gaussian conditioning, PRML eq. 2.116), which equals x + sigma^2 * score (Tweedie; EDM eq. 3).

Each covariance is diagonalised once, Sigma_k = U_k diag(lambda_k) U_k^T, so Sigma_k + sigma^2 I has the same
eigenvectors and eigenvalues lambda_k + sigma^2: a per-sample sigma costs no extra factorisation.
All arithmetic is float64; results come back in the input's dtype.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from sim_core.registry import Registry

MIXTURES = Registry("toy mixture")
SPEC_KIND = "gaussian_mixture"


def _as_f64(name: str, value) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float64).detach().cpu().clone()
    if not torch.isfinite(t).all():
        raise ValueError(f"GaussianMixture: {name} must be finite")
    return t


class GaussianMixture:
    """p_0(x0) = sum_k w_k N(x0; mu_k, Sigma_k) with means (K, d), covs (K, d, d), weights (K,)."""

    def __init__(self, means, covs, weights, name: str = "custom"):
        means, covs, weights = _as_f64("means", means), _as_f64("covs", covs), _as_f64("weights", weights)
        if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] < 1:
            raise ValueError(f"GaussianMixture: means must have shape (K, d), got {tuple(means.shape)}")
        K, d = means.shape
        if tuple(covs.shape) != (K, d, d):
            raise ValueError(f"GaussianMixture: covs must have shape ({K}, {d}, {d}), got {tuple(covs.shape)}")
        if tuple(weights.shape) != (K,):
            raise ValueError(f"GaussianMixture: weights must have shape ({K},), got {tuple(weights.shape)}")
        if not (weights > 0).all() or abs(float(weights.sum()) - 1.0) > 1e-6:
            raise ValueError(f"GaussianMixture: weights must be positive and sum to 1, got sum {float(weights.sum())}")
        scale = covs.abs().amax(dim=(1, 2)).clamp_min(1e-300)
        if ((covs - covs.transpose(1, 2)).abs().amax(dim=(1, 2)) > 1e-9 * scale).any():
            raise ValueError("GaussianMixture: covs must be symmetric")
        covs = 0.5 * (covs + covs.transpose(1, 2))
        lam, U = torch.linalg.eigh(covs)
        if not (lam > 1e-12 * scale[:, None]).all():
            raise ValueError(f"GaussianMixture: covs must be positive definite "
                             f"(smallest eigenvalue {float(lam.min()):.3g})")
        self.means, self.covs, self.weights = means, covs, weights / weights.sum()
        self.eigvals, self.eigvecs = lam, U  # Sigma_k = U_k diag(lam_k) U_k^T
        self.name = str(name)

    @property
    def K(self) -> int:
        return self.means.shape[0]

    @property
    def d(self) -> int:
        return self.means.shape[1]

    # ----------------------------------------------------------------------------------------------- sampling
    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32):
        """Draw n samples x0 ~ p_0: k ~ Cat(w), x0 = mu_k + U_k diag(sqrt(lam_k)) z. Returns (x0, k)."""
        if int(n) != n or n < 0:
            raise ValueError(f"GaussianMixture.sample: n must be a non-negative integer, got {n}")
        n = int(n)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator) if n else \
            torch.zeros(0, dtype=torch.int64)
        z = torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        x = self.means[k] + torch.einsum("nde,ne->nd", self.eigvecs[k], self.eigvals[k].sqrt() * z)
        return x.to(dtype), k

    # --------------------------------------------------------------------------------------- closed forms
    def _prepare(self, x: torch.Tensor, sigma, who: str):
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise ValueError(f"GaussianMixture.{who}: x must be a floating-point tensor")
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"GaussianMixture.{who}: x must have shape (B, {self.d}), got {tuple(x.shape)}")
        s = torch.as_tensor(sigma, dtype=torch.float64).detach().to(x.device) if not torch.is_tensor(sigma) \
            else sigma.to(device=x.device, dtype=torch.float64)
        if s.ndim == 0:
            s = s.expand(x.shape[0])
        if tuple(s.shape) != (x.shape[0],):
            raise ValueError(f"GaussianMixture.{who}: sigma must be a scalar or of shape ({x.shape[0]},), "
                             f"got {tuple(s.shape)}")
        if not (torch.isfinite(s).all() and (s >= 0).all()):
            raise ValueError(f"GaussianMixture.{who}: sigma must be finite and >= 0")
        dev = x.device
        mu, lam, U = self.means.to(dev), self.eigvals.to(dev), self.eigvecs.to(dev)
        x64 = x.to(torch.float64)
        diff = x64[:, None, :] - mu[None]                        # (B, K, d)  x - mu_k
        y = torch.einsum("bkd,kde->bke", diff, U)                 # U_k^T (x - mu_k)
        var = lam[None] + (s * s)[:, None, None]                  # eigenvalues of Sigma_k + sigma^2 I
        log_norm = -0.5 * ((y * y / var).sum(-1) + var.log().sum(-1) + self.d * math.log(2 * math.pi))
        log_joint = self.weights.to(dev).log()[None] + log_norm  # log w_k N(x; mu_k, Sigma_k + sigma^2 I)
        return x64, s, y, var, U, mu, lam, log_joint

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """log p_sigma(x) = logsumexp_k [log w_k + log N(x; mu_k, Sigma_k + sigma^2 I)], shape (B,)."""
        *_, log_joint = self._prepare(x, sigma, "log_prob")
        return torch.logsumexp(log_joint, dim=1).to(x.dtype)

    def responsibilities(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """r_k(x) = p(k | x_t = x) under p_sigma (PRML eq. 9.13), shape (B, K)."""
        *_, log_joint = self._prepare(x, sigma, "responsibilities")
        return torch.softmax(log_joint, dim=1).to(x.dtype)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """grad_x log p_sigma(x) = -sum_k r_k (Sigma_k + sigma^2 I)^{-1} (x - mu_k), in closed form, shape (B, d)."""
        _, _, y, var, U, _, _, log_joint = self._prepare(x, sigma, "score")
        r = torch.softmax(log_joint, dim=1)
        comp = -torch.einsum("kde,bke->bkd", U, y / var)          # per-component score
        return (r[..., None] * comp).sum(1).to(x.dtype)

    def denoiser(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """D(x; sigma) = E[x0 | x_t = x] = sum_k r_k (mu_k + U_k diag(lam_k / (lam_k + sigma^2)) U_k^T (x - mu_k)).

        Algebraically x + sigma^2 * score (Tweedie); the posterior-mean form is used because it does not
        subtract two large numbers when sigma is large.
        """
        _, _, y, var, U, mu, lam, log_joint = self._prepare(x, sigma, "denoiser")
        r = torch.softmax(log_joint, dim=1)
        comp = mu[None] + torch.einsum("kde,bke->bkd", U, (lam[None] / var) * y)
        return (r[..., None] * comp).sum(1).to(x.dtype)

    def mean(self) -> torch.Tensor:
        """E[x0] = sum_k w_k mu_k (float64, shape (d,))."""
        return (self.weights[:, None] * self.means).sum(0)

    def cov(self) -> torch.Tensor:
        """Cov[x0] = sum_k w_k (Sigma_k + mu_k mu_k^T) - m m^T (law of total covariance; float64, (d, d))."""
        m = self.mean()
        second = (self.weights[:, None, None] * (self.covs + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        return second - torch.outer(m, m)

    def as_denoiser(self) -> "MixtureDenoiser":
        """The exact denoiser as a module with the project's interface D(x, sigma, cond=None)."""
        return MixtureDenoiser(self)

    # ------------------------------------------------------------------------------------- serialisation
    def spec(self) -> dict:
        """A JSON-serialisable description (plain lists), enough to rebuild the mixture with from_spec."""
        return {"kind": SPEC_KIND, "name": self.name, "means": self.means.tolist(), "covs": self.covs.tolist(),
                "weights": self.weights.tolist()}

    @classmethod
    def from_spec(cls, spec: dict) -> "GaussianMixture":
        if not isinstance(spec, dict) or spec.get("kind") != SPEC_KIND:
            raise ValueError(f"not a GaussianMixture spec (need a dict with kind={SPEC_KIND!r})")
        missing = [k for k in ("means", "covs", "weights") if k not in spec]
        if missing:
            raise ValueError(f"GaussianMixture spec lacks {', '.join(missing)}")
        return cls(spec["means"], spec["covs"], spec["weights"], name=spec.get("name", "custom"))

    def __repr__(self) -> str:
        return f"GaussianMixture(name={self.name!r}, K={self.K}, d={self.d})"


class MixtureDenoiser(nn.Module):
    """The mixture's exact E[x0 | x_t] as a module: forward(x, sigma, cond=None), sigma scalar or (B,).

    x may have any shape (B, ...) with prod(...) = d; it is flattened for the mixture and reshaped back.
    """

    def __init__(self, gmm: GaussianMixture):
        super().__init__()
        self.gmm = gmm

    def forward(self, x: torch.Tensor, sigma, cond=None, augment_labels=None) -> torch.Tensor:
        if cond is not None:
            raise ValueError("the mixture is unconditional: its denoiser takes no cond")
        flat = x.reshape(x.shape[0], -1)
        return self.gmm.denoiser(flat, sigma).reshape(x.shape)


# ------------------------------------------------------------------------------------------------ factories
@MIXTURES.register("ring")
def ring(K: int = 8, radius: float = 1.0, std: float = 0.08, d: int = 2) -> GaussianMixture:
    """K equal-weight isotropic modes N(mu_k, std^2 I) at mu_k = radius (cos 2 pi k/K, sin 2 pi k/K, 0, ...).

    Defaults: radius 1, std 0.08. Neighbouring modes are 2 radius sin(pi/K) = 0.77 apart, 9.6 std, so the
    99.9% Mahalanobis balls (3.7 std) are disjoint; the per-coordinate data std is sqrt(radius^2/2 + std^2)
    = 0.71 and the data lie in about [-1.25, 1.25], the scale EDM's sigma_data = 0.5 assumes.
    """
    if K < 1 or d < 2 or not radius > 0 or not std > 0:
        raise ValueError(f"ring: need K >= 1, d >= 2, radius > 0, std > 0; "
                         f"got K={K}, d={d}, radius={radius}, std={std}")
    angle = 2 * math.pi * torch.arange(K, dtype=torch.float64) / K
    means = torch.zeros(K, d, dtype=torch.float64)
    means[:, 0], means[:, 1] = radius * angle.cos(), radius * angle.sin()
    covs = (std ** 2) * torch.eye(d, dtype=torch.float64).expand(K, d, d)
    return GaussianMixture(means, covs, torch.full((K,), 1.0 / K, dtype=torch.float64), name="ring")


@MIXTURES.register("random_mixture")
def random_mixture(d: int = 16, K: int = 8, seed: int = 0, mean_std: float = 0.5,
                   std_range: tuple = (0.02, 0.2)) -> GaussianMixture:
    """A harder mixture: K anisotropic, randomly rotated modes with unequal weights, reproducible from seed.

    mu_k ~ N(0, mean_std^2 I); Sigma_k = Q_k diag(s_k^2) Q_k^T with Q_k a Haar-random rotation (QR of a Gaussian
    matrix, sign-fixed) and per-axis stds s_k log-uniform in std_range; w_k proportional to U(0.5, 1.5).
    With the defaults (d = 16) the modes are ~2.8 apart against stds <= 0.2 and each coordinate has std ~0.5.
    """
    lo, hi = (float(v) for v in std_range)
    if K < 1 or d < 1 or not mean_std > 0 or not 0 < lo <= hi:
        raise ValueError("random_mixture: need K >= 1, d >= 1, mean_std > 0, 0 < std_range[0] <= std_range[1]")
    g = torch.Generator().manual_seed(int(seed))
    means = mean_std * torch.randn(K, d, generator=g, dtype=torch.float64)
    A = torch.randn(K, d, d, generator=g, dtype=torch.float64)
    Q, R = torch.linalg.qr(A)
    Q = Q * torch.sign(torch.diagonal(R, dim1=1, dim2=2))[:, None, :]
    log_s = math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(K, d, generator=g, dtype=torch.float64)
    covs = torch.einsum("kij,kj,klj->kil", Q, (2 * log_s).exp(), Q)
    w = 0.5 + torch.rand(K, generator=g, dtype=torch.float64)
    return GaussianMixture(means, covs, w / w.sum(), name="random_mixture")


def by_name(name: str, **kw) -> GaussianMixture:
    """Build a named toy mixture ('ring', 'random_mixture'); an unknown name fails listing the valid ones."""
    return MIXTURES.build(name, **kw)
