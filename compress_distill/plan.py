"""Config -> plan: the training cells and the explicit DAG of steps. Pure.

Every node carries the *versioned* values that make up its identity
(`params`), the ids of its upstream nodes, and the job it needs. Its cache
key hashes exactly: stage, the stage's code version, `params` and the
upstream keys. Paths, hostnames, partitions, time limits and labels are not
part of any key, so moving the store or the cluster keeps every key.

The key is the input: the plan is the one place that resolves a node's
effective settings (a student's method overrides, the FSDP rule), and a job
reads them back from the node (`TrainParams.of(node)` for a train node), never
from the config, so what ran is what was hashed. Nodes are ordered by their
declared dependencies (a topological order, ties kept in the order added);
the models the study builds itself arrive as data (`model_refs.ModelBuild`).

A grid block's `seeds` repeat each cell once per training seed: the train and evaluate nodes are
per seed (their keys hold it), everything upstream of them is shared by the seeds.

Stages, in order:
  build (mini-world models only) / prepare -> generate (rejection rounds, in one serving job) -> verify
  -> compress -> judge (optional) -> derive (training sets per source)
  -> train -> evaluate -> report
"""

from __future__ import annotations

import fnmatch
import hashlib
import heapq
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .cluster.families import Family
from .config import CELL_AXES, MethodParams, StudyConfig, TrainingSpec
from .model_refs import model_build
from .versions import CODE_VERSIONS

STAGES = ("build", "prepare", "generate", "verify", "compress", "judge", "derive", "train", "evaluate", "report")
KEY_LEN = 16


SELECT_AXES = (*CELL_AXES, "seed")


@dataclass(frozen=True)
class Cell:
    """One student training run of the grid: a (teacher, student, method, data) cell at one seed.

    `seed` is the run's training seed. The run at `training.seed` (the only one of a grid without
    `seeds`) keeps the plain name `teacher.student.method.data`; any other seed adds `.s<seed>`.
    Keys hash upstream node ids, so this keeps every existing train/evaluate key (and cache) when
    a grid gains seeds: the new seeds only add nodes."""

    teacher: str
    student: str
    method: str
    data: str
    gpus: int
    block: str
    seed: int
    seed_in_name: bool = False

    @property
    def config_name(self) -> str:
        """The cell without its seed: what the runs of one cell at several seeds share."""
        return f"{self.teacher}.{self.student}.{self.method}.{self.data}"

    @property
    def name(self) -> str:
        return f"{self.config_name}.s{self.seed}" if self.seed_in_name else self.config_name

    def axis(self, axis: str) -> str:
        return str(getattr(self, axis))


@dataclass(frozen=True)
class JobSpec:
    """What a node needs to run. `kind` picks the environment and resources in the cluster profile."""

    kind: str  # vllm | train | eval | cpu
    gpus: int = 0


@dataclass(frozen=True)
class Node:
    stage: str
    name: str
    params: Mapping[str, Any]
    deps: tuple[str, ...]
    job: JobSpec
    cell: Cell | None = None
    # config names this node is about (teacher, compressor, source); not identity, just lookup
    refs: Mapping[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.stage}/{self.name}"


@dataclass(frozen=True)
class TrainParams:
    """A train node's identity, typed: the values its key hashed, which every trainer reads.

    Built from the node's JSON identity (`of`), so a trainer sees exactly what was hashed: the
    method with the student's overrides folded in, the shared training settings (without
    `save_steps`, which is not identity: read it from the config), the FSDP decision, and the
    student's model family with its template text."""

    student: str  # the student's model ref
    method: MethodParams
    training: TrainingSpec
    fsdp: bool
    decoder_layer: str | None
    world_size: int
    family: Family
    template_text: str | None

    @classmethod
    def of(cls, node: Node) -> TrainParams:
        if node.stage != "train":
            raise ValueError(f"{node.id}: not a train node")
        p = _jsonable(node.params)
        fam = dict(p["family"])
        text = fam.pop("template_text")
        family = Family(**{k: _tuples(v) for k, v in fam.items()})
        return cls(student=p["student"], method=MethodParams.model_validate(p["method"]),
                   training=TrainingSpec.model_validate(p["training"]), fsdp=p["fsdp"],
                   decoder_layer=p["decoder_layer"], world_size=p["world_size"], family=family,
                   template_text=text)

    @property
    def lora_rank(self) -> int | None:
        """The adapter rank of a LoRA cell (what serving its checkpoint needs); None for full fine-tuning."""
        return self.method.lora.r if self.method.lora is not None else None


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples a frozen Family holds (eot_tokens, special_tokens pairs)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


@dataclass
class Plan:
    config: StudyConfig
    cells: list[Cell]
    nodes: dict[str, Node]  # insertion order is a topological order
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def edges(self) -> list[tuple[str, str]]:
        return [(dep, n.id) for n in self.nodes.values() for dep in n.deps]

    def identity(self, node_id: str) -> dict[str, Any]:
        """Everything hashed into the node's key; also what `explain` diffs."""
        node = self.nodes[node_id]
        replay = self.config.cluster.replay
        return {
            "stage": node.stage,
            "code_version": CODE_VERSIONS[node.stage],
            "params": _jsonable(node.params),
            "upstream": {dep: self.keys[dep] for dep in node.deps},
            # a replay's (empty) artifacts get keys of their own; real keys are unchanged
            **({"replay": replay.seconds_per_hour} if replay is not None else {}),
        }

    def train_params(self, cell: Cell) -> TrainParams:
        """The resolved training settings of a cell, read from its train node."""
        return TrainParams.of(self.nodes[f"train/{cell.name}"])

    def dependants(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {nid: [] for nid in self.nodes}
        for dep, nid in self.edges:
            out[dep].append(nid)
        return out

    def select(self, patterns: Mapping[str, str]) -> list[Cell]:
        """Cells whose axes match glob patterns, e.g. {"student": "qwen*", "data": "raw", "seed": "1"}."""
        bad = set(patterns) - set(SELECT_AXES)
        if bad:
            raise ValueError(f"unknown selection axis {sorted(bad)}; allowed: {', '.join(SELECT_AXES)}")
        return [c for c in self.cells if all(fnmatch.fnmatchcase(c.axis(a), p) for a, p in patterns.items())]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def hash_identity(identity: Mapping[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_LEN]


def expand_cells(cfg: StudyConfig) -> list[Cell]:
    """Grid blocks -> unique cells (one per seed), in config order. A cell listed at the same seed by two
    blocks is an error."""
    cells: dict[str, Cell] = {}
    for block in cfg.grid:
        seeds = block.seeds if block.seeds is not None else [cfg.training.seed]
        for t in block.teachers:
            for s in block.students:
                student = cfg.students[s]
                for m in block.methods:
                    if student.methods is not None and m not in student.methods:
                        continue
                    for d in block.data:
                        values = {"teacher": t, "student": s, "method": m, "data": d}
                        if any(all(values[k] == v for k, v in ex.items()) for ex in block.exclude):
                            continue
                        for seed in seeds:
                            cell = Cell(t, s, m, d, student.gpus_by_data.get(d, student.gpus), block.name,
                                        seed, seed_in_name=seed != cfg.training.seed)
                            if cell.name in cells:
                                raise ValueError(f"grid: cell {cell.name} appears in blocks "
                                                 f"{cells[cell.name].block!r} and {block.name!r}")
                            cells[cell.name] = cell
    if not cells:
        raise ValueError("grid: expands to no cells")
    return list(cells.values())


def family_identity(cfg: StudyConfig, student: str) -> dict[str, Any]:
    """The student's resolved family settings, template text included (editing it retrains)."""
    fam = cfg.family_for(student)
    return {**asdict(fam), "template_text": fam.template_text()}


def engine(cfg: StudyConfig, serve: Any) -> str:
    """The inference engine that serves a model: `vllm`, or `local` (the project's CPU server, in the
    job or in the stage). Part of every served node's key: the two sample differently for one seed."""
    return "vllm" if cfg.cluster.server_for(serve) == "vllm" else "local"


def _serving_identity(cfg: StudyConfig, model: str, sampling: Any, serve: Any) -> dict[str, Any]:
    # Parallel layout and memory fraction do not change what is generated; the context length and
    # the engine do.
    return {"model": model, "sampling": sampling.model_dump(), "max_model_len": serve.max_model_len,
            "engine": engine(cfg, serve)}


def train_identity(cfg: StudyConfig, cell: Cell) -> dict[str, Any]:
    """A train node's identity: the one place a cell's effective hyperparameters are resolved (the
    student's method overrides folded in) and the FSDP rule is applied. Trainers read these values
    back from the node (`TrainParams.of`). The cell's seed is `training.seed` here (one seed per run;
    at the config's own seed the identity is what it was before grids had seeds)."""
    st = cfg.students[cell.student]
    method = cfg.method_for(cell.student, cell.method)
    training = cfg.training.model_copy(update={"seed": cell.seed})
    return {"student": st.model, "method": method.model_dump(exclude={"label"}),
            "training": training.model_dump(exclude={"save_steps"}),
            # FSDP2 for full fine-tuning of students marked `fsdp: true` (H.3); LoRA runs use DDP
            "fsdp": st.fsdp and method.kind == "full",
            "decoder_layer": st.decoder_layer, "world_size": cell.gpus, "family": family_identity(cfg, cell.student)}


def topological(nodes: Mapping[str, Node]) -> dict[str, Node]:
    """`nodes` in dependency order, each after all its deps; among nodes ready together, the one
    added first comes first (so an order that is already topological is kept as it is)."""
    index = {nid: i for i, nid in enumerate(nodes)}
    waiting: dict[str, int] = {}
    dependants: dict[str, list[str]] = {nid: [] for nid in nodes}
    for nid, node in nodes.items():
        for dep in node.deps:
            if dep not in nodes:
                raise ValueError(f"plan: {nid} depends on {dep}, which is not in the plan")
            dependants[dep].append(nid)
        waiting[nid] = len(set(node.deps))
    ready = [index[nid] for nid, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    ids = list(nodes)
    out: dict[str, Node] = {}
    while ready:
        nid = ids[heapq.heappop(ready)]
        out[nid] = nodes[nid]
        for child in dict.fromkeys(dependants[nid]):
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, index[child])
    if len(out) != len(nodes):
        raise ValueError(f"plan: dependency cycle among {', '.join(sorted(set(nodes) - set(out)))}")
    return out


def build_plan(cfg: StudyConfig) -> Plan:
    cells = expand_cells(cfg)
    nodes: dict[str, Node] = {}

    def add(node: Node) -> str:
        if node.id not in nodes:
            nodes[node.id] = node
        return node.id

    train_sets = {k: v.model_dump() for k, v in cfg.datasets.items() if v.train_split}
    eval_sets = {k: v.model_dump() for k, v in cfg.datasets.items() if v.eval_split}
    def built(ref: str) -> tuple[str, ...]:
        """The build node of a model the study builds (its recipe key enters every key downstream),
        after the builds it starts from (a compressor: the teacher, so the two never race on it)."""
        b = model_build(ref)
        if b is None:
            return ()
        node = Node("build", b.name, {"ref": ref, "recipe_key": b.recipe_key},
                    tuple(d for dep in b.after for d in built(dep)), JobSpec("train", 0), refs={"model": ref})
        return (add(node),)

    suite = add(Node("prepare", "eval-suite", {"datasets": eval_sets, "seed": cfg.seed}, (), JobSpec("cpu")))
    # The pool is checked against the suite's questions (and, by default, cleaned of matches) before
    # any teacher sees it: the check's settings and the suite's key are part of the pool's key.
    pool = add(Node("prepare", "train-pool", {"datasets": train_sets, "seed": cfg.seed,
                                              "contamination": cfg.contamination.model_dump()},
                    (suite,), JobSpec("cpu")))

    teachers = sorted({c.teacher for c in cells}, key=list(cfg.teachers).index)
    sources_by_teacher: dict[str, list[str]] = {t: [] for t in teachers}
    for c in cells:
        if c.data not in sources_by_teacher[c.teacher]:
            sources_by_teacher[c.teacher].append(c.data)

    upstream_leaves: list[str] = []
    derive_ids: dict[tuple[str, str], str] = {}
    for t in teachers:
        ts = cfg.teachers[t]
        gen = add(Node(
            "generate", t,
            {**_serving_identity(cfg, ts.model, ts.sampling, ts.serve),
             "rejection_rounds": ts.rejection_rounds, "system_prompt": ts.system_prompt},
            (*built(ts.model), pool), JobSpec("vllm", ts.serve.gpus), refs={"teacher": t},
        ))
        ver = add(Node("verify", t, {}, (gen, pool), JobSpec("cpu"), refs={"teacher": t}))
        upstream_leaves.append(ver)
        compressors = [cfg.data_sources[d].compressor for d in sources_by_teacher[t]]
        comp_ids: dict[str, str] = {}
        for cname in dict.fromkeys(c for c in compressors if c):
            cs = cfg.compressors[cname]
            comp_ids[cname] = add(Node(
                "compress", f"{t}.{cname}",
                {**_serving_identity(cfg, cs.model, cs.sampling, cs.serve),
                 "prompt": cs.prompt, "domain_prompts": dict(cs.domain_prompts)},
                (*built(cs.model), ver), JobSpec("vllm", cs.serve.gpus), refs={"teacher": t, "compressor": cname},
            ))
            upstream_leaves.append(comp_ids[cname])
            if cfg.judge is not None and cfg.judge.enabled:
                j = cfg.judge
                upstream_leaves.append(add(Node(
                    "judge", f"{t}.{cname}",
                    {"model": j.model, "max_tokens": j.max_tokens, "max_model_len": j.serve.max_model_len,
                     "original_max_chars": j.original_max_chars, "compressed_max_chars": j.compressed_max_chars,
                     "max_attempts": j.max_attempts, "reasoning_effort": j.reasoning_effort,
                     "engine": engine(cfg, j.serve)},
                    (*built(j.model), ver, comp_ids[cname]), JobSpec("vllm", j.serve.gpus),
                    refs={"teacher": t, "compressor": cname},
                )))
        for d in sources_by_teacher[t]:
            src = cfg.data_sources[d]
            params: dict[str, Any] = {"source": src.model_dump(exclude={"label"})}
            deps: tuple[str, ...] = (ver,)
            if src.compressor:
                cs = cfg.compressors[src.compressor]
                params["compressor_tokenizer"] = cs.tokenizer or cs.model
                deps = (ver, comp_ids[src.compressor])
            derive_ids[(t, d)] = add(Node("derive", f"{t}.{d}", params, deps, JobSpec("cpu"),
                                          refs={"teacher": t, "source": d}))

    evals: list[str] = []
    trains: list[str] = []
    for c in cells:
        tr = add(Node(
            "train", c.name, train_identity(cfg, c),
            (*built(cfg.students[c.student].model), derive_ids[(c.teacher, c.data)]), JobSpec("train", c.gpus), c,
        ))
        trains.append(tr)
        ev = cfg.evaluation
        evals.append(add(Node(
            "evaluate", c.name,
            # the seed: each question's request seed derives from it (and the question id)
            {"max_tokens": ev.max_tokens, "temperature": ev.temperature, "groups": ev.groups,
             "engine": engine(cfg, ev.serve), "seed": c.seed},
            (tr, suite), JobSpec("eval", ev.serve.gpus), c,
        )))
    # The report reads loss curves and training times too, so train nodes are its inputs as well;
    # the train pool gives Table 1 its contamination counts.
    add(Node("report", "study", {}, tuple([pool] + upstream_leaves + trains + evals), JobSpec("cpu")))

    plan = Plan(cfg, cells, topological(nodes))
    for nid in plan.nodes:  # deps first: a node's identity holds its upstream keys
        plan.keys[nid] = hash_identity(plan.identity(nid))
    return plan

