"""Methods by name: each builds the generator (theta-step) loss; all share the psi-step and the loop."""
from __future__ import annotations

from .distances import build_distance
from .registry import Registry
from .time_dists import build_time_distribution

# Lazy entries: the baselines import sim_core, so they are named here as "module:attr".
METHODS = Registry("method")
METHODS.register("sim", "sim_core.sim_loss:SIMLoss")
METHODS.register("sid", "baselines.sid:SiDLoss")
METHODS.register("di", "baselines.diff_instruct:DILoss")

# Per-method defaults of the theta-step, with their sources.
METHOD_DEFAULTS = {
    # SIM on CIFAR-10: p_SIM, weight 1, pseudo-Huber (Table 5 / eq. B.13); c = 1e-3 (SIM issue #5).
    "sim": dict(time_dist="p_sim", weighting="nowgt"),
    # SiD official code: continuous Karras draw with tmax = 800, 1/mean|x0 - D_q| normaliser, alpha = 1.2.
    "sid": dict(time_dist="karr_sid", weighting="sidwgt"),
    # Diff-Instruct official code: log-normal sigma with EDM's P_mean/P_std, weight 1.
    "di": dict(time_dist="p_edm", weighting="nowgt"),
}
# Keys that only some methods accept.
METHOD_KEYS = {"sim": {"distance", "distance_params", "space", "detach_direction"}, "sid": {"alpha"},
               "di": {"train_mode_denoisers"}}


def build_generator_loss(name: str, time_dist: str | None = None, time_dist_params: dict | None = None,
                         weighting: str | None = None, warn: bool = True, **extra):
    """Build a method's generator loss from plain values (the config's ``method`` section)."""
    cls = METHODS.get(name)
    bad = set(extra) - METHOD_KEYS[name]
    if bad:
        raise ValueError(f"method {name} does not take {', '.join(sorted(bad))}")
    defaults = METHOD_DEFAULTS[name]
    td = build_time_distribution(time_dist or defaults["time_dist"], **(time_dist_params or {}))
    kwargs = dict(time_dist=td, weighting=weighting or defaults["weighting"])
    if name == "sim":
        kwargs["distance"] = build_distance(extra.get("distance", "pseudo_huber"),
                                            warn=warn, **(extra.get("distance_params") or {}))
        kwargs["space"] = extra.get("space", "denoiser")
        kwargs["detach_direction"] = extra.get("detach_direction", False)
    elif name == "sid" and "alpha" in extra:
        kwargs["alpha"] = extra["alpha"]
    elif name == "di" and "train_mode_denoisers" in extra:
        kwargs["train_mode_denoisers"] = extra["train_mode_denoisers"]
    from .weightings import get_weighting
    get_weighting(kwargs["weighting"])  # fail early on an unknown weighting name
    return cls(**kwargs)
