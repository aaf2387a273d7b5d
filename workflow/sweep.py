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
    # paper scale: the assets are NVIDIA's files (sim_core/assets.py MANIFEST), downloaded, not built
    "cifar10": ("teacher_uncond", False, "CIFAR-10 32x32, unconditional (EDM VP teacher)"),
    "cifar10_cond": ("teacher_cond", True, "CIFAR-10 32x32, class-conditional (EDM VP teacher)"),
}
# files of the CIFAR-10 evaluation besides the teacher (the dataset: labels of training images, conditional only)
CIFAR10_EVAL_ASSETS = ("inception", "fid_ref")


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
    assets: dict                                # asset name -> path (built by the DAG)
    downloads: dict = field(default_factory=dict)  # paper-scale file name -> path (downloaded or put there)

    def experiment_runs(self, experiment: str) -> list:
        return [r for r in self.runs.values() if any(m["experiment"] == experiment for m in r.memberships)]

    def done_files(self, experiment: str) -> list:
        return sorted(str(Path(r.run_dir) / "done.json") for r in self.experiment_runs(experiment))

    def group_done_files(self, group: str) -> list:
        return [str(Path(self.runs[n].run_dir) / "done.json") for n in self.groups[group]]

    def to_dict(self) -> dict:
        return dict(runs={n: asdict(r) for n, r in self.runs.items()}, groups=self.groups,
                    teacher_rows=self.teacher_rows, assets=self.assets, downloads=self.downloads)

    @classmethod
    def from_dict(cls, d: dict) -> "Sweep":
        return cls({n: RunSpec(**r) for n, r in d["runs"].items()}, d["groups"], d["teacher_rows"], d["assets"],
                   d["downloads"])


def asset_path(scale: ScaleConfig, name: str) -> str:
    if scale.asset_files is not None and name in download_paths(scale):
        return download_paths(scale)[name]
    return str(Path(scale.results_dir) / "assets" / f"{name}.pt")


def download_paths(scale: ScaleConfig) -> dict[str, str]:
    """Where each paper-scale file is (asset_files.dir, or asset_files.paths); none without asset_files."""
    if scale.asset_files is None:
        return {}
    from sim_core.assets import resolve_paths
    return {n: str(p) for n, p in resolve_paths(scale.asset_files.dir, scale.asset_files.paths).items()}


def testbed_section(scale: ScaleConfig, testbed: str) -> dict:
    """The RunConfig ``testbed`` section of an experiment's testbed."""
    asset, conditional, _ = TESTBEDS[testbed]
    kind = "gmm" if testbed == "gmm" else "digits" if testbed.startswith("digits") else "cifar10"
    section = {"kind": kind, "teacher": asset_path(scale, asset), "conditional": conditional}
    if kind == "digits":
        section["classifier"] = asset_path(scale, "classifier")
    if kind == "cifar10":
        section.update(inception=asset_path(scale, "inception"), fid_ref=asset_path(scale, "fid_ref"))
        pins = scale.asset_files.sha256  # a user's pin replaces the published checksum (verify_assets checks all)
        if pins.get(asset):
            section["teacher_sha256"] = pins[asset]
        if pins.get("inception"):
            section["inception_sha256"] = pins["inception"]
        if conditional:
            section["dataset"] = asset_path(scale, "cifar10")
    return section


def needed_assets(scale: ScaleConfig) -> tuple[set, set]:
    """(assets the DAG builds, files it downloads) that the experiments need."""
    built, downloaded = set(), set()
    for e in scale.experiments.values():
        teacher = TESTBEDS[e.testbed][0]
        if e.testbed.startswith("cifar10"):
            downloaded |= {teacher, *CIFAR10_EVAL_ASSETS} | ({"cifar10"} if TESTBEDS[e.testbed][1] else set())
        else:
            built |= {teacher} | ({"classifier"} if e.testbed != "gmm" else set())
    return built, downloaded


def protocol(cfg: dict, scale: ScaleConfig) -> str:
    ev, tb = cfg.get("eval", {}), cfg["testbed"]["kind"]
    n, seeds = ev.get("num_samples", 2000), len(scale.final_eval_seeds)
    if tb == "digits":
        return (f"FID/KID/IS in digits-CNN features via torch-fidelity; EMA generator at the last iteration; "
                f"{n} samples x {seeds} noise seed(s), mean; reference: 1438 train digits")
    if tb == "cifar10":  # the protocol's own name and rule (sim_core/image_metrics.py FID_PROTOCOLS)
        rule = {"edm": "EDM protocol: min of 3 seed ranges", "sid": "SiD protocol: mean ± std of 10 trials"}
        return (f"FID/IS in Inception-v3 pool3 features (torch-fidelity weights) against EDM's cifar10-32x32.npz; "
                f"EMA generator at the last iteration; {n} samples per trial; {rule[scale.final_eval_protocol]}")
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
        dataset = TESTBEDS[exp.testbed][2]
        for row in exp.rows:
            for lr in exp.lrs:
                for seed in (row.seeds if row.seeds is not None else exp.seeds):
                    testbed = testbed_section(scale, exp.testbed)
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
            dataset = TESTBEDS[exp.testbed][2]
            tb_section = testbed_section(scale, exp.testbed)
            teacher_rows[exp_name] = [dict(experiment=exp_name, label=f"Teacher (Heun, NFE {nfe})", method="teacher",
                                           alpha=None, time_dist=None, weighting=None, lr=None, seed=seed,
                                           testbed=exp.testbed, nfe=nfe, scale=scale.scale, dataset=dataset,
                                           protocol=f"EDM Heun sampler (rho = 7), {nfe} NFE, same features and "
                                                    f"sample count as the distilled rows",
                                           teacher=tb_section["teacher"], classifier=tb_section.get("classifier"),
                                           testbed_config=tb_section)
                                      for nfe in exp.teacher_nfe for seed in exp.teacher_seeds]
    assets = {name: asset_path(scale, name) for name in scale.assets}
    needed, downloaded = needed_assets(scale)
    missing = needed - set(assets)
    if missing:
        raise ConfigError(f"bad scale config: assets: missing {sorted(missing)} needed by the experiments")
    downloads = {n: p for n, p in download_paths(scale).items() if n in downloaded}
    return Sweep(runs, groups, teacher_rows, assets, downloads)


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
