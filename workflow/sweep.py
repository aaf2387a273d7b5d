"""Expansion of a scale config into distillation runs, submitit job groups and teacher-row jobs.

A run is named by its testbed, method, learning rate, seed and the hash of its config: the same config
requested by two experiments is trained once (the first experiment owns it), and changing one sweep value
creates one new run while every other run keeps its name and results.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sim_core.checkpoint import atomic_write_json
from sim_core.config import ConfigError, parse_config

from .schema import EXPERIMENTS, ScaleConfig

# testbed of an experiment -> (asset name of its teacher, conditional, dataset description)
TESTBEDS = {
    "digits": ("teacher_digits", False, "sklearn 8x8 digits, unconditional"),
    "digits_cond": ("teacher_digits_cond", True, "sklearn 8x8 digits, class-conditional (10 labels)"),
    "gmm": ("teacher_gmm", False, "8-mode ring Gaussian mixture in 2-D"),
}


def deep_merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


@dataclass
class RunSpec:
    name: str
    config: dict
    run_dir: str
    owner: str                                  # the experiment whose job group trains it
    memberships: list = field(default_factory=list)
    group: str = ""


@dataclass
class Sweep:
    runs: dict                                  # name -> RunSpec
    groups: dict                                # group -> [run names]
    teacher_rows: dict                          # experiment -> list of teacher-row records
    assets: dict                                # asset name -> path

    def experiment_runs(self, experiment: str) -> list:
        return [r for r in self.runs.values() if any(m["experiment"] == experiment for m in r.memberships)]

    def done_files(self, experiment: str) -> list:
        return sorted(str(Path(r.run_dir) / "done.json") for r in self.experiment_runs(experiment))

    def group_done_files(self, group: str) -> list:
        return [str(Path(self.runs[n].run_dir) / "done.json") for n in self.groups[group]]

    def to_dict(self) -> dict:
        return dict(runs={n: asdict(r) for n, r in self.runs.items()}, groups=self.groups,
                    teacher_rows=self.teacher_rows, assets=self.assets)

    @classmethod
    def from_dict(cls, d: dict) -> "Sweep":
        return cls({n: RunSpec(**r) for n, r in d["runs"].items()}, d["groups"], d["teacher_rows"], d["assets"])


def asset_path(scale: ScaleConfig, name: str) -> str:
    return str(Path(scale.results_dir) / "assets" / f"{name}.pt")


def protocol(cfg: dict, scale: ScaleConfig) -> str:
    ev, tb = cfg.get("eval", {}), cfg["testbed"]["kind"]
    n, seeds = ev.get("num_samples", 2000), len(scale.final_eval_seeds)
    if tb == "digits":
        return (f"FID/KID/IS in digits-CNN features via torch-fidelity; EMA generator at the last iteration; "
                f"{n} samples x {seeds} noise seed(s), mean; reference: 1438 train digits")
    return f"Frechet distance to the true mixture's mean/cov; EMA generator; {n} samples x {seeds} seed(s)"


def expand(scale: ScaleConfig) -> Sweep:
    """All runs of all experiments; fails with one line naming the experiment and row on a bad run config."""
    runs: dict[str, RunSpec] = {}
    by_hash: dict[str, str] = {}
    results = Path(scale.results_dir)
    for exp_name in EXPERIMENTS:
        exp = scale.experiments.get(exp_name)
        if exp is None:
            continue
        asset, conditional, dataset = TESTBEDS[exp.testbed]
        for row in exp.rows:
            for lr in exp.lrs:
                for seed in (row.seeds if row.seeds is not None else exp.seeds):
                    testbed = {"kind": "gmm" if exp.testbed == "gmm" else "digits",
                               "teacher": asset_path(scale, asset), "conditional": conditional}
                    if testbed["kind"] == "digits":
                        testbed["classifier"] = asset_path(scale, "classifier")
                    cfg = deep_merge(scale.base, {"name": "", "scale": scale.scale, "seed": seed, "testbed": testbed,
                                                  "method": row.method, "optim": {"lr_gen": lr, "lr_online": lr}})
                    cfg = deep_merge(cfg, row.overrides)
                    try:
                        parsed = parse_config(cfg)
                    except ConfigError as e:
                        raise ConfigError(f"experiments.{exp_name} row {row.label!r}: {e}") from None
                    h = parsed.hash()[:8]  # stable when a new config field keeps its default (RunConfig.hash)
                    member = dict(experiment=exp_name, label=row.label, method=parsed.method.name,
                                  alpha=parsed.method.alpha if parsed.method.name == "sid" else None,
                                  time_dist=parsed.method.time_dist, weighting=parsed.method.weighting,
                                  lr=lr, seed=seed, testbed=exp.testbed, nfe=1, scale=scale.scale,
                                  dataset=dataset, protocol=protocol(cfg, scale))
                    if h in by_hash:
                        runs[by_hash[h]].memberships.append(member)
                        continue
                    name = f"{exp.testbed}-{slug(parsed.method.name)}-lr{lr:g}-s{seed}-{h}"
                    cfg["name"] = name
                    by_hash[h] = name
                    runs[name] = RunSpec(name, cfg, str(results / "runs" / name), exp_name, [member])
    groups: dict[str, list] = {}
    for exp_name in EXPERIMENTS:
        owned = sorted(n for n, r in runs.items() if r.owner == exp_name)
        for i in range(0, len(owned), scale.runs_per_job):
            g = f"{exp_name}-{i // scale.runs_per_job:03d}"
            groups[g] = owned[i:i + scale.runs_per_job]
            for n in groups[g]:
                runs[n].group = g
    teacher_rows = {}
    for exp_name, exp in scale.experiments.items():
        if exp.teacher_nfe:
            asset, conditional, dataset = TESTBEDS[exp.testbed]
            teacher_rows[exp_name] = [dict(experiment=exp_name, label=f"Teacher (Heun, NFE {nfe})", method="teacher",
                                           alpha=None, time_dist=None, weighting=None, lr=None, seed=seed,
                                           testbed=exp.testbed, nfe=nfe, scale=scale.scale, dataset=dataset,
                                           protocol=f"EDM Heun sampler (rho = 7), {nfe} NFE, same features and "
                                                    f"sample count as the distilled rows",
                                           teacher=asset_path(scale, asset),
                                           classifier=asset_path(scale, "classifier") if exp.testbed != "gmm" else None)
                                      for nfe in exp.teacher_nfe for seed in exp.teacher_seeds]
    assets = {name: asset_path(scale, name) for name in scale.assets}
    needed = {TESTBEDS[e.testbed][0] for e in scale.experiments.values()}
    if any(e.testbed != "gmm" for e in scale.experiments.values()):
        needed.add("classifier")
    missing = needed - set(assets)
    if missing:
        raise ConfigError(f"bad scale config: assets: missing {sorted(missing)} needed by the experiments")
    return Sweep(runs, groups, teacher_rows, assets)


def code_fingerprint() -> str:
    """SHA-256 of the project's Python sources: what validating a sweep depends on besides its config."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for package in ("sim_core", "baselines", "workflow"):
        for path in sorted((root / package).rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def expand_cached(scale: ScaleConfig) -> Sweep:
    """``expand`` remembered under ``<results_dir>/.sweep-cache/``, keyed by the scale config and the code.

    Validating every run config builds its losses, which imports torch (~2 s here). Snakemake parses the
    Snakefile at every invocation, so without the cache each `snakemake` call (dry runs, no-op reruns) pays
    that; with it, only the first call after a change to the config or to the code does."""
    key = hashlib.sha256((scale.model_dump_json() + code_fingerprint()).encode()).hexdigest()[:24]
    path = Path(scale.results_dir) / ".sweep-cache" / f"{key}.json"
    try:
        return Sweep.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or unreadable: validate again
    sweep = expand(scale)
    atomic_write_json(path, sweep.to_dict())
    return sweep
