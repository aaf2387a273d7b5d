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
    kind: Literal["gmm", "digits"]
    teacher: str                         # path to a teacher file written by `sim teacher`
    teacher_sha256: Optional[str] = None  # optional pin: the teacher file must have this checksum
    conditional: bool = False            # class-conditional generator; the teacher must have label_dim > 0
    classifier: Optional[str] = None     # digits only: feature network for FID/KID/IS (`sim classifier`)


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

    def loss_kwargs(self) -> dict:
        kw = dict(name=self.name, time_dist=self.time_dist, time_dist_params=self.time_dist_params,
                  weighting=self.weighting)
        for key in ("distance", "space", "detach_direction", "alpha"):
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


class TrainConfig(_Strict):
    iterations: int = Field(..., ge=1)
    checkpoint_every: int = Field(0, ge=0)  # 0: only at the end and on a signal
    snapshot_every: int = Field(0, ge=0)    # EMA generator snapshots kept for evaluation; 0: none
    eval_every: int = Field(0, ge=0)        # 0: evaluate only at the end
    log_every: int = Field(10, ge=1)
    sample_every: int = Field(0, ge=0)      # sample grid of the EMA generator; 0: only at the end
    progress: bool = True


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
        return self

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def hash(self) -> str:
        """SHA-256 of the resolved config minus presentation-only keys (progress bar, threads)."""
        d = self.to_dict()
        d["train"].pop("progress", None)
        d.pop("threads", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


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
