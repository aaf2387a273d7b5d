"""Methods by name. Each entry is the method's typed config (a model keyed on ``name``); the config builds the
generator (theta-step) loss. All methods share the psi-step, the generator and the loop."""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sim_core.core.time_dists import TIME_DISTRIBUTIONS, build_time_distribution
from sim_core.core.weightings import WEIGHTINGS
from sim_core.registry import Registry
from sim_core.schema import Strict

# Lazy entries "module:attr": the baselines import the core, so they are named here, not imported.
METHODS = Registry("method")
METHODS.register("sim", "sim_core.core.sim_loss:SIMConfig")
METHODS.register("sid", "baselines.sid:SiDConfig")
METHODS.register("di", "baselines.diff_instruct:DIConfig")


class StepParts(Strict):
    """A step's config names its time distribution and weighting (fields ``time_dist``, ``time_dist_params``,
    ``weighting``): unknown names fail with the list of valid ones."""

    @field_validator("time_dist", "weighting", check_fields=False)
    @classmethod
    def _known(cls, v, info):
        {"time_dist": TIME_DISTRIBUTIONS, "weighting": WEIGHTINGS}[info.field_name].get(v)
        return v

    def time_distribution(self):
        return build_time_distribution(self.time_dist, **self.time_dist_params)


# What the loop does with a non-finite loss or gradient (sim_core/train/loop.py):
#   stop:           the run ends as "diverged" at that step (no step is taken with it)
#   sanitize:       SiD's code: samples with a non-finite loss are dropped from both losses and the gradients go
#                   through nan_to_num(nan=0, posinf=1e5, neginf=-1e5) before Adam; training goes on
#   sanitize_grads: DI's code: the gradients go through the same nan_to_num, no sample is dropped
NONFINITE_POLICIES = ("stop", "sanitize", "sanitize_grads")


class MethodConfig(StepParts):
    """What every method's config has: the theta-step's time distribution and weighting and what happens to
    non-finite values (each method's defaults come from its own reference code), and ``build()``."""
    name: str
    time_dist: str
    time_dist_params: dict = Field(default_factory=dict)
    weighting: str
    nonfinite: Literal["stop", "sanitize", "sanitize_grads"]
    reuse_psi_cond: bool = False  # the theta-step takes the psi-step's conditioning instead of drawing its own

    @model_validator(mode="after")
    def _builds(self):
        self.build(warn=False)  # bad parameters of a named part fail here, in one line, before any work
        return self

    def build(self, warn: bool = True):
        """The method's generator loss (``warn``: say when a choice breaks Theorem 3.1's conditions)."""
        raise NotImplementedError


def finite(name: str, value: float, what: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"method {name}: {what} must be finite, got {value}")
    return value

