"""The mixture testbed at run time: the teacher, metrics against the true mixture, scatter plots."""
from __future__ import annotations

from pathlib import Path

import torch

from sim_core.errors import ConfigError
from sim_core.files import atomic_savefig
from sim_core.testbeds.base import Testbed, generate, net_dtype_device
from sim_core.testbeds.edm_teacher import build_mlp_teacher, load_for
from sim_core.testbeds.gmm.mixture import GaussianMixture, by_name

# Measured on a 2-core CPU: 128 hidden units and 3 blocks cover every mode of the 8-mode ring after 4000
# iterations at batch 512 (~1.5 min).
TEACHER_DEFAULTS = dict(hidden=128, blocks=3, iterations=4000, batch_size=512, lr=1e-3)


class GMMTestbed(Testbed):
    def __init__(self, D_teacher, meta):
        super().__init__(D_teacher, meta)
        self.gmm = GaussianMixture.from_spec(meta["testbed_spec"])

    def metrics(self, x, cond, eval_cfg):
        from sim_core.testbeds.gmm.metrics import gmm_metrics
        m = gmm_metrics(x.double(), self.gmm)
        return {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in m.items()}

    def save_samples(self, G, path, seed):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        dtype, device = net_dtype_device(G)
        x, _ = generate(G, 2000, self.data_shape, seed, device=device, dtype=dtype)
        real, _ = self.gmm.sample(2000, torch.Generator().manual_seed(seed))
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        ax.scatter(real[:, 0], real[:, 1], s=2, alpha=0.3, c="tab:gray", label="true mixture")
        ax.scatter(x[:, 0].float(), x[:, 1].float(), s=2, alpha=0.5, c="tab:blue", label="generator (EMA)")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=7, markerscale=4)
        ax.set_title(Path(path).stem, fontsize=8)
        atomic_savefig(fig, path)
        plt.close(fig)


def load(cfg) -> GMMTestbed:
    return GMMTestbed(*load_for(cfg))


def build_teacher(out, conditional: bool = False, mixture: str = "ring", mixture_kwargs=None, seed: int = 0,
                  progress: bool = False, **overrides) -> dict:
    """Train the mixture's teacher (TEACHER_DEFAULTS, some replaced by ``overrides``) and write it to ``out``."""
    if conditional:
        raise ConfigError("the gmm testbed is unconditional")
    gmm = by_name(mixture, **(mixture_kwargs or {}))

    def sample(n, rng):
        return gmm.sample(n, rng)[0].float(), None
    return build_mlp_teacher("gmm", out, (gmm.d,), 0, sample, gmm.spec(), TEACHER_DEFAULTS, seed=seed,
                             progress=progress, **overrides)
