"""Testbeds by name: one folder per testbed, whose ``__init__.py`` declares it (sim_core/testbeds/spec.py) without
importing torch, and one line here. The runtime parts (teacher, evaluation) load on first use."""
from __future__ import annotations

from sim_core.registry import Registry

TESTBEDS = Registry("testbed")
TESTBEDS.register("gmm", "sim_core.testbeds.gmm:TESTBED")          # 2-D Gaussian mixture with its exact score
TESTBEDS.register("digits", "sim_core.testbeds.digits:TESTBED")    # scikit-learn's 8x8 digits (toy scale)
TESTBEDS.register("cifar10", "sim_core.testbeds.cifar10:TESTBED")  # CIFAR-10 with NVIDIA's EDM teachers (paper scale)
TESTBEDS.register("t2i", "sim_core.testbeds.t2i:TESTBED")  # text to image: PixArt-alpha 512px (paper scale, Table 3)
TESTBEDS.register("t2i_digits", "sim_core.testbeds.t2i:TOY_TESTBED")  # text-to-image toy: PixArt DiT on digit latents


def load_testbed(cfg):
    """The runtime testbed of a run config's ``testbed`` section (teacher loaded and checked; one line on error)."""
    return TESTBEDS.get(cfg.kind).load(cfg)
