"""The online-network (psi-step) loss and the shared machinery of every generator (theta-step) loss.

All losses are per sample, shape (B,), summed over C*H*W; the loop averages over the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

from .lazy import edm, torch  # imported at first use: validating a config needs no torch

from .time_dists import TimeDistribution
from .weightings import get_weighting


def edm_denoising_loss(D, x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor, weight: torch.Tensor,
                       class_labels=None, augment_labels=None) -> torch.Tensor:
    """lambda(t) ||D(x0 + t eps; t) - x0||^2 per sample (EDM loss, eq. B.2 / Algorithm 2's psi-step).

    For the online network x0 must be the *detached* generator sample; for a teacher it is data. With
    augmentation, x0 is the augmented sample and ``augment_labels`` tell the network which transform it got.
    """
    x_t = edm.add_noise(x0, sigma, eps)
    D_x = D(x_t, sigma, class_labels) if augment_labels is None else D(x_t, sigma, class_labels, augment_labels)
    return weight * (D_x - x0).pow(2).reshape(x0.shape[0], -1).sum(1)


class OnlineLoss:
    """psi-step: denoising score matching of D_psi on sg(g_theta(z)), t ~ p_EDM, weight lambda_EDM (Table 5)."""

    def __init__(self, time_dist: TimeDistribution, weighting: str = "lambda_edm"):
        self.time_dist = time_dist
        self.weighting_name = weighting
        self.weighting = get_weighting(weighting)

    def draw(self, n: int, shape, rng: torch.Generator, dtype=None, device="cpu"):
        """t ~ p(t) and eps ~ N(0, I) for n samples (a data-parallel run draws the global batch and shards it)."""
        sigma = self.time_dist.sample(n, rng, dtype=dtype, device=device)
        eps = torch.randn((n, *shape), generator=rng, dtype=dtype).to(device)
        return sigma, eps

    def loss(self, D_fake, x0: torch.Tensor, class_labels, sigma: torch.Tensor, eps: torch.Tensor,
             augment=None) -> torch.Tensor:
        """``augment``: None, or (AugmentPipe, its drawn parameters for these samples). SiD and DI augment the
        generated images of this step with EDM's AugmentPipe (REFERENCE-CODE.md §2.2, §3)."""
        x0, augment_labels = x0.detach(), None
        if augment is not None:
            pipe, params = augment
            x0, augment_labels = pipe.apply(x0, params)
        weight = edm.sigma_view(self.weighting(sigma), x0).flatten()
        return edm_denoising_loss(D_fake, x0, sigma, eps, weight, class_labels, augment_labels)

    def __call__(self, D_fake, x0: torch.Tensor, class_labels, rng: torch.Generator) -> torch.Tensor:
        sigma, eps = self.draw(x0.shape[0], x0.shape[1:], rng, x0.dtype, x0.device)
        return self.loss(D_fake, x0, class_labels, sigma, eps)


@dataclass
class GeneratorDraw:
    """One draw of the theta-step's noise: t and eps for x_t = x0 + t eps."""
    sigma: torch.Tensor
    eps: torch.Tensor

    @property
    def x_t_of(self):
        return lambda x0: edm.add_noise(x0, self.sigma, self.eps)

    def __getitem__(self, part: slice) -> "GeneratorDraw":
        return GeneratorDraw(self.sigma[part], self.eps[part])


class GeneratorLoss:
    """Base of the theta-step losses (SIM, SiD, DI): a time distribution and a weighting by name.

    ``__call__(x0, class_labels, D_teacher, D_fake, rng)`` returns the per-sample loss whose gradient in theta
    is the method's generator update; D_teacher and D_fake have frozen parameters but are differentiable in x.
    """

    def __init__(self, time_dist: TimeDistribution, weighting: str):
        self.time_dist = time_dist
        self.weighting_name = weighting
        self.weighting = get_weighting(weighting)

    def draw_for(self, n: int, shape, rng: torch.Generator, dtype=None, device="cpu") -> GeneratorDraw:
        sigma = self.time_dist.sample(n, rng, dtype=dtype, device=device)
        eps = torch.randn((n, *shape), generator=rng, dtype=dtype).to(device)
        return GeneratorDraw(sigma, eps)

    def draw(self, x0: torch.Tensor, rng: torch.Generator) -> GeneratorDraw:
        return self.draw_for(x0.shape[0], x0.shape[1:], rng, x0.dtype, x0.device)

    def loss(self, x0, class_labels, D_teacher, D_fake, draw: GeneratorDraw) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x0, class_labels, D_teacher, D_fake, rng: torch.Generator) -> torch.Tensor:
        return self.loss(x0, class_labels, D_teacher, D_fake, self.draw(x0, rng))

    def describe(self) -> dict:
        return {"time_dist": self.time_dist.name, "weighting": self.weighting_name}


def per_sample_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a^T b per sample over all of C*H*W."""
    return (a * b).reshape(a.shape[0], -1).sum(1)
