"""The psi-step loss (the online network D_psi) and what every theta-step (generator) loss shares.

All losses are per sample, shape (B,), summed over C*H*W; the loop averages over the batch. ``cond`` is the
conditioning drawn with the batch (class labels, text embeddings, ...): the losses hand it to the networks
unopened.
"""
from __future__ import annotations

from dataclasses import dataclass

from sim_core.core.time_dists import TimeDistribution
from sim_core.core.weightings import get_weighting
from sim_core.lazy import edm, torch  # imported at first use: validating a config needs no torch


@dataclass
class NoiseDraw:
    """One draw of a step's noise for n samples: t ~ p(t) and eps ~ N(0, I), so that x_t = x0 + t eps (eq. B.3).
    A data-parallel run draws the global batch and slices it (``draw[part]``)."""
    sigma: torch.Tensor
    eps: torch.Tensor

    @classmethod
    def sample(cls, time_dist: TimeDistribution, n: int, shape, rng: torch.Generator, dtype=None,
               device="cpu") -> "NoiseDraw":
        sigma = time_dist.sample(n, rng, dtype=dtype, device=device)
        eps = torch.randn((n, *shape), generator=rng, dtype=dtype).to(device)
        return cls(sigma, eps)

    def x_t(self, x0: torch.Tensor) -> torch.Tensor:
        return edm.add_noise(x0, self.sigma, self.eps)

    def __getitem__(self, part: slice) -> "NoiseDraw":
        return NoiseDraw(self.sigma[part], self.eps[part])


class StepLoss:
    """A time distribution and a weighting by name: what both steps' losses are built from."""

    def __init__(self, time_dist: TimeDistribution, weighting: str):
        self.time_dist = time_dist
        self.weighting_name = weighting
        self.weighting = get_weighting(weighting)

    def draw(self, n: int, shape, rng: torch.Generator, dtype=None, device="cpu") -> NoiseDraw:
        return NoiseDraw.sample(self.time_dist, n, shape, rng, dtype, device)

    def describe(self) -> dict:
        return {"time_dist": self.time_dist.name, "weighting": self.weighting_name}


def edm_denoising_loss(D, x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor, weight: torch.Tensor,
                       cond=None, augment_labels=None) -> torch.Tensor:
    """lambda(t) ||D(x0 + t eps; t) - x0||^2 per sample (EDM loss, eq. B.2 / Algorithm 2's psi-step).

    For the online network x0 must be the *detached* generator sample; for a teacher it is data. With
    augmentation, x0 is the augmented sample and ``augment_labels`` tell the network which transform it got.
    """
    x_t = edm.add_noise(x0, sigma, eps)
    D_x = D(x_t, sigma, cond) if augment_labels is None else D(x_t, sigma, cond, augment_labels)
    return weight * (D_x - x0).pow(2).reshape(x0.shape[0], -1).sum(1)


class PsiLoss(StepLoss):
    """psi-step: denoising score matching of D_psi on sg(g_theta(z)), t ~ p_EDM, weight lambda_EDM (Table 5)."""

    def __init__(self, time_dist: TimeDistribution, weighting: str = "lambda_edm"):
        super().__init__(time_dist, weighting)

    def loss(self, D_psi, x0: torch.Tensor, cond, draw: NoiseDraw, augment=None) -> torch.Tensor:
        """``augment``: None, or (AugmentPipe, its drawn parameters for these samples). SiD and DI augment the
        generated images of this step with EDM's AugmentPipe
        (docs/reference-code.md#sids-fake-score-loss-and-augmentation)."""
        x0, augment_labels = x0.detach(), None
        if augment is not None:
            pipe, params = augment
            x0, augment_labels = pipe.apply(x0, params)
        weight = edm.sigma_view(self.weighting(draw.sigma), x0).flatten()
        return edm_denoising_loss(D_psi, x0, draw.sigma, draw.eps, weight, cond, augment_labels)

    def __call__(self, D_psi, x0: torch.Tensor, cond, rng: torch.Generator) -> torch.Tensor:
        return self.loss(D_psi, x0, cond, self.draw(x0.shape[0], x0.shape[1:], rng, x0.dtype, x0.device))


class GeneratorLoss(StepLoss):
    """Base of the theta-step losses (SIM, SiD, DI).

    ``loss(x0, cond, D_teacher, D_psi, draw)`` is the per-sample loss whose gradient in theta is the method's
    generator update; D_teacher and D_psi have frozen parameters but are differentiable in x.
    """

    def loss(self, x0, cond, D_teacher, D_psi, draw: NoiseDraw) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x0, cond, D_teacher, D_psi, rng: torch.Generator) -> torch.Tensor:
        return self.loss(x0, cond, D_teacher, D_psi, self.draw(x0.shape[0], x0.shape[1:], rng, x0.dtype, x0.device))


def per_sample_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a^T b per sample over all of C*H*W."""
    return (a * b).reshape(a.shape[0], -1).sum(1)
