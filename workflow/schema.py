"""Schema of a scale's sweep config (configs/scales/*.yaml): validated when the DAG is built, so a typo or a
bad value fails before anything runs, with one line naming the key."""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from sim_core.errors import ConfigError
from sim_core.schema import Strict, format_error, read_yaml
from sim_core.testbeds import TESTBEDS
from workflow.report import EXPERIMENTS


def _testbed(name: str) -> str:
    TESTBEDS.get(name)  # an unknown name lists the valid ones
    return name


TestbedName = Annotated[str, AfterValidator(_testbed)]  # a registered testbed (sim_core/testbeds/__init__.py)


class AssetSpec(Strict):
    """An asset the DAG builds: what the testbed's builder of that kind takes (sim_core/testbeds/<name>/)."""
    kind: str                          # e.g. teacher, classifier: the testbed's builders
    testbed: TestbedName
    conditional: bool = False
    iterations: Optional[int] = Field(None, ge=1)
    batch_size: Optional[int] = Field(None, ge=1)
    seed: int = 0
    needs: dict[str, str] = Field(default_factory=dict)  # builder argument -> another asset it is built from

    @model_validator(mode="after")
    def _buildable(self):
        builders = TESTBEDS.get(self.testbed).builders
        if self.kind not in builders:
            raise ValueError(f"testbed {self.testbed} builds no {self.kind!r} asset; it builds "
                             f"{', '.join(builders) or 'none'}")
        return self


class Row(Strict):
    label: str
    method: dict                       # the RunConfig 'method' section
    overrides: dict = Field(default_factory=dict)  # any other RunConfig values for this row
    seeds: Optional[list[int]] = None  # None: the experiment's seeds


class Experiment(Strict):
    testbed: TestbedName
    conditional: bool = False                      # its class-conditional variant
    lrs: list[float] = Field(..., min_length=1)    # each used for both networks (as Table 5)
    seeds: list[int] = Field(..., min_length=1)
    rows: list[Row] = Field(..., min_length=1)
    teacher_nfe: list[int] = Field(default_factory=list)   # teacher rows: the testbed's sampler at these NFE/steps
    teacher_seeds: list[int] = Field(default_factory=lambda: [0])
    overrides: dict = Field(default_factory=dict)  # RunConfig values for every row (a row's own overrides win)
    runs_per_job: Optional[int] = Field(None, ge=1)  # None: the scale's; fewer for runs that take longer

    @field_validator("lrs")
    @classmethod
    def _lrs(cls, v):
        if not all(lr > 0 for lr in v):
            raise ValueError(f"learning rates must be > 0, got {v}")
        return v

    @model_validator(mode="after")
    def _labels_unique(self):
        labels = [r.label for r in self.rows]
        if len(set(labels)) != len(labels):
            raise ValueError(f"row labels must be unique, got {labels}")
        spec = TESTBEDS.get(self.testbed)
        spec.dataset(self.conditional)  # the variant exists
        try:
            spec.check_teacher_steps(self.teacher_nfe)
        except ValueError as e:
            raise ValueError(f"teacher_nfe: {e}") from None
        return self


class AssetFiles(Strict):
    """Where the paper-scale files live (sim_core/assets.py MANIFEST: teacher pickles, FID reference
    statistics, Inception weights, CIFAR-10). `snakemake download_assets` fetches what is missing into ``dir``;
    clusters without internet put the files there, or anywhere with ``paths``."""
    dir: str = "data/paper-assets"          # outside results/: `make clean-results` keeps the downloads
    paths: dict[str, str] = Field(default_factory=dict)   # asset name -> a file elsewhere
    sha256: dict[str, str] = Field(default_factory=dict)  # asset name -> the checksum it must have (wins over all)

    @model_validator(mode="after")
    def _known_names_and_checksums(self):
        from sim_core.assets import _user_sha256, manifest_names, resolve_paths
        resolve_paths(self.dir, self.paths)  # unknown names: one line listing the valid ones
        _user_sha256(self.sha256, {n: None for n in manifest_names()})  # 64 hex digits each
        return self


JOB_KINDS = ("teacher", "distill", "teacher_rows", "aggregate")  # teacher: the toy assets; teacher_rows: evaluation


class Resources(Strict):
    """Per-job resources of one kind of job. SLURM uses all of them; the local executor only timeout_min and
    tasks_per_node (data-parallel processes on this machine)."""
    timeout_min: int = Field(60, ge=1)
    nodes: int = Field(1, ge=1)              # a distillation run spans nodes x tasks_per_node processes
    tasks_per_node: int = Field(1, ge=1)     # processes per node: one per GPU for data-parallel distillation
    cpus_per_task: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)      # requested as --gres=gpu:N, or gpu:TYPE:N with gpu_type
    gpu_type: Optional[str] = None           # e.g. a100: --gres=gpu:a100:N
    mem_gb: float = Field(4, gt=0)
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None                # --qos
    constraint: Optional[str] = None         # --constraint, e.g. "a100&ib"
    sbatch_extra: dict[str, Union[str, int, bool]] = Field(default_factory=dict)  # more #SBATCH options:
    #                                          {reservation: r1, exclusive: true} -> --reservation=r1 --exclusive
    setup: list[str] = Field(default_factory=list)  # shell lines run before the job: module load, conda activate
    max_requeues: int = Field(3, ge=0)       # time limits a Checkpointable job may hit before it fails for good

    @field_validator("gpu_type", "qos", "constraint", "partition", "account")
    @classmethod
    def _one_word(cls, v):
        if v is not None and (not v or any(c.isspace() for c in v)):
            raise ValueError(f"must be one word without spaces, got {v!r}")
        return v


class ScaleConfig(Strict):
    scale: Literal["smoke", "toy", "paper"]
    results_dir: str = "results"
    tracking_uri: Optional[str] = None      # None: sqlite:///<results_dir>/mlflow.db, created once before jobs;
    # "server": an MLflow server the DAG starts under <results_dir>/mlflow-server (for clusters: many jobs logging at
    # once); or any MLflow URI
    tracking_server_host: str = "127.0.0.1"  # where the managed server listens: loopback unless jobs run on other
    #                                         nodes (then 0.0.0.0 or the internal interface; docs/environment.md)
    tracking_server_port: int = Field(0, ge=0, le=65535)  # 0: a free port, kept across restarts while it is free
    tracking_server_advertise: Optional[str] = None  # the name jobs reach the server by; None: the bound address
    #                                                  (the FQDN of this machine when bound to all interfaces)
    executor: Literal["local", "slurm"] = "local"
    runs_per_job: int = Field(1, ge=1)      # sweep points run one after another in one submitit job
    final_eval_seeds: list[int] = Field(default_factory=lambda: [1000])
    final_eval_protocol: Optional[Literal["edm", "sid"]] = None  # CIFAR-10: FID reporting protocol of the final
    # evaluation (sim_core/testbeds/cifar10/image_metrics.py): EDM's min of 3 seed ranges or SiD's mean ± std of 10
    # trials
    assets: dict[str, AssetSpec] = Field(default_factory=dict)   # built by the DAG (toy teachers, classifier)
    asset_files: Optional[AssetFiles] = None                     # downloaded (paper scale)
    base: dict = Field(default_factory=dict)  # merged into every run's config
    experiments: dict[str, Experiment]
    resources: dict[str, Resources] = Field(default_factory=dict)  # keys: JOB_KINDS (e.g. Table 5's 4 GPUs)
    # Per kind of job, under `resources` (a profile's cluster defaults: partition, memory, time limits); merged
    # key by key: Resources' own defaults < default_resources < resources < --config resources=...
    default_resources: dict[str, Resources] = Field(default_factory=dict)

    @field_validator("resources", "default_resources")
    @classmethod
    def _known_kinds(cls, v):
        bad = set(v) - set(JOB_KINDS)
        if bad:
            raise ValueError(f"unknown job kind(s) {sorted(bad)}; valid: {', '.join(JOB_KINDS)}")
        return v

    @model_validator(mode="after")
    def _known_needs(self):
        for name, a in self.assets.items():
            bad = sorted(set(a.needs.values()) - set(self.assets))
            if bad or name in a.needs.values():
                raise ValueError(f"assets.{name}.needs: {bad or [name]} must be other assets of this scale; "
                                 f"it has {', '.join(sorted(self.assets))}")
        return self

    @model_validator(mode="after")
    def _known_experiments(self):
        bad = set(self.experiments) - set(EXPERIMENTS)
        if bad:
            raise ValueError(f"unknown experiment(s) {sorted(bad)}; valid names: {', '.join(EXPERIMENTS)}")
        from sim_core.assets import manifest_names
        from sim_core.train.config import EvalConfig
        downloaded = set(manifest_names())
        for name, e in self.experiments.items():
            spec = TESTBEDS.get(e.testbed)
            files = spec.asset_names(e.conditional) & downloaded
            if files and self.asset_files is None:
                raise ValueError(f"experiments.{name} uses {e.testbed}, whose files {sorted(files)} are downloaded: "
                                 "asset_files (where they are) is required")
            try:
                spec.protocol(EvalConfig(), self.final_eval_seeds, self.final_eval_protocol)
            except ValueError as err:
                raise ValueError(f"experiments.{name}: {err}") from None
        return self

    def job_resources(self, kind: str) -> Resources:
        """Resources of one kind of job: default_resources, then resources, key by key."""
        merged = self.default_resources[kind].model_dump(exclude_unset=True) if kind in self.default_resources else {}
        if kind in self.resources:
            merged.update(self.resources[kind].model_dump(exclude_unset=True))
        return Resources(**merged)


def load_scale(path) -> ScaleConfig:
    data = read_yaml(path, "scale config")
    try:
        return ScaleConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"bad scale config {path}: {format_error(e)}") from None
