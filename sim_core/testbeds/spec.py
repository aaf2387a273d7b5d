"""What a testbed declares, as data: its config section, metrics, dataset, assets, evaluation protocol, and where its
runtime code lives. Imports no torch: the sweep, the schema, the DAG (in the Snakemake process) and the report read
these without loading a network.

Adding a testbed: a folder ``sim_core/testbeds/<name>/`` whose ``__init__.py`` defines ``TESTBED`` (a
:class:`TestbedSpec`), and one line in ``sim_core/testbeds/__init__.py``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from sim_core.errors import ConfigError
from sim_core.schema import Strict


@dataclass(frozen=True)
class Metric:
    """One number an evaluation logs (as eval/<key> during training, final/<key> at the end)."""
    key: str
    name: str                   # how tables and figures label it
    lower_is_better: bool
    column: Optional[str] = None  # the report column it fills: the paper metric it stands in for ("fid", "is")


@dataclass(frozen=True)
class Protocol:
    """How a testbed's final numbers are measured. ``rule`` says how trials combine: "mean" (mean over independent
    noise draws), or a FID protocol of the reference code: "edm" (min of 3 seed ranges), "sid" (mean ± std of 10)."""
    features: str               # what the metrics are computed in
    reference: str              # what the samples are compared with
    samples: int                # samples per trial
    trials: int                 # trials (noise draws, seed ranges) per number
    rule: str
    generator: str = "EMA generator at the last iteration"

    RULES = {"mean": "mean over {trials} noise draw(s)", "edm": "EDM protocol: min of 3 seed ranges",
             "sid": "SiD protocol: mean ± std of 10 trials"}

    def text(self) -> str:
        rule = self.RULES[self.rule].format(trials=self.trials)
        return (f"{self.features}; reference: {self.reference}; {self.generator}; {self.samples} samples per trial, "
                f"{rule}")


class TestbedConfig(Strict):
    """The run config's ``testbed`` section; each testbed subclasses it with ``kind: Literal[<name>]``. Paths are
    files the testbed needs (a teacher, an evaluation network, ...); a ``<field>_sha256`` pins one."""
    kind: str
    teacher: str                             # the teacher's file
    teacher_sha256: Optional[str] = None     # optional pin: the teacher file must have this checksum
    conditional: bool = False                # class-conditional (the teacher must be too)


@dataclass(frozen=True)
class TestbedSpec:
    """One testbed. ``assets`` maps a config field (the role) to the asset that fills it, per conditioning;
    an asset may be named with a path inside it ("scorers_toy/pickscore/model": a folder of a folder asset);
    ``runtime`` is "module:function" building the runtime testbed (networks, metrics) from the config section;
    ``builders`` maps an asset kind the DAG builds here (teacher, classifier) to "module:function", and ``folders``
    names the kinds whose builder writes a folder (save_pretrained layouts) rather than one file."""
    name: str
    config: type
    metrics: tuple
    datasets: Mapping[bool, str]             # conditional -> dataset description (a missing key: unsupported)
    assets: Mapping[bool, Mapping[str, str]]
    runtime: str
    builders: Mapping[str, str] = field(default_factory=dict)
    features: str = ""                       # what the metrics are computed in (the evaluation protocol)
    reference: str = ""                      # what the samples are compared with
    teacher_sampler: str = "EDM Heun sampler (rho = 7)"
    folders: tuple = ()
    teacher_steps: str = "NFE"               # what the teacher rows' step counts are (Heun NFE are odd)

    def asset_names(self, conditional: bool) -> set:
        """The assets (built or downloaded) a variant needs."""
        return {a.split("/")[0] for a in self.assets[conditional].values()}

    def check_teacher_steps(self, steps) -> None:
        if self.teacher_steps == "NFE" and not all(n >= 1 and n % 2 == 1 for n in steps):
            raise ValueError(f"Heun NFE must be odd and >= 1 (NFE = 2 steps - 1), got {steps}")
        if not all(n >= 1 for n in steps):
            raise ValueError(f"teacher steps must be >= 1, got {steps}")

    def teacher_label(self, steps: int) -> str:
        if self.teacher_steps == "NFE":
            return f"Teacher (Heun, NFE {steps})"
        return f"Teacher ({self.teacher_sampler.split(' ')[0]}, {steps} steps)"

    def metric(self, key: str) -> Metric:
        for m in self.metrics:
            if m.key == key:
                return m
        raise KeyError(f"testbed {self.name} has no metric {key!r}; it logs {', '.join(m.key for m in self.metrics)}")

    def for_column(self, column: str) -> Optional[Metric]:
        """The metric that fills a report column ("fid", "is"), or None."""
        return next((m for m in self.metrics if m.column == column), None)

    def dataset(self, conditional: bool) -> str:
        if conditional not in self.datasets:
            raise ConfigError(f"testbed {self.name} has no {'class-conditional' if conditional else 'unconditional'} "
                             "variant")
        return self.datasets[conditional]

    def section(self, conditional: bool, paths: Mapping[str, str], pins: Mapping[str, str]) -> dict:
        """The run config's testbed section: every role's asset path, and a pin where the user gave one."""
        self.dataset(conditional)
        fields = self.config.model_fields
        section: dict[str, Any] = {"kind": self.name, "conditional": conditional}
        for role, target in self.assets[conditional].items():
            asset, _, inside = target.partition("/")
            section[role] = f"{paths[asset]}/{inside}" if inside else paths[asset]
            if pins.get(asset) and f"{role}_sha256" in fields:
                section[f"{role}_sha256"] = pins[asset]
        return section

    def protocol(self, eval_cfg, final_eval_seeds, final_eval_protocol=None) -> Protocol:
        """How the final numbers of a run with these eval settings (the run config's ``eval``) are measured: here
        the mean over one noise draw per final evaluation seed."""
        return Protocol(self.features, self.reference, eval_cfg.num_samples, len(final_eval_seeds), "mean")

    def load(self, cfg):
        """The runtime testbed (teacher, evaluation) for a config section; imports torch."""
        return import_string(self.runtime)(cfg)

    def build_asset(self, kind: str, spec: Mapping[str, Any], out: str) -> dict:
        if kind not in self.builders:
            built = ", ".join(self.builders) or "none"
            raise ConfigError(f"testbed {self.name} builds no {kind!r} asset; it builds {built}")
        return import_string(self.builders[kind])(out, **spec)


def import_string(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)

