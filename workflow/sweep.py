"""Expansion of a scale config into distillation runs, submitit job groups and teacher-row jobs.

A run is named by its testbed, method, learning rate, seed and the hash of its config: the same config
requested by two experiments is trained once (the first experiment owns it), and changing one sweep value
creates one new run while every other run keeps its name and results. What a testbed needs (its config section,
its files, its dataset and evaluation protocol) comes from its declaration (sim_core/testbeds/).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sim_core.errors import ConfigError
from sim_core.files import atomic_write_json
from sim_core.testbeds import TESTBEDS
from sim_core.train.config import parse_config
from workflow.schema import EXPERIMENTS, ScaleConfig

VERIFIED = "assets/verified.json"  # under results_dir: written once the downloaded files passed their checks


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
    inputs: list = field(default_factory=list)  # the files its job needs (built assets, or the verified downloads)


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

    def group_marker(self, group: str, results_dir) -> str:
        """The file the DAG tracks for a job group, written once every run of it is done. Its name carries a hash of
        the group's runs, so a group whose runs change is a new output. The runs' own done.json files are not
        Snakemake outputs: a DAG killed while a job runs (and rerun with rerun-incomplete) deletes nothing."""
        digest = hashlib.sha256("\n".join(self.groups[group]).encode()).hexdigest()[:8]
        return str(Path(results_dir) / "groups" / f"{group}-{digest}.json")

    def experiment_markers(self, experiment: str, results_dir) -> list:
        groups = {r.group for r in self.experiment_runs(experiment)}
        return sorted(self.group_marker(g, results_dir) for g in groups)

    def group_inputs(self, group: str) -> list:
        return sorted({f for n in self.groups[group] for f in self.runs[n].inputs})

    def teacher_row_inputs(self, experiment: str) -> list:
        return sorted({f for r in self.teacher_rows[experiment] for f in r["inputs"]})

    def to_dict(self) -> dict:
        return dict(runs={n: asdict(r) for n, r in self.runs.items()}, groups=self.groups,
                    teacher_rows=self.teacher_rows, assets=self.assets, downloads=self.downloads)

    @classmethod
    def from_dict(cls, d: dict) -> "Sweep":
        return cls({n: RunSpec(**r) for n, r in d["runs"].items()}, d["groups"], d["teacher_rows"], d["assets"],
                   d["downloads"])


def download_paths(scale: ScaleConfig) -> dict[str, str]:
    """Where each downloaded file is (asset_files.dir, or asset_files.paths); none without asset_files."""
    if scale.asset_files is None:
        return {}
    from sim_core.assets import resolve_paths
    return {n: str(p) for n, p in resolve_paths(scale.asset_files.dir, scale.asset_files.paths).items()}


def asset_path(scale: ScaleConfig, name: str) -> str:
    """A downloaded file where it is; a built asset under <results_dir>/assets/: <name>.pt, or the folder <name>
    when its testbed's builder writes a folder."""
    downloads = download_paths(scale)
    if name in downloads:
        return downloads[name]
    return str(Path(scale.results_dir) / "assets" / (name if is_folder_asset(scale, name) else f"{name}.pt"))


def is_folder_asset(scale: ScaleConfig, name: str) -> bool:
    spec = scale.assets.get(name)
    return spec is not None and spec.kind in TESTBEDS.get(spec.testbed).folders


def testbed_files(scale: ScaleConfig, testbed: str, conditional: bool) -> tuple[dict, list]:
    """The run config's testbed section of an experiment's testbed, and the files a job using it needs: each
    built asset, or the verification record of the downloaded ones."""
    spec = TESTBEDS.get(testbed)
    names = spec.asset_names(conditional)
    downloads = download_paths(scale)
    paths = {n: asset_path(scale, n) for n in names}
    pins = scale.asset_files.sha256 if scale.asset_files is not None else {}
    inputs = sorted(paths[n] for n in names if n not in downloads)
    if names & set(downloads):
        inputs.append(str(Path(scale.results_dir) / VERIFIED))
    return spec.section(conditional, paths, pins), inputs


def needed_assets(scale: ScaleConfig) -> tuple[set, set]:
    """(assets the DAG builds, files it downloads) that the experiments need."""
    from sim_core.assets import manifest_names
    downloadable = set(manifest_names())
    names = {n for e in scale.experiments.values() for n in TESTBEDS.get(e.testbed).asset_names(e.conditional)}
    return names - downloadable, names & downloadable


def testbed_label(exp) -> str:
    """The testbed as run names and records show it: digits, digits_cond, cifar10_cond, ..."""
    return exp.testbed + ("_cond" if exp.conditional else "")


def expand(scale: ScaleConfig) -> Sweep:
    """All runs of all experiments; fails with one line naming the experiment and row on a bad run config."""
    runs: dict[str, RunSpec] = {}
    by_hash: dict[str, str] = {}
    results = Path(scale.results_dir)
    for exp_name in EXPERIMENTS:
        exp = scale.experiments.get(exp_name)
        if exp is None:
            continue
        spec = TESTBEDS.get(exp.testbed)
        section, inputs = testbed_files(scale, exp.testbed, exp.conditional)
        for row in exp.rows:
            for lr in exp.lrs:
                for seed in (row.seeds if row.seeds is not None else exp.seeds):
                    cfg = deep_merge(scale.base, {"name": "", "scale": scale.scale, "seed": seed, "testbed": section,
                                                  "method": row.method, "optim": {"lr_gen": lr, "lr_online": lr}})
                    cfg = deep_merge(deep_merge(cfg, exp.overrides), row.overrides)
                    try:
                        parsed = parse_config(cfg)
                    except ConfigError as e:
                        raise ConfigError(f"experiments.{exp_name} row {row.label!r}: {e}") from None
                    h = parsed.hash()[:8]  # stable when a new config field keeps its default (RunConfig.hash)
                    protocol = spec.protocol(parsed.eval, scale.final_eval_seeds, scale.final_eval_protocol)
                    member = dict(experiment=exp_name, label=row.label, method=parsed.method.name,
                                  alpha=getattr(parsed.method, "alpha", None), time_dist=parsed.method.time_dist,
                                  weighting=parsed.method.weighting, lr=lr, seed=seed, testbed=exp.testbed,
                                  conditional=exp.conditional, nfe=1, scale=scale.scale,
                                  dataset=spec.dataset(exp.conditional), protocol=dataclasses.asdict(protocol))
                    if h in by_hash:
                        runs[by_hash[h]].memberships.append(member)
                        continue
                    name = f"{testbed_label(exp)}-{slug(parsed.method.name)}-lr{lr:g}-s{seed}-{h}"
                    cfg["name"] = name
                    by_hash[h] = name
                    runs[name] = RunSpec(name, cfg, str(results / "runs" / name), exp_name, [member], inputs=inputs)
    groups: dict[str, list] = {}
    for exp_name in EXPERIMENTS:
        owned = sorted(n for n, r in runs.items() if r.owner == exp_name)
        exp = scale.experiments.get(exp_name)
        per_job = (exp.runs_per_job if exp is not None else None) or scale.runs_per_job
        for i in range(0, len(owned), per_job):
            g = f"{exp_name}-{i // per_job:03d}"
            groups[g] = owned[i:i + per_job]
            for n in groups[g]:
                runs[n].group = g
    teacher_rows = {name: _teacher_rows(scale, name, exp) for name, exp in scale.experiments.items() if exp.teacher_nfe}
    assets = {name: asset_path(scale, name) for name in scale.assets}
    built, downloaded = needed_assets(scale)
    missing = built - set(assets)
    if missing:
        raise ConfigError(f"bad scale config: assets: missing {sorted(missing)} needed by the experiments")
    downloads = {n: p for n, p in download_paths(scale).items() if n in downloaded}
    return Sweep(runs, groups, teacher_rows, assets, downloads)


def _teacher_rows(scale: ScaleConfig, exp_name: str, exp) -> list[dict]:
    """The teacher's own multi-step sampler at each NFE and seed, evaluated as the distilled rows (one noise draw
    per seed where those average several)."""
    from sim_core.train.config import EvalConfig
    spec = TESTBEDS.get(exp.testbed)
    section, inputs = testbed_files(scale, exp.testbed, exp.conditional)
    base = deep_merge(scale.base, exp.overrides)  # the settings of the experiment's runs
    section = deep_merge(base.get("testbed", {}), section)
    eval_cfg = EvalConfig(**base.get("eval", {}))
    base = spec.protocol(eval_cfg, scale.final_eval_seeds, scale.final_eval_protocol)
    rows = []
    for nfe in exp.teacher_nfe:
        protocol = dataclasses.replace(base, generator=f"the teacher's {spec.teacher_sampler} at {nfe} NFE",
                                       trials=1 if base.rule == "mean" else base.trials)
        for seed in exp.teacher_seeds:
            rows.append(dict(experiment=exp_name, label=spec.teacher_label(nfe), method="teacher", alpha=None,
                             time_dist=None, weighting=None, lr=None, seed=seed, testbed=exp.testbed,
                             conditional=exp.conditional, nfe=nfe, scale=scale.scale,
                             dataset=spec.dataset(exp.conditional), protocol=dataclasses.asdict(protocol),
                             testbed_config=section, inputs=inputs))
    return rows


def code_fingerprint() -> str:
    """SHA-256 of the project's Python sources and report data: what validating a sweep depends on besides its
    config."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for package in ("sim_core", "baselines", "workflow"):
        for path in sorted((root / package).rglob("*.py")) + sorted((root / package).rglob("*.yaml")):
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def expand_cached(scale: ScaleConfig) -> Sweep:
    """``expand`` remembered under ``<results_dir>/.sweep-cache/``, keyed by the scale config and the code.

    Validating every run config builds its losses. Snakemake parses the Snakefile at every invocation, so without
    the cache each `snakemake` call (dry runs, no-op reruns) pays that; with it, only the first call after a change
    to the config or to the code does."""
    key = hashlib.sha256((scale.model_dump_json() + code_fingerprint()).encode()).hexdigest()[:24]
    path = Path(scale.results_dir) / ".sweep-cache" / f"{key}.json"
    try:
        return Sweep.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or unreadable: validate again
    sweep = expand(scale)
    atomic_write_json(path, sweep.to_dict())
    return sweep
