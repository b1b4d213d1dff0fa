"""The study's configuration: pydantic models for one YAML file.

A config names the models (teachers, compressors, students), the training
methods, the data sources, the evaluation suites, the cluster profile, and
the grid blocks that expand to training cells. Every model is frozen and
rejects unknown keys: Axolotl-style silent drops of misspelled keys are the
failure mode this guards against.

Which fields are *identity* (they change a step's cache key) is decided in
`plan.py`, where each node picks its versioned values; here we only describe
and validate.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
CELL_AXES = ("teacher", "student", "method", "data")
JOB_KINDS = ("vllm", "train", "eval", "cpu")


class ConfigError(ValueError):
    """A config that cannot be used. The message names the file and the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServeSpec(Strict):
    """How a model is served for generation (vLLM on the cluster, paper H.2)."""

    tensor_parallel: int = Field(1, ge=1)
    data_parallel: int = Field(1, ge=1)
    max_model_len: int = Field(16384, ge=256)
    gpu_memory_utilization: float = Field(0.92, gt=0, le=1)
    reasoning_parser: str | None = None
    startup_timeout_s: int = Field(2400, ge=10)

    @property
    def gpus(self) -> int:
        return self.tensor_parallel * self.data_parallel


class SamplingSpec(Strict):
    temperature: float = Field(ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    seed: int = 0


class TeacherSpec(Strict):
    model: str
    label: str
    serve: ServeSpec
    sampling: SamplingSpec
    rejection_rounds: int = Field(4, ge=1, le=64)
    system_prompt: str | None = None


class CompressorSpec(Strict):
    model: str
    label: str
    tokenizer: str | None = None  # defaults to `model`
    serve: ServeSpec
    sampling: SamplingSpec
    prompt: str
    # Future-work knob from the paper: a prompt per domain overrides `prompt`.
    domain_prompts: dict[str, str] = {}

    @field_validator("prompt")
    @classmethod
    def _prompt_has_slots(cls, v: str) -> str:
        for slot in ("{question}", "{trace}"):
            if slot not in v:
                raise ValueError(f"compression prompt must contain {slot}")
        return v


class StudentSpec(Strict):
    model: str
    label: str
    # FSDP2 TRANSFORMER_BASED_WRAP class (paper H.3); None for students that fit one GPU.
    decoder_layer: str | None = None
    fsdp: bool = False
    gpus: int = Field(ge=1)
    # Per-data-source GPU counts where Table 11 differs from `gpus`.
    gpus_by_data: dict[str, int] = {}
    methods: list[str] | None = None  # restrict which methods apply (gpt-oss-20B: full only)
    method_overrides: dict[str, MethodOverride] = {}


class MethodOverride(Strict):
    """Per-student changes to a method (e.g. a smaller learning rate for one size)."""

    learning_rate: float | None = Field(None, gt=0, lt=1)
    optimizer: str | None = None
    gradient_checkpointing: bool | None = None


class LoraSpec(Strict):
    r: int = Field(ge=1)
    alpha: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)
    target_modules: list[str]


class MethodSpec(Strict):
    kind: Literal["lora", "full"]
    label: str
    learning_rate: float = Field(gt=0, lt=1)
    optimizer: str
    gradient_checkpointing: bool = True
    lora: LoraSpec | None = None

    @model_validator(mode="after")
    def _lora_iff_kind(self) -> MethodSpec:
        if self.kind == "lora" and self.lora is None:
            raise ValueError("kind 'lora' needs a 'lora' block (r, alpha, dropout, target_modules)")
        if self.kind == "full" and self.lora is not None:
            raise ValueError("kind 'full' must not have a 'lora' block")
        return self


class TrainingSpec(Strict):
    """Hyperparameters shared by every cell (paper section 4 and H.3)."""

    backend: Literal["axolotl", "trl"] = "axolotl"
    sequence_len: int = Field(ge=16)
    sample_packing: bool = True
    pad_to_sequence_len: bool = True
    micro_batch_size: int = Field(ge=1)
    gradient_accumulation_steps: int = Field(ge=1)
    num_epochs: float = Field(gt=0)
    max_steps: int | None = Field(None, ge=1)
    # checkpoint every N steps so a killed CPU (TRL) cell resumes; not identity (resume is exact)
    save_steps: int | None = Field(None, ge=1)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(ge=0, lt=1)
    val_set_size: float = Field(0.0, ge=0, lt=1)
    bf16: bool = True
    tf32: bool = True
    flash_attention: bool = True
    plugins: list[str] = []
    chat_template: str = "tokenizer_default"
    eot_tokens: list[str] = ["<|im_end|>"]
    train_on_eot: Literal["turn", "all", "last"] = "turn"
    split_thinking: bool = True
    seed: int = 42


DataKind = Literal["raw", "compressed", "answer_only", "truncated_to_match", "prefix_fraction"]


class DataSourceSpec(Strict):
    kind: DataKind
    label: str
    compressor: str | None = None
    fraction: float | None = Field(None, gt=0, le=1)

    @model_validator(mode="after")
    def _fields_for_kind(self) -> DataSourceSpec:
        needs_compressor = self.kind in ("compressed", "truncated_to_match")
        if needs_compressor and not self.compressor:
            raise ValueError(f"data source kind '{self.kind}' needs 'compressor'")
        if not needs_compressor and self.compressor:
            raise ValueError(f"data source kind '{self.kind}' takes no 'compressor'")
        if (self.kind == "prefix_fraction") != (self.fraction is not None):
            raise ValueError("'fraction' is required for kind 'prefix_fraction' and only for it")
        return self

    @property
    def uses_trace(self) -> bool:
        return self.kind != "answer_only"


class DatasetSpec(Strict):
    """One benchmark. `source` is a HF dataset id or a local Parquet/JSONL path."""

    source: str
    answer_type: Literal["numeric", "letter", "boolean", "latex"]
    domain: str
    train_split: str | None = None
    eval_split: str | None = None
    subset: str | None = None
    limit: int | None = Field(None, ge=1)
    eval_limit: int | None = Field(None, ge=1)  # rows of eval_split (default: `limit`)

    def limit_for(self, split: str) -> int | None:
        """How many rows of `split` to load (None: all)."""
        if split == self.eval_split and self.eval_limit is not None:
            return self.eval_limit
        return self.limit


class EvaluationSpec(Strict):
    max_tokens: int = Field(8192, ge=1)
    temperature: float = Field(0.0, ge=0)
    batch_size: int = Field(256, ge=1)
    # group label -> datasets counted in it (paper: Math, Science, Medicine, ...)
    groups: dict[str, list[str]]
    serve: ServeSpec = ServeSpec()


class JudgeSpec(Strict):
    enabled: bool = False
    model: str
    serve: ServeSpec
    max_tokens: int = Field(4096, ge=1)
    original_max_chars: int = Field(40000, ge=100)
    compressed_max_chars: int = Field(12000, ge=100)
    max_attempts: int = Field(3, ge=1)


class JobResources(Strict):
    time_limit: str = "24:00:00"
    cpus_per_task: int = Field(8, ge=1)
    mem: str = "64G"
    # Environment activation for this kind of job: a venv dir or a container image.
    env: str | None = None
    container: str | None = None

    @field_validator("time_limit")
    @classmethod
    def _slurm_time(cls, v: str) -> str:
        if not re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}", v):
            raise ValueError("time_limit must look like D-HH:MM:SS, HH:MM:SS or MM")
        return v


class ClusterProfile(Strict):
    backend: Literal["local", "slurm"] = "local"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(8, ge=0)
    gpu_type: str | None = None
    # how a GPU request is written: --gpus-per-node=N or --gres=gpu[:type]:N
    gpu_request: Literal["gpus-per-node", "gres"] = "gpus-per-node"
    max_concurrent_gpu_jobs: int | None = Field(None, ge=1)
    local_workers: int = Field(2, ge=1)
    jobs: dict[Literal["vllm", "train", "eval", "cpu"], JobResources] = {}
    # What the serving/eval job templates start before their client: `vllm` (vllm serve);
    # `cpu`: the project's CPU server (generation/local_server.py) for mini-world models on a
    # cluster without GPUs (the dev cluster); `stage`: no server in the job, the stage serves
    # its model itself (one machine). None: vllm on Slurm, stage on the local backend.
    serve_with: Literal["vllm", "cpu", "stage"] | None = None

    def job(self, kind: str) -> JobResources:
        return self.jobs.get(kind, JobResources())  # type: ignore[call-overload]

    @property
    def server(self) -> Literal["vllm", "cpu", "stage"]:
        if self.serve_with is not None:
            return self.serve_with
        return "stage" if self.backend == "local" else "vllm"


class GridBlock(Strict):
    """Cartesian product of the four axes, minus `exclude` patterns."""

    name: str
    teachers: list[str]
    students: list[str]
    methods: list[str]
    data: list[str]
    exclude: list[dict[Literal["teacher", "student", "method", "data"], str]] = []


class StudyConfig(Strict):
    name: str
    description: str = ""
    seed: int = 0
    store_root: str = "artifacts"
    teachers: dict[str, TeacherSpec]
    compressors: dict[str, CompressorSpec]
    students: dict[str, StudentSpec]
    methods: dict[str, MethodSpec]
    training: TrainingSpec
    data_sources: dict[str, DataSourceSpec]
    datasets: dict[str, DatasetSpec]
    evaluation: EvaluationSpec
    judge: JudgeSpec | None = None
    cluster: ClusterProfile = ClusterProfile()
    grid: list[GridBlock]

    @field_validator("teachers", "compressors", "students", "methods", "data_sources", "datasets")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not NAME_RE.match(name):
                raise ValueError(f"name {name!r} must match {NAME_RE.pattern} (it is used in paths and node ids)")
        return v

    @model_validator(mode="after")
    def _references(self) -> StudyConfig:
        for dname, ds in self.data_sources.items():
            if ds.compressor and ds.compressor not in self.compressors:
                raise ValueError(_unknown(f"data_sources.{dname}.compressor", ds.compressor, self.compressors))
        for group, names in self.evaluation.groups.items():
            for n in names:
                if n not in self.datasets:
                    raise ValueError(_unknown(f"evaluation.groups.{group}", n, self.datasets))
        axes: dict[str, dict[str, Any]] = {"teachers": self.teachers, "students": self.students,
                                           "methods": self.methods, "data": self.data_sources}
        for i, block in enumerate(self.grid):
            for axis, known in axes.items():
                for name in getattr(block, axis):
                    if name not in known:
                        raise ValueError(_unknown(f"grid[{i}] ({block.name}).{axis}", name, known))
        for sname, st in self.students.items():
            for dname in st.gpus_by_data:
                if dname not in self.data_sources:
                    raise ValueError(_unknown(f"students.{sname}.gpus_by_data", dname, self.data_sources))
            for m in [*(st.methods or []), *st.method_overrides]:
                if m not in self.methods:
                    raise ValueError(_unknown(f"students.{sname}.methods", m, self.methods))
        self._check_resources()
        return self

    def method_for(self, student: str, method: str) -> MethodSpec:
        """The method as it applies to one student, overrides folded in."""
        base = self.methods[method]
        override = self.students[student].method_overrides.get(method)
        if override is None:
            return base
        return base.model_copy(update=override.model_dump(exclude_none=True))

    def _check_resources(self) -> None:
        cap = self.cluster.gpus_per_node
        if self.cluster.backend == "local":
            return  # GPU counts are advisory on one machine
        for kind, specs in (("teachers", self.teachers), ("compressors", self.compressors)):
            for name, spec in specs.items():
                if spec.serve.gpus > cap:
                    raise ValueError(
                        f"{kind}.{name}.serve: tensor_parallel x data_parallel = {spec.serve.gpus} GPUs, "
                        f"but cluster.gpus_per_node is {cap}; jobs are single-node"
                    )
        for name, st in self.students.items():
            for where, n in [("gpus", st.gpus), *((f"gpus_by_data.{d}", g) for d, g in st.gpus_by_data.items())]:
                if n > cap:
                    raise ValueError(
                        f"students.{name}.{where} = {n}, but cluster.gpus_per_node is {cap}; "
                        f"training jobs are single-node (allowed: 1..{cap})"
                    )


def _unknown(field: str, value: str, known: dict[str, Any]) -> str:
    return f"{field}: unknown name {value!r}; allowed: {', '.join(sorted(known)) or '(none defined)'}"


def _format_validation_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid config ({err.error_count()} problem{'s' if err.error_count() > 1 else ''})"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not allowed; check the spelling)"
        elif e["type"] == "literal_error":
            msg = f"{msg}; got {e.get('input')!r}"
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, source: str | Path = "<inline>") -> StudyConfig:
    path = Path(source)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(path, err)) from None


def load_config(path: str | Path) -> StudyConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    return parse_config(data, path)
