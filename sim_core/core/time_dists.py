"""Time (noise-level) distributions by name (paper Appendix B.2). Each draws sigma of shape (n,)."""
from __future__ import annotations

import math

from sim_core.lazy import torch  # imported at first use: validating a config needs no torch
from sim_core.registry import Registry

TIME_DISTRIBUTIONS = Registry("time distribution")


class TimeDistribution:
    name = ""

    def sample(self, n: int, generator: torch.Generator, dtype=None, device="cpu") -> torch.Tensor:
        raise NotImplementedError

    def params(self) -> dict:
        return {}


def _finite(name, **values):
    for k, v in values.items():
        if not math.isfinite(float(v)):
            raise ValueError(f"time distribution {name}: {k} must be finite, got {v}")


TRUNCATIONS = ("resample", "clamp")  # how a truncated log-normal treats draws outside its range


@TIME_DISTRIBUTIONS.register("lognormal")
class LogNormal(TimeDistribution):
    """t = exp(s), s ~ N(p_mean, p_std^2), optionally truncated to [t_min, t_max]: "resample" draws from the
    truncated normal (inverse CDF), "clamp" draws the full normal and clips t into the range, putting the mass
    outside it on the bounds."""
    name = "lognormal"

    def __init__(self, p_mean: float, p_std: float, t_min: float | None = None, t_max: float | None = None,
                 name: str = "lognormal", truncation: str = "resample"):
        self.name = name
        if truncation not in TRUNCATIONS:
            raise ValueError(f"time distribution {name}: truncation must be one of {', '.join(TRUNCATIONS)}, "
                             f"got {truncation!r}")
        self.truncation = truncation
        _finite(self.name, p_mean=p_mean, p_std=p_std)
        if not p_std > 0:
            raise ValueError(f"time distribution {self.name}: p_std must be > 0, got {p_std}")
        if (t_min is None) != (t_max is None):
            raise ValueError(f"time distribution {self.name}: give both t_min and t_max or neither")
        if t_min is not None and not 0 < t_min < t_max:
            raise ValueError(f"time distribution {self.name}: need 0 < t_min < t_max, got [{t_min}, {t_max}]")
        self.p_mean, self.p_std, self.t_min, self.t_max = float(p_mean), float(p_std), t_min, t_max

    def params(self):
        p = {"p_mean": self.p_mean, "p_std": self.p_std}
        if self.t_min is not None:
            p.update(t_min=self.t_min, t_max=self.t_max, truncation=self.truncation)
        return p

    def sample(self, n, generator, dtype=None, device="cpu"):
        if self.t_min is None or self.truncation == "clamp":
            s = self.p_mean + self.p_std * torch.randn(n, generator=generator, dtype=torch.float64)
            if self.t_min is not None:  # on the bounds exactly
                return s.exp().clamp(self.t_min, self.t_max).to(dtype=dtype or torch.float32, device=device)
        else:  # truncated normal on s by inverse CDF
            normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
            lo = normal.cdf(torch.tensor((math.log(self.t_min) - self.p_mean) / self.p_std, dtype=torch.float64))
            hi = normal.cdf(torch.tensor((math.log(self.t_max) - self.p_mean) / self.p_std, dtype=torch.float64))
            u = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
            s = self.p_mean + self.p_std * torch.special.ndtri(u)
            s = s.clamp(math.log(self.t_min), math.log(self.t_max))
        return s.exp().to(dtype=dtype or torch.float32, device=device)


@TIME_DISTRIBUTIONS.register("p_edm")
def p_edm() -> LogNormal:
    """p_EDM: s ~ N(-1.2, 1.2^2) (eq. B.5-B.6; EDM's P_mean, P_std). The online network's distribution."""
    return LogNormal(-1.2, 1.2, name="p_edm")


@TIME_DISTRIBUTIONS.register("p_sim")
def p_sim() -> LogNormal:
    """p_SIM: s ~ N(-3.5, 2.5^2) (eq. B.9-B.10). SIM's generator step on CIFAR-10; 'lognormal' in Figure 2."""
    return LogNormal(-3.5, 2.5, name="p_sim")


@TIME_DISTRIBUTIONS.register("t2i")
def t2i(truncation: str = "resample") -> LogNormal:
    """Text-to-image: s ~ N(-2, 2^2) truncated to t in [0.01, 156.6155] (Appendix B.3; the range is SIM's PixArt
    table, sim_core/testbeds/t2i/edm_pixart.py). How it is truncated the paper does not say: 9.6% of the normal lies
    below 0.01, which "clamp" puts on 0.01 and "resample" (the default) spreads over the range."""
    return LogNormal(-2.0, 2.0, t_min=0.01, t_max=156.6155, name="t2i", truncation=truncation)


class _Karras(TimeDistribution):
    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                 K: int = 1000, k_max: int = 800):
        _finite(self.name, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"time distribution {self.name}: need 0 < sigma_min < sigma_max")
        if not (rho > 0 and 1 < K and 0 <= k_max <= K - 1):
            raise ValueError(f"time distribution {self.name}: need rho > 0, K > 1, 0 <= k_max <= K-1")
        self.sigma_min, self.sigma_max, self.rho, self.K, self.k_max = sigma_min, sigma_max, rho, int(K), int(k_max)

    def params(self):
        return dict(sigma_min=self.sigma_min, sigma_max=self.sigma_max, rho=self.rho, K=self.K, k_max=self.k_max)

    def _sigma(self, frac: torch.Tensor) -> torch.Tensor:
        """(sigma_max^(1/rho) + frac (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
        a, b = self.sigma_max ** (1 / self.rho), self.sigma_min ** (1 / self.rho)
        return (a + frac * (b - a)) ** self.rho


@TIME_DISTRIBUTIONS.register("karr")
class KarrPaper(_Karras):
    """Karr as the paper writes it (eq. B.8): sigma_k on the K = 1000 Karras grid (k = 0 is sigma_max = 80),
    k ~ U{0, ..., 800}. This covers sigma in [0.084, 80]: the high-noise end of the grid."""
    name = "karr"

    def grid(self) -> torch.Tensor:
        from sim_core.core.edm import karras_sigmas
        return karras_sigmas(self.K, self.sigma_min, self.sigma_max, self.rho)

    def sample(self, n, generator, dtype=None, device="cpu"):
        k = torch.randint(0, self.k_max + 1, (n,), generator=generator)
        return self.grid()[k].to(dtype=dtype or torch.float32, device=device)


@TIME_DISTRIBUTIONS.register("karr_sid")
class KarrSiD(_Karras):
    """Karr as SiD's official code draws it (training/sid_loss.py): r ~ U[0, k_max/K] continuous and
    sigma = (sigma_max^(1/rho) + (1 - r)(sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, so sigma in [0.002, 24.4]:
    the low-noise end, unlike the paper's formula. Both are kept, under two names."""
    name = "karr_sid"

    def sample(self, n, generator, dtype=None, device="cpu"):
        r = torch.rand(n, generator=generator, dtype=torch.float64) * (self.k_max / self.K)
        return self._sigma(1 - r).to(dtype=dtype or torch.float32, device=device)


def build_time_distribution(name: str, **params) -> TimeDistribution:
    return TIME_DISTRIBUTIONS.build(name, **params)
