"""The distance functions d of the paper's Table 4, each with its derivative d'(y).

d acts on a per-sample difference y of shape (B, ...) and returns shape (B,); d' returns y's shape.
Norms are over all of C*H*W of a sample (paper Section 3.3).

Theorem 3.1 differentiates E[d'(y(x_t))^T u(x_t)] through x_t by the chain rule, so it needs d' to be
(weakly) differentiable with an integrable derivative. L2, alpha-power (alpha > 1), Huber and pseudo-Huber
(c > 0) satisfy that. Two cases do not, and choosing them warns:
- L1: d'(y) = sign(y) jumps at y = 0. Autograd differentiates sign() as 0 everywhere and so drops the
  delta-function term where a coordinate of y changes sign; the SIM surrogate's gradient is then biased
  (tests/test_theorem31.py measures how much).
- exp-powered with alpha > 2: E exp(beta ||y||_alpha^alpha) is infinite under Gaussian tails of y, so the
  divergence itself is not finite and no gradient identity can hold.
"""
from __future__ import annotations

import warnings

from sim_core.lazy import torch  # imported at first use: validating a config needs no torch
from sim_core.registry import Registry

DISTANCES = Registry("distance")


def _flat(y: torch.Tensor) -> torch.Tensor:
    return y.reshape(y.shape[0], -1)


def _signed_pow(y: torch.Tensor, p: float) -> torch.Tensor:
    """sign(y) |y|^p, the elementwise 'y^(alpha-1)' of Table 4 that keeps the sign."""
    return y.sign() * y.abs().pow(p)


class Distance:
    name = ""
    regularity_warning: str | None = None  # why Theorem 3.1 does not hold for this distance, if it does not

    def d(self, y: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B,)
        raise NotImplementedError

    def grad(self, y: torch.Tensor) -> torch.Tensor:  # d'(y), same shape as y
        raise NotImplementedError

    def params(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.params().items())})"


def _positive(name: str, value: float, what: str) -> float:
    value = float(value)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"distance {name}: {what} must be a positive finite number, got {value}")
    return value


@DISTANCES.register("l2")
class L2(Distance):
    """d(y) = ||y||_2^2, d'(y) = 2y. Recovers SiD with alpha = 1 (Table 4, row 1)."""
    name = "l2"

    def d(self, y):
        return _flat(y).pow(2).sum(1)

    def grad(self, y):
        return 2 * y


@DISTANCES.register("alpha_power")
class AlphaPower(Distance):
    """d(y) = ||y||_alpha^alpha = sum |y_i|^alpha, d'(y) = alpha sign(y)|y|^(alpha-1), alpha > 1 (Table 4, row 2)."""
    name = "alpha_power"

    def __init__(self, alpha: float = 1.5):
        self.alpha = _positive(self.name, alpha, "alpha")
        if self.alpha <= 1:
            raise ValueError(f"distance alpha_power: alpha must be > 1 (Table 4), got {self.alpha}")

    def params(self):
        return {"alpha": self.alpha}

    def d(self, y):
        return _flat(y).abs().pow(self.alpha).sum(1)

    def grad(self, y):
        return self.alpha * _signed_pow(y, self.alpha - 1)


@DISTANCES.register("exp_power")
class ExpPower(Distance):
    """d(y) = exp(beta ||y||_alpha^alpha) - 1, d'(y) = alpha beta exp(beta ||y||_alpha^alpha) sign(y)|y|^(alpha-1)
    (Table 4, row 3)."""
    name = "exp_power"

    def __init__(self, alpha: float = 2.0, beta: float = 0.1):
        self.alpha = _positive(self.name, alpha, "alpha")
        self.beta = _positive(self.name, beta, "beta")
        if self.alpha <= 1:
            raise ValueError(f"distance exp_power: alpha must be > 1, got {self.alpha}")
        if self.alpha > 2:
            self.regularity_warning = (
                f"exp_power with alpha={self.alpha} > 2: E exp(beta ||y||^alpha) is infinite under Gaussian "
                "tails, so the divergence is not finite and Theorem 3.1's gradient identity does not hold")

    def params(self):
        return {"alpha": self.alpha, "beta": self.beta}

    def d(self, y):
        return torch.expm1(self.beta * _flat(y).abs().pow(self.alpha).sum(1))

    def grad(self, y):
        norm_a = _flat(y).abs().pow(self.alpha).sum(1)
        scale = (self.alpha * self.beta * torch.exp(self.beta * norm_a)).reshape(-1, *([1] * (y.ndim - 1)))
        return scale * _signed_pow(y, self.alpha - 1)


@DISTANCES.register("l1")
class L1(Distance):
    """d(y) = ||y||_1, d'(y) = sign(y) (Table 4, row 4). Breaks Theorem 3.1's regularity (see module doc)."""
    name = "l1"
    regularity_warning = (
        "l1: d'(y) = sign(y) is discontinuous at 0; the chain rule through x_t inside d' misses the jump "
        "terms, so the SIM surrogate gradient is biased (Theorem 3.1 needs a differentiable d')")

    def d(self, y):
        return _flat(y).abs().sum(1)

    def grad(self, y):
        return y.sign()


@DISTANCES.register("huber")
class Huber(Distance):
    """Elementwise Huber L_delta summed over coordinates: y^2/2 if |y| <= delta else delta(|y| - delta/2).
    d'(y) = clamp(y, -delta, delta) (Table 4, row 5; the paper prints the cases' inequality reversed)."""
    name = "huber"

    def __init__(self, delta: float = 1.0):
        self.delta = _positive(self.name, delta, "delta")

    def params(self):
        return {"delta": self.delta}

    def d(self, y):
        a = _flat(y).abs()
        return torch.where(a <= self.delta, 0.5 * a ** 2, self.delta * (a - 0.5 * self.delta)).sum(1)

    def grad(self, y):
        return y.clamp(-self.delta, self.delta)


@DISTANCES.register("pseudo_huber")
class PseudoHuber(Distance):
    """d(y) = sqrt(||y||_2^2 + c^2) - c, d'(y) = y / sqrt(||y||_2^2 + c^2) (Table 4, row 6; SIM's default).

    The paper does not state c; the authors answered c = 0.001 in maple-research-lab/SIM issue #5.
    """
    name = "pseudo_huber"

    def __init__(self, c: float = 1e-3):
        self.c = _positive(self.name, c, "c")

    def params(self):
        return {"c": self.c}

    def d(self, y):
        return (_flat(y).pow(2).sum(1) + self.c ** 2).sqrt() - self.c

    def grad(self, y):
        norm = (_flat(y).pow(2).sum(1) + self.c ** 2).sqrt()
        return y / norm.reshape(-1, *([1] * (y.ndim - 1)))


def build_distance(name: str, warn: bool = True, **params) -> Distance:
    """Build a distance by name; warns when the distance breaks Theorem 3.1's conditions."""
    dist = DISTANCES.build(name, **params)
    if warn and dist.regularity_warning:
        warnings.warn(dist.regularity_warning, RuntimeWarning, stacklevel=2)
    return dist
