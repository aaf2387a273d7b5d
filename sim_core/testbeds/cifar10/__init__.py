"""The CIFAR-10 testbed (paper scale): NVIDIA's EDM teachers (DDPM++, unconditional and class-conditional), FID and
Inception Score in Inception-v3 features against EDM's reference statistics, by EDM's or SiD's reporting protocol.
Its files (teacher pickles, statistics, Inception weights, the dataset) are downloaded, not built:
sim_core/testbeds/cifar10/assets.py lists them."""
from __future__ import annotations

from typing import Literal, Optional

from sim_core.testbeds.cifar10 import assets  # noqa: F401  (registers the files in the asset manifest)
from sim_core.testbeds.spec import Metric, Protocol, TestbedConfig, TestbedSpec

FID_TRIALS = {"edm": 3, "sid": 10}  # EDM: min over 3 seed ranges; SiD: mean ± std of 10 trials


class CIFAR10Config(TestbedConfig):
    kind: Literal["cifar10"] = "cifar10"
    teacher: str                         # NVIDIA's EDM pickle
    inception: Optional[str] = None      # torch-fidelity's Inception-v3 weights (asset `inception`)
    inception_sha256: Optional[str] = None  # None: the published file's (sim_core/testbeds/cifar10/inception.py)
    fid_ref: Optional[str] = None        # EDM's reference statistics cifar10-32x32.npz (mu, sigma of 50k train images)
    dataset: Optional[str] = None        # cifar-10-python.tar.gz: labels of training images for conditional runs
    # SiD/DI draw the labels of random training images, EDM's generate.py draws uniformly
    # (docs/reference-code.md#class-labels)
    labels: Literal["training_images", "uniform"] = "training_images"


class CIFAR10Spec(TestbedSpec):
    def protocol(self, eval_cfg, final_eval_seeds, final_eval_protocol=None) -> Protocol:
        if final_eval_protocol not in FID_TRIALS:
            raise ValueError("the cifar10 testbed reports FID by a named protocol: set final_eval_protocol "
                             "(edm or sid)")
        return Protocol(self.features, self.reference, eval_cfg.num_samples, FID_TRIALS[final_eval_protocol],
                        final_eval_protocol)


TESTBED = CIFAR10Spec(
    name="cifar10",
    config=CIFAR10Config,
    metrics=(Metric("fid", "FID", lower_is_better=True, column="fid"),
             Metric("isc", "Inception Score", lower_is_better=False, column="is")),
    datasets={False: "CIFAR-10 32x32, unconditional (EDM VP teacher)",
              True: "CIFAR-10 32x32, class-conditional (EDM VP teacher)"},
    assets={False: {"teacher": "teacher_uncond", "inception": "inception", "fid_ref": "fid_ref"},
            True: {"teacher": "teacher_cond", "inception": "inception", "fid_ref": "fid_ref", "dataset": "cifar10"}},
    runtime="sim_core.testbeds.cifar10.testbed:load",
    features="FID/IS in Inception-v3 pool3 features (torch-fidelity weights)",
    reference="EDM's cifar10-32x32.npz",
)
