"""Run one plan node: store lookup -> lease -> execute -> atomic commit. No Prefect here.

CPU nodes run in-process. Job nodes (generation, training, evaluation) run
through a job backend when one is given (local subprocess or Slurm), in-process
otherwise: the backend runs the node's per-kind job script (jobs/node.py: the
serving, training or eval template from jobs/templates), whose payload is
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

from . import faults
from .backends.base import NOW, After, JobBackend, JobError, JobState, JobStatus, log_tail
from .backends.watch import JobWatcher
from .jobs.node import INPUT_WAIT_ENV, INPUT_WAIT_S, RESULT_FILE, node_job, request_name
from .jobs.node import job_dir as node_job_dir
from .jobs.resources import resolve_resources
from .plan import Plan
from .stages import StageContext, StageResult, stage_function
from .store import LEASE_TTL_S, ArtifactStore, atomic_write_text, git_revision

log = logging.getLogger(__name__)


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


def check_inputs(plan: Plan, store: ArtifactStore, node_id: str, wait_s: float = 0.0) -> None:
    """Refuse to read an upstream artifact that is not committed, or whose files are not the size
    its manifest recorded (truncated, deleted): a stage would fail deep inside a reader otherwise,
    or worse, read a short table without failing. Runs in the job process too (node_main).

    `wait_s` > 0 (a job submitted ahead, INPUT_WAIT_ENV): Slurm started it when its inputs' jobs
    ended, and the orchestrator commits their outputs a poll later; wait up to `wait_s` for that.
    """
    deadline = time.monotonic() + wait_s
    while True:
        missing, corrupt = [], []
        for dep in plan.nodes[node_id].deps:
            up = plan.nodes[dep]
            found = store.check(up.stage, up.name, plan.keys[dep])
            if found.state == "absent":
                missing.append(dep)
            elif found.state == "corrupt":
                corrupt.append(f"{dep} ({'; '.join(found.problems)})")
        if not missing or corrupt or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if missing:
        raise RuntimeError(f"{node_id}: upstream not committed: {', '.join(missing)}")
    if corrupt:
        raise RuntimeError(f"{node_id}: upstream artifact corrupt, run again to recompute it: {', '.join(corrupt)}")


def execute_stage(plan: Plan, store: ArtifactStore, node_id: str, out: Path) -> StageResult:
    """Run the stage function of `node_id` into `out` and record its result there."""
    node = plan.nodes[node_id]
    inputs = {dep: store.path(plan.nodes[dep].stage, plan.nodes[dep].name, plan.keys[dep]) for dep in node.deps}
    check_inputs(plan, store, node_id, wait_s=float(os.environ.get(INPUT_WAIT_ENV) or 0))
    if plan.config.cluster.replay is not None:  # a replay: CPU steps do nothing (jobs sleep: jobs/node.py)
        atomic_write_text(out / RESULT_FILE, json.dumps({"rows": {}, "metrics": {}, "placeholder": True}))
        return StageResult(placeholder=True)
    work = store.work_dir(node.stage, node.name, plan.keys[node_id])
    work.mkdir(parents=True, exist_ok=True)
    result = stage_function(node.stage)(StageContext(plan.config, node, inputs, out, work))
    atomic_write_text(out / RESULT_FILE, json.dumps(
        {"rows": result.rows, "metrics": result.metrics, "placeholder": result.placeholder}, default=str))
    return result


def run_node(ctx: RunContext, node_id: str, after: After = NOW) -> NodeOutcome:
    """Run `node_id` unless the store has it. `after`: its job waits in the backend's queue for
    those jobs (submit-ahead); the node's inputs may then still be running."""
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
        started = time.time()
        job_id = None
        if node.job.kind == "cpu" or ctx.backend is None:
            tmp = store.begin(node.stage, node.name, key)
            execute_stage(plan, store, node_id, tmp)
        else:
            tmp = store.attempt_dir(node.stage, node.name, key)  # begun in _run_as_job, unless a job owns it
            job_id = _run_as_job(ctx, node_id, tmp, after)
            faults.reached("job-ended", node_id)
        finished = time.time()
        result = json.loads((tmp / RESULT_FILE).read_text())
        (tmp / RESULT_FILE).unlink()
        # What the job ran on (jobcost.py): `gpus` is the plan's count, `gpus_used` the GPUs the job
        # had (0 on a `device: cpu` profile, whose planned GPUs are fake or absent), `cpus` its cores.
        res = resolve_resources(plan.config.cluster, node.job.kind, node.job.gpus)
        manifest: dict[str, Any] = {
            "node": node_id, "stage": node.stage, "name": node.name, "key": key,
            "identity": plan.identity(node_id),
            "job": {"kind": node.job.kind, "gpus": node.job.gpus, "job_id": job_id,
                    "backend": ctx.backend.name if ctx.backend and job_id else "inprocess",
                    "gpus_used": res.require_gpus, "cpus": res.cpus_per_task if job_id else None},
            "rows": result["rows"], "metrics": result["metrics"], "placeholder": result["placeholder"],
            "started_at": started, "finished_at": finished, "seconds": round(finished - started, 3),
            "git_revision": git_revision(), "host": socket.gethostname(),
        }
        store.commit(tmp, node.stage, node.name, key, manifest, replace=forced)
        shutil.rmtree(store.work_dir(node.stage, node.name, key), ignore_errors=True)
        faults.reached("after-commit", node_id)
    log.info("%s committed in %.1fs (key %s)", node_id, finished - started, key)
    return NodeOutcome(node_id, key, store.rel(final), cached=False, seconds=finished - started, job_id=job_id)


def _run_as_job(ctx: RunContext, node_id: str, tmp: Path, after: After = NOW) -> str:
    """Wait for the node's job, adopting one a previous orchestrator left, else submitting one.

    Adoption comes first: the attempt dir `tmp` has a fixed path per node and key, and a job
    that outlived its orchestrator (Slurm) still writes there. So a live job of this node's name
    is re-attached, and a job that already finished its stage (its result file is in `tmp`) is
    committed as it is; only when no job can own `tmp` is it swept (`store.begin`) and a new job
    submitted. If the queue cannot be read, the node fails and `tmp` is left alone.
    """
    assert ctx.backend is not None and ctx.watcher is not None
    plan, store = ctx.plan, ctx.store
    node = plan.nodes[node_id]
    key = plan.keys[node_id]
    job_dir = node_job_dir(plan, store, node_id)
    name = request_name(plan, node_id)
    adopted = _adoptable(ctx, name, job_dir, tmp)
    if adopted is not None:
        job_id, log_path, finished = adopted
        _write_job_record(ctx, job_dir, node_id, job_id, log_path, adopted=True)
        if finished:
            log.warning("%s: job %s finished its stage before this run started; committing its outputs, "
                        "not running it again", node_id, job_id)
            return job_id
        log.warning("%s: job %s of a previous run is still live; adopting it, log %s", node_id, job_id, log_path)
        track = getattr(ctx.backend, "track", None)  # Slurm: polls then know the job's name
        if track is not None:
            track(job_id, name, log_path)
        ctx.watcher.track(job_id, log_path=log_path)
    else:
        store.begin(node.stage, node.name, key)  # no job can own the attempt dir: sweep it
        job_id, log_path = _submit(ctx, node_id, name, job_dir, tmp, after)
    if ctx.on_job:
        ctx.on_job(node_id, job_id, log_path)
    faults.reached("after-submit", node_id)
    try:
        status = _wait_for_stage(ctx, job_id, tmp)  # raises JobError (with the log tail) on failure
    except JobError as e:
        log.error("%s: job %s ended %s on %s, log %s", node_id, job_id, e.status.state.value,
                  e.status.node or "?", log_path)
        raise
    if status is None:
        ctx.watcher.settle(job_id)  # whatever its teardown does, the node is not run again
        log.info("%s: job %s wrote its result; committing without waiting for the job's end, log %s",
                 node_id, job_id, log_path)
        return job_id
    log.info("%s: job %s %s on node %s in %.0fs, log %s", node_id, job_id, status.state.value,
             status.node or "?", status.elapsed_s or 0.0, log_path)
    if status.state is not JobState.COMPLETED or not (tmp / RESULT_FILE).is_file():
        if status.state is JobState.COMPLETED:  # ended well, yet no result: say so, not just "COMPLETED"
            status = JobStatus(status.job_id, status.state, status.exit_code, status.node, status.elapsed_s,
                               reason=f"the job wrote no {RESULT_FILE} into {tmp}")
        raise JobError(job_id, status, log_tail(log_path))
    return job_id


def _wait_for_stage(ctx: RunContext, job_id: str, tmp: Path) -> JobStatus | None:
    """The job's final status, or None as soon as its stage is done: node_main (and a replay job)
    writes the result file last, after every output, so the attempt dir is complete then. The
    node commits without waiting for the job's teardown (a model server stopping) or for the
    watcher's next poll of the queue (its interval backs off to 30 s); the file is checked every
    `ctx.poll_s`. A failure the queue reports first still raises."""
    assert ctx.watcher is not None
    while True:
        try:
            return ctx.watcher.wait([job_id], timeout=ctx.poll_s)[job_id]
        except TimeoutError:
            if (tmp / RESULT_FILE).is_file():
                return None


def _adoptable(ctx: RunContext, name: str, job_dir: Path, tmp: Path) -> tuple[str, Path, bool] | None:
    """(job id, its log, finished) of a job that owns the attempt dir, or None when no job can.

    A live job of this name comes first (it may still be writing `tmp`); then a finished stage:
    node_main writes the result file last, after every output, so its presence means `tmp` is
    complete. Backends without `find_live` (local: its jobs die with their run) have no live jobs.
    """
    find_live = getattr(ctx.backend, "find_live", None)
    live = find_live(name) if find_live is not None else None  # an unreadable queue raises: nothing swept
    record = _job_record(job_dir)
    if live is not None:
        return live, _log_of(job_dir, live) or Path(record.get("log") or job_dir / "unknown.log"), False
    if (tmp / RESULT_FILE).is_file():
        return str(record.get("job_id") or "unknown"), Path(record.get("log") or job_dir / "unknown.log"), True
    return None


def _job_record(job_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((job_dir / "job.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _log_of(job_dir: Path, job_id: str) -> Path | None:
    """The log of `job_id`, from the state file its backend wrote at submission (next to the log)."""
    for state in sorted(job_dir.glob("attempt-*.state.json"), reverse=True):
        try:
            data = json.loads(state.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and str(data.get("job_id")) == job_id and data.get("log_path"):
            return Path(data["log_path"])
    return None


def _write_job_record(ctx: RunContext, job_dir: Path, node_id: str, job_id: str, log_path: Path,
                      script: Path | None = None, adopted: bool = False) -> None:
    assert ctx.backend is not None
    atomic_write_text(job_dir / "job.json", json.dumps(
        {"job_id": job_id, "backend": ctx.backend.name, "node": node_id, "log": str(log_path),
         "script": str(script) if script else None, "adopted": adopted, "submitted_at": time.time()}))


def _submit(ctx: RunContext, node_id: str, name: str, job_dir: Path, tmp: Path,
            after: After = NOW) -> tuple[str, Path]:
    """Write the node's job (jobs.node_job: what `render` writes too) and submit it; (job id, log).

    The script runs `node_main` for this node as its payload (behind a health-gated server
    for serving/eval nodes, inside the resume logic for train nodes); the backend
    runs it as a local subprocess or inside a Slurm batch job.
    """
    assert ctx.watcher is not None
    plan = ctx.plan
    node = plan.nodes[node_id]
    job_dir.mkdir(parents=True, exist_ok=True)
    stamp = int(time.time())
    log_path = job_dir / f"attempt-{stamp}.log"
    job = node_job(plan, ctx.store, node_id, config_path=ctx.config_path, out=tmp, workdir=Path.cwd())
    assert job.name == name
    script = job_dir / f"attempt-{stamp}.sh"
    atomic_write_text(script, job.script)
    req = job.request(script, log_path, Path.cwd(), priority=ctx.priorities.get(node_id),
                      extra_env={**({INPUT_WAIT_ENV: str(INPUT_WAIT_S)} if after.waits else {}), **ctx.extra_env},
                      after=after)
    job_id = ctx.watcher.submit(req)
    _write_job_record(ctx, job_dir, node_id, job_id, log_path, script)
    log.info("%s: %s job %s submitted (%s, %d GPU), log %s", node_id, ctx.backend.name if ctx.backend else "?",
             job_id, node.job.kind, node.job.gpus, log_path)
    return job_id, log_path
