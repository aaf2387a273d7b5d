"""The digits testbed (toy scale): scikit-learn's 8x8 digits in [-1, 1], unconditional or class-conditional, with
teachers trained here; FID, KID and Inception Score in the features of a small CNN classifier trained here."""
from __future__ import annotations

from typing import Literal, Optional

from sim_core.testbeds.spec import Metric, TestbedConfig, TestbedSpec


class DigitsConfig(TestbedConfig):
    kind: Literal["digits"] = "digits"
    classifier: Optional[str] = None     # the feature network of FID/KID/IS (`sim classifier`); None: no metrics


TESTBED = TestbedSpec(
    name="digits",
    config=DigitsConfig,
    metrics=(Metric("fid", "FID", lower_is_better=True, column="fid"),
             Metric("isc", "Inception Score", lower_is_better=False, column="is"),
             Metric("kid", "KID", lower_is_better=True)),
    datasets={False: "sklearn 8x8 digits, unconditional",
              True: "sklearn 8x8 digits, class-conditional (10 labels)"},
    assets={False: {"teacher": "teacher_digits", "classifier": "classifier"},
            True: {"teacher": "teacher_digits_cond", "classifier": "classifier"}},
    runtime="sim_core.testbeds.digits.testbed:load",
    builders={"teacher": "sim_core.testbeds.digits.testbed:build_teacher",
              "classifier": "sim_core.testbeds.digits.testbed:build_classifier"},
    features="FID/KID/IS in digits-CNN features via torch-fidelity",
    reference="the 1438 training digits",
)
