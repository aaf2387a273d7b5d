"""The Gaussian-mixture testbed: an 8-mode ring in 2-D whose diffused score is known exactly, so a generator can be
scored against the true distribution (Frechet distance, mass per mode, modes covered, NLL gap)."""
from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from sim_core.testbeds.spec import Metric, TestbedConfig, TestbedSpec


class GMMConfig(TestbedConfig):
    kind: Literal["gmm"] = "gmm"

    @field_validator("conditional")
    @classmethod
    def _unconditional(cls, v):
        if v:
            raise ValueError("the gmm testbed is unconditional")
        return v


TESTBED = TestbedSpec(
    name="gmm",
    config=GMMConfig,
    metrics=(Metric("fd", "FD to the true mixture", lower_is_better=True, column="fid"),
             Metric("modes_covered", "modes covered", lower_is_better=False, column="is"),
             Metric("mode_mass_tv", "mode-mass TV", lower_is_better=True),
             Metric("nll_gap", "NLL gap", lower_is_better=True)),
    datasets={False: "8-mode ring Gaussian mixture in 2-D"},
    assets={False: {"teacher": "teacher_gmm"}},
    runtime="sim_core.testbeds.gmm.testbed:load",
    builders={"teacher": "sim_core.testbeds.gmm.testbed:build_teacher"},
    features="the 2-D samples themselves",
    reference="the true mixture's mean and covariance (Frechet distance), its modes (mass, coverage) and density (NLL)",
)
