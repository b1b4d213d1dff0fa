"""Run one plan node: store lookup -> lease -> execute -> atomic commit. No Prefect here.

CPU nodes run in-process. Job nodes (generation, training, evaluation) run
through a job backend when one is given (local subprocess or Slurm), in-process
otherwise: the backend runs the node's per-kind job script (jobscripts.py: the
serving, training or eval template from slurm/templates), whose payload is
`python -m compress_distill.node_main` for the node. Either way the stage
writes into a temporary directory that only this module commits.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends.base import JobBackend, JobError, JobRequest, JobState, log_tail
from .backends.watch import JobWatcher
from .jobscripts import payload_argv, render_node_script
from .plan import Plan
from .stages import StageContext, StageResult, stage_function
from .store import LEASE_TTL_S, ArtifactStore, atomic_write_text, git_revision
from .weights import job_env

log = logging.getLogger(__name__)
RESULT_FILE = "_result.json"
PARENT_PID_ENV = "COMPRESS_DISTILL_PARENT_PID"  # node_main exits when this process is gone


@dataclass(frozen=True)
class NodeOutcome:
    node_id: str
    key: str
    path: str  # relative to the store root
    cached: bool
    seconds: float = 0.0
    job_id: str | None = None
    would_run: bool = False  # dry run: not executed


@dataclass
class RunContext:
    plan: Plan
    store: ArtifactStore
    config_path: Path  # resolved-config snapshot that job processes load
    backend: JobBackend | None = None
    force: frozenset[str] = frozenset()
    dry_run: bool = False
    poll_s: float = 0.5
    on_job: Callable[[str, str, Path], None] | None = None  # (node_id, job_id, log) for UIs
    extra_env: dict[str, str] = field(default_factory=dict)
    # One watcher per run: a single batched status query per cycle for all live jobs of all threads.
    watcher: JobWatcher | None = None
    # node id -> JobRequest.priority (scheduler.node_priorities: remaining critical path, minutes)
    priorities: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend is not None and self.watcher is None:
            self.watcher = JobWatcher(self.backend, initial_interval=self.poll_s)


def lease_ttl() -> float:
    return float(os.environ.get("COMPRESS_DISTILL_LEASE_TTL_S", LEASE_TTL_S))


def snapshot_config(plan: Plan, store: ArtifactStore) -> Path:
    """Write the resolved config where job processes can read it (data by file, never via shell)."""
    path = store.root / ".configs" / f"{plan.config.name}-{plan.keys[next(reversed(plan.nodes))]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        atomic_write_text(path, plan.config.model_dump_json(indent=2))
    return path


def check_inputs(plan: Plan, store: ArtifactStore, node_id: str) -> None:
    """Refuse to read an upstream artifact that is not committed, or whose files are not the size
    its manifest recorded (truncated, deleted): a stage would fail deep inside a reader otherwise,
    or worse, read a short table without failing. Runs in the job process too (node_main)."""
    missing, corrupt = [], []
    for dep in plan.nodes[node_id].deps:
        up = plan.nodes[dep]
        found = store.check(up.stage, up.name, plan.keys[dep])
        if found.state == "absent":
            missing.append(dep)
        elif found.state == "corrupt":
            corrupt.append(f"{dep} ({'; '.join(found.problems)})")
    if missing:
        raise RuntimeError(f"{node_id}: upstream not committed: {', '.join(missing)}")
    if corrupt:
        raise RuntimeError(f"{node_id}: upstream artifact corrupt, run again to recompute it: {', '.join(corrupt)}")


def execute_stage(plan: Plan, store: ArtifactStore, node_id: str, out: Path) -> StageResult:
    """Run the stage function of `node_id` into `out` and record its result there."""
    node = plan.nodes[node_id]
    inputs = {dep: store.path(plan.nodes[dep].stage, plan.nodes[dep].name, plan.keys[dep]) for dep in node.deps}
    check_inputs(plan, store, node_id)
    work = store.work_dir(node.stage, node.name, plan.keys[node_id])
    work.mkdir(parents=True, exist_ok=True)
    result = stage_function(node.stage)(StageContext(plan.config, node, inputs, out, work))
    atomic_write_text(out / RESULT_FILE, json.dumps(
        {"rows": result.rows, "metrics": result.metrics, "placeholder": result.placeholder}, default=str))
    return result


def run_node(ctx: RunContext, node_id: str) -> NodeOutcome:
    plan, store = ctx.plan, ctx.store
    node = plan.nodes[node_id]
    key = plan.keys[node_id]
    final = store.path(node.stage, node.name, key)
    forced = node_id in ctx.force
    found = store.check(node.stage, node.name, key)
    if not forced and found.done:
        return NodeOutcome(node_id, key, store.rel(final), cached=True)
    if found.state == "corrupt":  # commit() moves it to .corrupt/ once the recomputed one is ready
        log.warning("%s: committed artifact is corrupt (%s); recomputing it", node_id, "; ".join(found.problems))
    if ctx.dry_run:
        return NodeOutcome(node_id, key, store.rel(final), cached=False, would_run=True)
    with store.lease(node.stage, node.name, key, ttl_s=lease_ttl()):
        if not forced and store.is_done(node.stage, node.name, key):  # another run finished it meanwhile
            return NodeOutcome(node_id, key, store.rel(final), cached=True)
        tmp = store.begin(node.stage, node.name, key)
        started = time.time()
        job_id = None
        if node.job.kind == "cpu" or ctx.backend is None:
            execute_stage(plan, store, node_id, tmp)
        else:
            job_id = _run_as_job(ctx, node_id, tmp)
        finished = time.time()
        result = json.loads((tmp / RESULT_FILE).read_text())
        (tmp / RESULT_FILE).unlink()
        manifest: dict[str, Any] = {
            "node": node_id, "stage": node.stage, "name": node.name, "key": key,
            "identity": plan.identity(node_id),
            "job": {"kind": node.job.kind, "gpus": node.job.gpus, "job_id": job_id,
                    "backend": ctx.backend.name if ctx.backend and job_id else "inprocess"},
            "rows": result["rows"], "metrics": result["metrics"], "placeholder": result["placeholder"],
            "started_at": started, "finished_at": finished, "seconds": round(finished - started, 3),
            "git_revision": git_revision(), "host": socket.gethostname(),
        }
        store.commit(tmp, node.stage, node.name, key, manifest, replace=forced)
        shutil.rmtree(store.work_dir(node.stage, node.name, key), ignore_errors=True)
    log.info("%s committed in %.1fs (key %s)", node_id, finished - started, key)
    return NodeOutcome(node_id, key, store.rel(final), cached=False, seconds=finished - started, job_id=job_id)


def _run_as_job(ctx: RunContext, node_id: str, tmp: Path) -> str:
    """Submit the node's per-kind job script (jobscripts.py) and wait for it.

    The script runs `node_main` for this node as its payload (behind a health-gated server
    for serving/eval nodes, inside the requeue/resume wrapper for train nodes); the backend
    runs it as a local subprocess or inside a Slurm batch job. Job id, log and node name are
    logged and handed to `on_job`.
    """
    assert ctx.backend is not None
    plan, store = ctx.plan, ctx.store
    node = plan.nodes[node_id]
    key = plan.keys[node_id]
    res = plan.config.cluster.job(node.job.kind)
    job_dir = (store.root / node.stage / ".jobs" / f"{node.name}-{key}").absolute()
    job_dir.mkdir(parents=True, exist_ok=True)
    stamp = int(time.time())
    log_path = job_dir / f"attempt-{stamp}.log"
    name = f"cd-{node.stage}-{node.name}-{key}"
    payload = payload_argv(plan.config, node, config_path=ctx.config_path, store_root=store.root, out=tmp)
    script = job_dir / f"attempt-{stamp}.sh"
    atomic_write_text(script, render_node_script(plan, store, node_id, payload=payload, workdir=Path.cwd(),
                                                 log_dir=job_dir, job_name=name))
    cpus = res.cpus_for(node.job.gpus)
    threads = str(cpus)
    req = JobRequest(
        name=name,
        command=["bash", str(script)],
        workdir=Path.cwd(), log_path=log_path, kind=node.job.kind, gpus=node.job.gpus,
        cpus=cpus, mem=res.mem_for(node.job.gpus), time_limit=res.time_limit, priority=ctx.priorities.get(node_id),
        # PASSIVE: a multi-thread torch job on shared cores otherwise spins at OpenMP barriers (2-5x slower)
        env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OMP_WAIT_POLICY": "PASSIVE",
             # The dead-orchestrator check is for local subprocesses only (LocalBackend sets the pid).
             # A Slurm job must outlive a restarted orchestrator, which re-attaches to it; only a user
             # cancel (scancel) stops it. Exported empty so an inherited value cannot stop the job.
             PARENT_PID_ENV: "",
             # the shared HF cache and the Hub offline (cluster.weights): a job never downloads
             **job_env(plan.config),
             **ctx.extra_env},
    )
    assert ctx.watcher is not None
    job_id = ctx.watcher.submit(req)
    atomic_write_text(job_dir / "job.json", json.dumps(
        {"job_id": job_id, "backend": ctx.backend.name, "node": node_id, "log": str(log_path),
         "script": str(script), "submitted_at": time.time()}))
    log.info("%s: %s job %s submitted (%s, %d GPU), log %s", node_id, ctx.backend.name, job_id, node.job.kind,
             node.job.gpus, log_path)
    if ctx.on_job:
        ctx.on_job(node_id, job_id, log_path)
    try:
        status = ctx.watcher.wait([job_id])[job_id]  # raises JobError (with the log tail) on failure
    except JobError as e:
        log.error("%s: job %s ended %s on %s, log %s", node_id, job_id, e.status.state.value,
                  e.status.node or "?", log_path)
        raise
    log.info("%s: job %s %s on node %s in %.0fs, log %s", node_id, job_id, status.state.value,
             status.node or "?", status.elapsed_s or 0.0, log_path)
    if status.state is not JobState.COMPLETED or not (tmp / RESULT_FILE).is_file():
        raise JobError(job_id, status, log_tail(log_path))
    return job_id
