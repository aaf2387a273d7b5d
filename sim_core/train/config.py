"""Typed run configuration, validated before any work starts.

Every default below carries its source. A YAML file is read into :class:`RunConfig`; the ``method`` section is the
typed config of the method it names (sim_core/core/methods.py: SIM's distance and space, SiD's alpha, DI's
switches) and the ``testbed`` section that of the testbed it names (sim_core/testbeds/). Unknown keys, unknown
names and bad numbers fail with one line naming the key. Validation imports no torch.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, Field, SerializeAsAny, ValidationError, field_validator, model_validator
from pydantic_core import to_jsonable_python

from sim_core.core.methods import METHODS, MethodConfig, StepParts
from sim_core.errors import ConfigError
from sim_core.registry import UnknownNameError
from sim_core.schema import Strict, format_error, read_yaml, set_path, split_pair
from sim_core.testbeds import TESTBEDS
from sim_core.testbeds.spec import TestbedConfig

# A field marked NOT_HASHED never enters RunConfig.hash() (presentation only). A field added to the schema later is
# marked HASHED_UNLESS_DEFAULT: the hash leaves it out while it holds its default, so that the run directories
# named by older hashes stay valid whatever is added.
NOT_HASHED = {"hash": "never"}
MAX_SEED = 2 ** 63 - 1  # seeds go to torch generators, which take 64-bit integers (derived seeds add to them)
HASHED_UNLESS_DEFAULT = {"hash": "unless_default"}


class OnlineConfig(StepParts):
    time_dist: str = "p_edm"             # Table 5: p_EDM for the online network
    time_dist_params: dict = Field(default_factory=dict)
    weighting: str = "lambda_edm"        # Table 5: lambda_EDM
    steps_per_iter: int = Field(1, ge=1)  # SiD/DI reference loops: one psi-step per theta-step
    # Augmentation of the online network's inputs (the psi-step's generated images): the paper is silent; SiD and
    # DI pass EDM's AugmentPipe with CIFAR-10's setting (sim_core/train/augment.py) and p = 0.12 into D_psi's loss
    # (docs/reference-code.md#sids-fake-score-loss-and-augmentation). 0: off. Needs image data and a network with
    # EDM's 9 augment labels.
    augment_p: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _builds(self):
        self.loss()
        return self

    def loss(self):
        """The psi-step loss of this section."""
        from sim_core.core.losses import PsiLoss
        return PsiLoss(self.time_distribution(), self.weighting)



class OptimConfig(Strict):
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


class EMAConfig(Strict):
    halflife_kimg: float = Field(500.0, gt=0)  # EDM/SiD/DI: half-life 0.5 Mimg
    rampup_ratio: Optional[float] = Field(0.05, gt=0)  # EDM/SiD/DI: half-life <= 0.05 * images seen


class GeneratorConfig(Strict):
    t_star: float = Field(2.5, gt=0)     # Table 5 / eq. B.4: g(z) = D_theta(z, t*), z ~ N(0, t*^2 I)


class NetworksConfig(Strict):
    # None: the teacher network's own value (0.13 in the CIFAR-10 EDM checkpoints and SiD's default,
    # docs/reference-code.md#sids-hyper-parameters; none in the toy MLPs). A number is set on G and D_psi (not the
    # teacher, which runs in eval mode).
    dropout: Optional[float] = None

    @field_validator("dropout")
    @classmethod
    def _probability(cls, v):
        if v is not None and not 0.0 <= v < 1.0:
            raise ValueError(f"must lie in [0, 1), got {v}")
        return v


class PerfConfig(Strict):
    """Speed switches for GPUs (applied by sim_core/train/precision.py). The defaults reproduce the reference code."""
    tf32: bool = False                   # EDM/SiD training_loop: allow_tf32 = False, fp32 as the reference code
    bf16: bool = False                   # bfloat16 autocast around the network passes; losses stay fp32
    channels_last: bool = False          # memory format of the networks and the image batches
    grad_accum: int = Field(1, ge=1)     # micro-batches per process per step (the paper's batch 256 on < 4 GPUs)
    cudnn_benchmark: bool = True         # EDM/SiD training_loop: torch.backends.cudnn.benchmark = True
    # activation checkpointing in diffusers networks (PixArt): Table 3's batch on A100s (paper B.3: "gradient
    # checkpointing"); added after the first runs: left out of the hash while off
    checkpointing: bool = Field(False, json_schema_extra=HASHED_UNLESS_DEFAULT)


class TrainConfig(Strict):
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
    progress: bool = Field(True, json_schema_extra=NOT_HASHED)  # presentation only

    @model_validator(mode="after")
    def _length(self):
        if self.iterations is None and self.kimg is None:
            raise ValueError("set iterations or kimg (exactly one)")
        return self


class EvalConfig(Strict):
    num_samples: int = Field(2000, ge=2)   # generator samples per evaluation
    batch_size: int = Field(500, ge=1)
    seed: int = Field(12345, ge=0, le=MAX_SEED)  # evaluation noise is fixed, independent of training
    kid_subsets: int = Field(20, ge=1)     # digits: KID subsets (torch-fidelity's 100 costs ~11 s per evaluation)


class RunConfig(Strict):
    name: str
    scale: Literal["smoke", "toy", "paper"] = "toy"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: str = "cpu"                    # cpu, cuda or cuda:N; a GPU must be there (loop.py check_device)
    dtype: Literal["float32", "float64"] = "float32"  # fp32 as the reference code (SiD --fp16 0)
    # torch.set_num_threads; 1 is fastest for small nets on 2 cores (docs/environment.md#threads-on-small-cpus)
    threads: Optional[int] = Field(1, json_schema_extra=NOT_HASHED)
    testbed: SerializeAsAny[TestbedConfig]
    method: SerializeAsAny[MethodConfig] = Field(default_factory=lambda: METHODS.get("sim")())
    online: OnlineConfig = Field(default_factory=OnlineConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    ema: EMAConfig = Field(default_factory=EMAConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    train: TrainConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    networks: NetworksConfig = Field(default_factory=NetworksConfig)
    perf: PerfConfig = Field(default_factory=PerfConfig)

    @field_validator("device")
    @classmethod
    def _device(cls, v):
        if not re.fullmatch(r"cpu|cuda(:\d+)?", v):
            raise ValueError(f"must be cpu, cuda or cuda:N, got {v!r}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _typed_sections(cls, data):
        """The method and testbed sections as the typed configs of the names they give."""
        if not isinstance(data, dict):
            raise ValueError(f"a run config is a mapping of sections, got {type(data).__name__}")
        data = dict(data)
        if "method" in data:
            data["method"] = _typed("method", data["method"], METHODS, "name", default="sim")
        if "testbed" in data:
            data["testbed"] = _typed("testbed", data["testbed"], TESTBEDS, "kind", spec=lambda s: s.config)
        return data

    @model_validator(mode="after")
    def _consistent(self):
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
        """SHA-256 of the resolved config without the NOT_HASHED fields and the HASHED_UNLESS_DEFAULT fields that
        hold their defaults."""
        return hashlib.sha256(json.dumps(_hashed(self), sort_keys=True).encode()).hexdigest()[:16]


def _typed(section: str, data, registry, key: str, default=None, spec=lambda entry: entry):
    """A section as the model its registry entry names (``data[key]``); one line on any problem."""
    if isinstance(data, BaseModel):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{section}: must be a mapping, got {type(data).__name__}")
    name = data.get(key, default)
    try:
        model = spec(registry.get(name))
    except UnknownNameError as e:
        raise ValueError(f"{section}: {e}") from None
    extra = sorted(set(data) - set(model.model_fields))
    if extra:
        raise ValueError(f"{section}: {section} {name} does not take {', '.join(extra)}; it takes "
                         f"{', '.join(model.model_fields)}")
    try:
        return model.model_validate({key: name, **data})
    except ValidationError as e:
        raise ValueError(f"{section}.{format_error(e)}" if e.errors()[0]["loc"] else f"{section}: {format_error(e)}")\
            from None


def _hashed(model: BaseModel) -> dict:
    out = {}
    for name, field in type(model).model_fields.items():
        value, mark = getattr(model, name), (field.json_schema_extra or {}).get("hash")
        if mark == "never" or (mark == "unless_default" and value == field.get_default(call_default_factory=True)):
            continue
        out[name] = _hashed(value) if isinstance(value, BaseModel) else to_jsonable_python(value)
    return out


def parse_config(data: dict) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"bad config: {format_error(e)}") from None
    except ValueError as e:  # unknown names raised by the registries inside the validators
        raise ConfigError(f"bad config: {e}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """A config file with ``key.sub=value`` overrides. A value is read as YAML (numbers, booleans, lists), except
    for a field that holds text, which takes it as written (an all-digit checksum stays a string)."""
    data = read_yaml(path)
    for ov in overrides or []:
        key, raw = split_pair(ov, "bad override")
        if _text_field(data, key):
            value = raw
        else:
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError as e:
                raise ConfigError(f"bad override {ov!r}: the value is not YAML: {str(e).splitlines()[0]}") from None
        set_path(data, key, value)
    return parse_config(data)


def _text_field(data: dict, dotted: str) -> bool:
    """Whether ``dotted`` names a str (or optional str) field of the run config the data describes."""
    model, section = RunConfig, data
    keys = dotted.split(".")
    for i, key in enumerate(keys):
        if model is RunConfig and key in ("method", "testbed"):
            sub = section.get(key) if isinstance(section.get(key), dict) else {}
            try:
                model = METHODS.get(sub.get("name", "sim")) if key == "method" else TESTBEDS.get(sub.get("kind")).config
            except UnknownNameError:
                return False
            section = sub
            continue
        field = model.model_fields.get(key) if model is not None else None
        if field is None:
            return False
        if i == len(keys) - 1:
            return field.annotation in (str, Optional[str])
        model = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) \
            else None
        section = section.get(key) if isinstance(section.get(key), dict) else {}
    return False
