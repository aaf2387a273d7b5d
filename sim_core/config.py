"""Typed run configuration, validated before any work starts.

Every default below carries its source. A YAML file is read into :class:`RunConfig`; unknown keys, unknown
names (method, distance, time distribution, weighting) and bad numbers fail with one line naming the key.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration problem, reported as one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TestbedConfig(_Strict):
    kind: Literal["gmm", "digits", "cifar10"]
    teacher: str                         # a teacher file written by `sim teacher`; cifar10: NVIDIA's EDM pickle
    teacher_sha256: Optional[str] = None  # optional pin: the teacher file must have this checksum
    conditional: bool = False            # class-conditional generator; the teacher must have label_dim > 0
    classifier: Optional[str] = None     # digits only: feature network for FID/KID/IS (`sim classifier`)
    # cifar10 only (paper scale): the evaluation's files and how class labels are drawn
    inception: Optional[str] = None      # torch-fidelity's Inception-v3 weights (sim_core/assets.py: `inception`)
    inception_sha256: Optional[str] = None  # None: the published file's (sim_core/inception.py INCEPTION_SHA256)
    fid_ref: Optional[str] = None        # EDM's reference statistics cifar10-32x32.npz (mu, sigma of 50k train images)
    dataset: Optional[str] = None        # cifar-10-python.tar.gz: labels of training images for conditional runs
    labels: Literal["training_images", "uniform"] = "training_images"  # SiD/DI draw the labels of random
    #                                      training images (REFERENCE-CODE.md §8); EDM's generate.py draws uniformly


class MethodConfig(_Strict):
    name: str = "sim"
    time_dist: Optional[str] = None      # None: the method's default (sim_core/methods.py METHOD_DEFAULTS)
    time_dist_params: dict = Field(default_factory=dict)
    weighting: Optional[str] = None      # None: the method's default
    # SIM only
    distance: Optional[str] = None       # None: pseudo_huber (eq. B.13)
    distance_params: dict = Field(default_factory=dict)  # pseudo_huber c = 1e-3: SIM authors, SIM issue #5
    space: Optional[Literal["denoiser", "score"]] = None  # None: denoiser, as eq. B.13
    detach_direction: Optional[bool] = None  # ablation: stop the gradient through d'(y)
    # SiD only
    alpha: Optional[float] = None        # None: 1.2, SiD's published value; the SIM paper reproduces alpha = 1.0
    # DI only: the teacher and the online network in train mode inside the generator loss, dropout active with the
    # same masks in both (DI's gloss restores the RNG state between the two calls, REFERENCE-CODE.md §3).
    # None: true, as DI's code. It only matters for networks with dropout (the CIFAR-10 teachers: 0.13).
    train_mode_denoisers: Optional[bool] = None

    def loss_kwargs(self) -> dict:
        kw = dict(name=self.name, time_dist=self.time_dist, time_dist_params=self.time_dist_params,
                  weighting=self.weighting)
        for key in ("distance", "space", "detach_direction", "alpha", "train_mode_denoisers"):
            if getattr(self, key) is not None:
                kw[key] = getattr(self, key)
        if self.distance_params:
            kw["distance_params"] = self.distance_params
        return kw


class OnlineConfig(_Strict):
    time_dist: str = "p_edm"             # Table 5: p_EDM for the online network
    time_dist_params: dict = Field(default_factory=dict)
    weighting: str = "lambda_edm"        # Table 5: lambda_EDM
    steps_per_iter: int = Field(1, ge=1)  # SiD/DI reference loops: one psi-step per theta-step
    # Augmentation of the online network's inputs (the psi-step's generated images): the paper is silent; SiD and
    # DI pass EDM's AugmentPipe with CIFAR-10's setting (sim_core/augment.py) and p = 0.12 into the fake-score loss
    # (REFERENCE-CODE.md §2.2, §2.4, §3). 0: off. Needs image data and a network with EDM's 9 augment labels.
    augment_p: float = Field(0.0, ge=0.0, le=1.0)


class OptimConfig(_Strict):
    lr_gen: float = 1e-5                 # Table 5
    lr_online: float = 1e-5              # Table 5
    betas: tuple[float, float] = (0.0, 0.999)  # Table 5; written as floats (torch 2.14 rejects int 0)
    eps: float = 1e-8                    # Adam default, as SiD/DI in fp32
    batch_size: int = Field(256, ge=1)   # Table 5

    @field_validator("lr_gen", "lr_online", "eps")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"must be a positive finite number, got {v}")
        return v

    @field_validator("betas")
    @classmethod
    def _betas(cls, v):
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"Adam betas must lie in [0, 1), got {v}")
        return tuple(float(b) for b in v)


class EMAConfig(_Strict):
    halflife_kimg: float = Field(500.0, gt=0)  # EDM/SiD/DI: half-life 0.5 Mimg
    rampup_ratio: Optional[float] = Field(0.05, gt=0)  # EDM/SiD/DI: half-life <= 0.05 * images seen


class GeneratorConfig(_Strict):
    t_star: float = Field(2.5, gt=0)     # Table 5 / eq. B.4: g(z) = D_theta(z, t*), z ~ N(0, t*^2 I)


class NetworksConfig(_Strict):
    # None: the teacher network's own value (0.13 in the CIFAR-10 EDM checkpoints and SiD's default, REFERENCE-CODE
    # §2.4; none in the toy MLPs). A number is set on G and the online network (not the teacher, always in eval).
    dropout: Optional[float] = None

    @field_validator("dropout")
    @classmethod
    def _probability(cls, v):
        if v is not None and not 0.0 <= v < 1.0:
            raise ValueError(f"must lie in [0, 1), got {v}")
        return v


class PerfConfig(_Strict):
    """Speed switches for GPUs (applied by sim_core/precision.py). The defaults reproduce the reference code."""
    tf32: bool = False                   # EDM/SiD training_loop: allow_tf32 = False, fp32 as the reference code
    bf16: bool = False                   # bfloat16 autocast around the network passes; losses stay fp32
    channels_last: bool = False          # memory format of the networks and the image batches
    grad_accum: int = Field(1, ge=1)     # micro-batches per process per step (the paper's batch 256 on < 4 GPUs)
    cudnn_benchmark: bool = True         # EDM/SiD training_loop: torch.backends.cudnn.benchmark = True


class TrainConfig(_Strict):
    iterations: Optional[int] = Field(None, ge=1)  # or kimg: exactly one of the two
    kimg: Optional[float] = Field(None, gt=0)     # generator images / 1000 (as SiD): iterations = ceil(kimg*1000/batch)
    # "every": evaluate every eval_every steps; "sid": when the image count crosses each 100 kimg up to 1 Mimg, then
    # each 500 kimg (SiD: tick 10 kimg, metrics and snapshot at ticks 10..100 and every 50 ticks), eval_every unused
    eval_schedule: Literal["every", "sid"] = "every"
    checkpoint_every: int = Field(0, ge=0)  # 0: only at the end and on a signal
    snapshot_every: int = Field(0, ge=0)    # EMA generator snapshots kept for evaluation; 0: none
    eval_every: int = Field(0, ge=0)        # 0: evaluate only at the end
    log_every: int = Field(10, ge=1)
    sample_every: int = Field(0, ge=0)      # sample grid of the EMA generator; 0: only at the end
    progress: bool = True

    @model_validator(mode="after")
    def _length(self):
        if self.iterations is None and self.kimg is None:
            raise ValueError("set iterations or kimg (exactly one)")
        return self


class EvalConfig(_Strict):
    num_samples: int = Field(2000, ge=2)   # generator samples per evaluation
    batch_size: int = Field(500, ge=1)
    seed: int = 12345                      # evaluation noise is fixed, independent of training
    kid_subsets: int = Field(20, ge=1)     # digits: KID subsets (torch-fidelity's 100 costs ~11 s per evaluation)


class RunConfig(_Strict):
    name: str
    scale: Literal["smoke", "toy", "paper"] = "toy"
    seed: int = 0
    device: str = "cpu"
    dtype: Literal["float32", "float64"] = "float32"  # fp32 as the reference code (SiD --fp16 0)
    threads: Optional[int] = 1             # torch.set_num_threads; 1 is fastest for small nets on 2 cores
    testbed: TestbedConfig
    method: MethodConfig = Field(default_factory=MethodConfig)
    online: OnlineConfig = Field(default_factory=OnlineConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    ema: EMAConfig = Field(default_factory=EMAConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    train: TrainConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    networks: NetworksConfig = Field(default_factory=NetworksConfig)
    perf: PerfConfig = Field(default_factory=PerfConfig)

    @model_validator(mode="after")
    def _names_resolve(self):
        # Build every named component once so that unknown names fail here, before any work.
        from .methods import build_generator_loss
        from .time_dists import build_time_distribution
        from .weightings import get_weighting
        try:
            build_generator_loss(warn=False, **self.method.loss_kwargs())
        except ValueError as e:
            raise ValueError(f"method: {e}") from None
        try:
            build_time_distribution(self.online.time_dist, **self.online.time_dist_params)
            get_weighting(self.online.weighting)
        except ValueError as e:
            raise ValueError(f"online: {e}") from None
        if self.testbed.kind != "digits" and self.testbed.classifier:
            raise ValueError("testbed.classifier is only used by the digits testbed")
        self._resolve_length()
        if self.optim.batch_size % self.perf.grad_accum:
            raise ValueError(f"perf.grad_accum={self.perf.grad_accum} does not divide optim.batch_size="
                             f"{self.optim.batch_size}: choose a divisor")
        if self.perf.bf16 and self.dtype != "float32":
            raise ValueError(f"perf.bf16 autocasts float32 networks; dtype is {self.dtype}: use dtype float32")
        return self

    def _resolve_length(self) -> None:
        """train.kimg -> train.iterations. A resolved config (as written to config.yaml) holds both; they must agree."""
        t = self.train
        if t.kimg is None:
            return
        nimg = round(t.kimg * 1000)  # whole images: kimg is read to 3 decimals
        if nimg < 1:
            raise ValueError(f"train.kimg={t.kimg} is less than one image")
        iterations = -(-nimg // self.optim.batch_size)  # ceil: the run ends once kimg images are reached
        if t.iterations is None:
            t.iterations = iterations
        elif t.iterations != iterations:
            raise ValueError(f"train.iterations={t.iterations} and train.kimg={t.kimg} (= {iterations} iterations at "
                             f"batch {self.optim.batch_size}) disagree: set only one")

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def hash(self) -> str:
        """SHA-256 of the resolved config minus presentation-only keys (progress bar, threads)."""
        d = self.to_dict()
        # A key added after the first hashed schema is left out while it has its default, so the run directories
        # keyed by older hashes stay valid whatever is added later (perf, networks, train.kimg, testbed.fid_ref, ...).
        for key, field in type(self).model_fields.items():
            if key not in _HASHED_V1[""] and getattr(self, key) == field.get_default(call_default_factory=True):
                d.pop(key)
        for section, names in _HASHED_V1.items():
            if section:
                sub = getattr(self, section)
                for key, field in type(sub).model_fields.items():
                    if key not in names and getattr(sub, key) == field.get_default(call_default_factory=True):
                        d[section].pop(key)
        d["train"].pop("progress", None)
        d.pop("threads", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# The keys of the first hashed config schema (commit 1aba046), per section ("" is the top level). RunConfig.hash()
# leaves out any other key while it holds its default.
_HASHED_V1 = {
    "": {"name", "scale", "seed", "device", "dtype", "threads", "testbed", "method", "online", "optim", "ema",
         "generator", "train", "eval"},
    "testbed": {"kind", "teacher", "teacher_sha256", "conditional", "classifier"},
    "method": {"name", "time_dist", "time_dist_params", "weighting", "distance", "distance_params", "space",
               "detach_direction", "alpha"},
    "online": {"time_dist", "time_dist_params", "weighting", "steps_per_iter"},
    "optim": {"lr_gen", "lr_online", "betas", "eps", "batch_size"},
    "ema": {"halflife_kimg", "rampup_ratio"},
    "generator": {"t_star"},
    "train": {"iterations", "checkpoint_every", "snapshot_every", "eval_every", "log_every", "sample_every",
              "progress"},
    "eval": {"num_samples", "batch_size", "seed", "kid_subsets"},
}


def _format_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"


def parse_config(data: dict) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"bad config: {_format_error(e)}") from None
    except ValueError as e:  # unknown names raised by the registries inside the validator
        raise ConfigError(f"bad config: {e}") from None


def set_path(data: dict, dotted: str, value) -> None:
    """Apply an override ``a.b.c=value`` to a nested dict."""
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"bad override {dotted!r}: {k} is not a section")
    cur[keys[-1]] = value


def read_yaml(path: str | Path, what: str = "config") -> dict:
    """A YAML file as a dict; a missing or unparsable file is one ConfigError line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {str(e).splitlines()[0]}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    data = read_yaml(path)
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"bad override {ov!r}: expected key=value")
        key, raw = ov.split("=", 1)
        set_path(data, key, yaml.safe_load(raw))
    return parse_config(data)
