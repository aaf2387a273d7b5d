"""``torch`` imported on first use, for the modules that validating a config needs (registries of methods,
distances, time distributions, weightings). Snakemake validates every run of a sweep when it parses the
Snakefile; with this, that costs no `import torch` (~2 s here), and the job processes import it as before."""
from __future__ import annotations

import importlib
import types


class LazyModule(types.ModuleType):
    """A stand-in for a module that imports it at the first attribute access and caches what it hands out."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__lazy_target = name

    def __getattr__(self, attr: str):
        module = importlib.import_module(self.__lazy_target)
        value = getattr(module, attr)
        setattr(self, attr, value)  # later accesses are plain attribute lookups
        return value


torch = LazyModule("torch")
edm = LazyModule("sim_core.core.edm")  # EDMPrecond subclasses torch.nn.Module, so edm.py imports torch at once
