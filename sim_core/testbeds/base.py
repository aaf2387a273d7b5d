"""The runtime side of a testbed: its teacher, how a batch's conditioning is drawn, its evaluation and its sample
pictures. Each testbed's ``testbed.py`` subclasses :class:`Testbed`; the loop uses only what is defined here."""
from __future__ import annotations

import statistics
from pathlib import Path

import torch


def uniform_labels(n: int, label_dim: int, rng: torch.Generator, dtype=torch.float32, device="cpu"):
    """Uniform one-hot class labels (n, label_dim), or None for an unconditional testbed."""
    if label_dim == 0:
        return None
    idx = torch.randint(0, label_dim, (n,), generator=rng)
    return torch.nn.functional.one_hot(idx, label_dim).to(dtype=dtype, device=device)


def net_dtype_device(net: torch.nn.Module):
    """The dtype and device of a network's parameters (what its inputs must have)."""
    p = next(net.parameters())
    return p.dtype, p.device


@torch.no_grad()
def generate(G, n: int, data_shape, seed: int, batch_size: int = 1000, device="cpu", dtype=torch.float32,
             draw_cond=None):
    """n samples of a one-step generator with fixed noise (seeded independently of training) and the conditioning
    of each batch (a list; None when unconditional). ``draw_cond(n, rng, dtype, device)`` draws it."""
    rng = torch.Generator().manual_seed(seed)
    out, conds = [], []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        z = G.sample_z(b, data_shape, rng, dtype, device)
        cond = draw_cond(b, rng, dtype, device) if draw_cond is not None else None
        out.append(G(z, cond).cpu())
        conds.append(cond)
    return torch.cat(out), (None if all(c is None for c in conds) else conds)


def mean_over_draws(results: list) -> dict:
    """The mean of each scalar metric over independent draws, and its standard deviation as <key>_std_seeds."""
    out = {}
    for k in results[0]:
        vals = [r[k] for r in results]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[k] = statistics.fmean(vals)
            if len(vals) > 1:
                out[f"{k}_std_seeds"] = statistics.stdev(vals)
    return out


def collapse_reason(x: torch.Tensor, data_range=None) -> str | None:
    """Why a generator's samples (N, ...) are degenerate, or None: values that are not finite, most values far
    outside the data's range (a saturated generator, whose clamped images all look alike), or samples that do not
    vary. Such a generator can still get a finite FID, which must not be mistaken for a result."""
    flat = x.reshape(x.shape[0], -1).double()
    finite = torch.isfinite(flat)
    if not bool(finite.all()):
        return f"non-finite: {1 - finite.double().mean().item():.0%} of the sample values are not finite"
    if data_range is not None:
        lo, hi = data_range
        margin = 0.1 * (hi - lo)
        outside = ((flat < lo - margin) | (flat > hi + margin)).double().mean().item()
        if outside > 0.5:
            return f"saturated: {outside:.0%} of the sample values lie outside [{lo:g}, {hi:g}] by more than {margin:g}"
    spread, scale = flat.std(0).mean().item(), flat.abs().mean().item()
    if spread <= 1e-3 * max(scale, 1e-3):
        return f"constant: the samples do not vary (mean std across samples {spread:.2g})"
    return None


class Testbed:
    """A loaded testbed: ``D_teacher`` (the EDM denoiser whose score the losses use), ``D_init`` (the network the
    generator and D_psi start from: the teacher's own, which differs from D_teacher only under guidance),
    ``data_shape``, ``label_dim`` and ``meta``."""

    data_range = None  # (low, high) where the data is bounded (images in [-1, 1]); None: unbounded

    def __init__(self, D_teacher, meta: dict, D_init=None):
        self.D_teacher, self.meta = D_teacher, meta
        self.D_init = D_teacher if D_init is None else D_init
        self.data_shape = tuple(meta["data_shape"])
        self.label_dim = int(meta["label_dim"])

    def draw_cond(self, n: int, rng: torch.Generator, dtype=torch.float32, device="cpu"):
        """The conditioning of n samples, drawn from ``rng`` (the loop cuts it like the batch, unopened): None when
        unconditional; here uniform one-hot class labels (CIFAR-10: labels of random training images, as SiD/DI)."""
        return uniform_labels(n, self.label_dim, rng, dtype, device)

    def collapse_reason(self, G, seed: int, n: int = 1000) -> str | None:
        """Whether the generator's samples for ``seed`` are degenerate (see :func:`collapse_reason`)."""
        dtype, device = net_dtype_device(G)
        x, _ = generate(G, n, self.data_shape, seed, batch_size=500, device=device, dtype=dtype,
                        draw_cond=self.draw_cond)
        return collapse_reason(x, self.data_range)

    def final_metrics(self, G, eval_cfg, seeds, protocol=None, device="cpu") -> dict:
        """The final evaluation of a generator: the mean of each metric over independent noise draws (one per
        seed) and its standard deviation over them (key_std_seeds). CIFAR-10 uses a FID protocol instead."""
        results = []
        for seed in seeds:
            ecfg = eval_cfg.model_copy(update={"seed": int(seed)})
            results.append(self.evaluator(ecfg, torch.device(device), torch.float32)(G, -1))
        return mean_over_draws(results)

    def teacher_metrics(self, nfe: int, seed: int, eval_cfg, protocol=None, device="cpu") -> dict:
        """The teacher's own EDM Heun sampler at ``nfe`` evaluations, evaluated as the generators are."""
        from sim_core.core.sampler import heun_sampler
        g = torch.Generator().manual_seed(10_000 + seed)
        latents = torch.randn((eval_cfg.num_samples, *self.data_shape), generator=g)
        cond = self.draw_cond(eval_cfg.num_samples, g)
        x = heun_sampler(self.D_teacher, latents, cond, num_steps=(nfe + 1) // 2)
        return self.metrics(x, cond, eval_cfg)

    def evaluator(self, eval_cfg, device, dtype):
        def evaluate(G, step):
            x, cond = generate(G, eval_cfg.num_samples, self.data_shape, eval_cfg.seed, eval_cfg.batch_size, device,
                               dtype, draw_cond=self.draw_cond)
            return self.metrics(x, cond, eval_cfg)
        return evaluate

    def metrics(self, x: torch.Tensor, cond, eval_cfg) -> dict:
        raise NotImplementedError

    def save_samples(self, G, path, seed: int) -> None:
        raise NotImplementedError

    def save_teacher_samples(self, nfe: int, seed: int, path) -> None:
        """A picture of the teacher's own sampler at ``nfe`` (a teacher row's); None where a testbed draws none."""
        return None


def save_image_grid(x: torch.Tensor, path, nrow: int = 10, scale: int = 1) -> None:
    """Images in [0, 1] (B, C, H, W) as one PNG grid, written atomically (``scale``: nearest-neighbour zoom)."""
    from torchvision.utils import save_image
    if scale != 1:
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp.png")
    save_image(x, tmp, nrow=nrow, padding=2)
    tmp.replace(path)

