"""The `grid` flow: the whole study as one DAG of node tasks.

The store decides what is done: a node already committed under its key is
settled in the flow with a manifest read and a stat() per file, and gets no task run, so a no-op
nightly run costs seconds. Each node to run is submitted with `wait_for`
on its upstream futures, so it starts as soon as its own inputs exist (no
stage barriers; stages are task tags `stage:<stage>`, cells `cell:<cell>`,
which the UI filters on). Every future is resolved; a failed node fails the
flow with a summary naming it, while independent cells still run to
completion. A dry run runs no task at all.

Around that core:
- one run per grid and store at a time (a store lease, lease.py); the scheduler admits nodes;
- artifacts: the plan at start, per-stage progress while running, results at the end;
- a run record in the store (`.runs/<run id>/`) with every job submitted;
- `retry_of` re-runs another run's parameters (retry.py); cancellation cancels the
  run's live jobs in one call (cancel.py).
"""

from __future__ import annotations

import contextlib
import queue
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run as flow_run_ctx
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from .. import events
from ..backends.base import NOW, After, JobError, JobState
from ..backends.factory import make_backend
from ..backends.watch import JobWatcher, Watched
from ..config import StudyConfig
from ..costmodel import CostModel, measured_hours
from ..owner import claim
from ..plan import Plan, build_plan
from ..runner import NodeOutcome, RunContext, snapshot_config
from ..scheduler import Policy, Pool, Scheduler, forecast, node_priorities, tasks_from_plan
from ..selection import expand_force, nodes_for_selection
from ..store import ArtifactStore
from ..tasks.nodes import job_submitted, run_node_task
from . import artifacts
from .cancel import cancel_in_process, on_cancellation_hook
from .lease import grid_lease
from .params import GridParams, load_params_config
from .retry import RetryTarget, effective_params, still_forced
from .runlog import RecordingBackend, RunRecord, node_of_job


class GridFailed(RuntimeError):
    pass


def _outcome(state: State[Any], result: NodeOutcome | None) -> str:
    if result is not None:
        return "cached" if result.cached else "would_run" if result.would_run else "ran"
    if state.is_failed() or state.is_crashed():
        return "failed"
    return "blocked"  # never ran: an upstream node failed


def _job_state_event(w: Watched) -> None:
    if w.request is not None and w.status is not None:
        events.emit("job_state", node_of_job(w.request.name), job_id=w.job_id, state=w.status.state.value)


@dataclass
class _Run:
    """Everything one run works on, resolved before any node starts."""

    cfg: StudyConfig
    plan: Plan
    store: ArtifactStore
    node_ids: list[str]
    ctx: RunContext
    record: RunRecord
    target: RetryTarget | None
    attempt: int
    cost: CostModel
    policy: Policy
    state_hooks: list[Callable[[Watched], None]]
    outcomes: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    results: dict[str, NodeOutcome] = field(default_factory=dict)

    def settle(self, nid: str, outcome: str, result: NodeOutcome | None, progress: artifacts.StageProgress) -> None:
        self.outcomes[nid] = outcome
        if result is not None:
            self.results[nid] = result
        events.emit("end", nid, outcome=outcome)
        progress.node_ended(nid)


def _prepare(params: GridParams, run_id: str, attempt: int, logger: Any) -> _Run:
    params, target = effective_params(params, run_id)
    if target is not None:
        logger.info("retrying flow run %s (%s) with its parameters; the store skips what is done",
                    target.run_name, target.run_id)
    cfg = load_params_config(params)
    plan = build_plan(cfg)
    store = ArtifactStore(Path(params.store_root or cfg.store_root))
    node_ids = nodes_for_selection(plan, params.select)
    force = expand_force(plan, params.force)
    record = RunRecord.open(store.root, run_id, {
        "config": cfg.name, "params": params.model_dump(mode="json"),
        "retry_of": target.run_id if target else None}, attempt)
    if force and (target is not None or attempt > 1):
        # the first start of the run being retried (its record, else the API's start time)
        since = ((RunRecord(store.root, target.run_id).started_at or target.started_at) if target is not None
                 else record.started_at)
        force = still_forced(plan, store, force, since)
    backend = make_backend(cfg)
    watcher = None
    hooks: list[Callable[[Watched], None]] = [_job_state_event]  # job state changes: live view, scheduler

    def changed(w: Watched) -> None:
        for hook in list(hooks):
            hook(w)

    # How often a waiting node checks its attempt dir for the result file (a stat), and how far the
    # queue's poll interval backs off. On a cluster 1 s is nothing next to jobs of hours. A replay
    # runs an hour in seconds: 1 s there would be 1,000x production's share, so it checks every
    # 20 ms (the nearest this machine's thread wake-ups allow): a job's end to its commit, 15 ms
    # median, against 49 ms with the 0.1 x seconds_per_hour of before (README, Replay).
    replay = cfg.cluster.replay
    poll_s = REPLAY_RESULT_CHECK_S if replay is not None else 1.0
    if backend is not None:
        backend = RecordingBackend(backend, record)
        watcher = JobWatcher(backend, initial_interval=0.5, max_interval=2.0 if replay is not None else 30.0,
                             on_change=changed)
    cost = CostModel(measured_hours(plan, store))  # earlier runs' manifests refine the estimates
    ctx = RunContext(
        plan=plan, store=store, config_path=snapshot_config(plan, store), backend=backend, watcher=watcher,
        force=force, dry_run=params.dry_run, poll_s=poll_s,
        on_job=job_submitted,
        # the scheduler's priority (longest remaining path, minutes) also goes to the backend's queue
        priorities=node_priorities(plan, cost),
    )
    return _Run(cfg, plan, store, node_ids, ctx, record, target, attempt, cost, params.policy, hooks)


def admission(run: _Run, todo: list[str]) -> Scheduler:
    """The run's scheduler over the nodes to run: the same `Scheduler` that `plan --simulate`
    and the replay drive (critical-path priority, fair share per job kind, per-node packing of
    the profile's GPU pool, `max_concurrent_gpu_jobs`). Nodes outside `todo` are done (cached)
    or not selected; the cost model is refined by earlier runs' manifests."""
    chosen = set(todo)
    pool = Pool.from_profile(run.cfg.cluster)
    # A profile without GPUs (the local mini world) has no pool to fill: its "GPU" jobs take none,
    # and the backend's own slots (local_workers) bound what runs at once.
    gpuless = pool.total_gpus == 0
    tasks = {nid: replace(t, deps=tuple(d for d in t.deps if d in chosen), gpus=0 if gpuless else t.gpus)
             for nid, t in tasks_from_plan(run.plan, run.cost).items() if nid in chosen}
    return Scheduler(tasks, pool, run.policy)


# A replay's result-file check interval (see _prepare).
REPLAY_RESULT_CHECK_S = 0.02

# How long a run waits at its end for jobs whose work is committed to end (a model server stopping).
DRAIN_S = 120


class _Admitted:
    """The flow's side of the scheduler: one Prefect task per admitted node, and the events
    (a task ended, a job was submitted, a job began running) that move the scheduler on.
    Events arrive from task threads and the job watcher; only the flow thread touches `sched`."""

    def __init__(self, run: _Run, todo: list[str]):
        self.run, self.todo = run, todo
        self.sched = admission(run, todo)
        self.futures: dict[str, PrefectFuture[NodeOutcome]] = {}
        self.events: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self.job_of: dict[str, str] = {}           # node -> its job id (dependencies of jobs submitted ahead)
        self.running_since: dict[str, float] = {}  # node -> when it was admitted, or its job seen RUNNING
        self.ahead: dict[str, tuple[str, ...]] = {}  # node submitted ahead -> the jobs it must see complete
        cluster = run.cfg.cluster
        backend = run.ctx.backend
        self.ahead_s = cluster.submit_ahead_s if backend is not None and backend.name == "slurm" else 0.0
        # the cost model's hours on the wall clock: a replay runs them at seconds_per_hour
        self.hour_s = cluster.replay.seconds_per_hour if cluster.replay is not None else 3600.0

    def job_submitted(self, node_id: str, job_id: str, log_path: Path) -> None:
        self.job_of[node_id] = job_id
        self.events.put(("job", node_id))
        job_submitted(node_id, job_id, log_path)

    def job_changed(self, w: Watched) -> None:
        """A job changed state (the watcher's thread). Its id is the one jobs queue behind: a job the
        watcher resubmitted has a new one, and one that failed or was lost has none to wait for."""
        if w.request is None or w.status is None:
            return
        nid = node_of_job(w.request.name)
        if w.status.state.terminal and w.status.state is not JobState.COMPLETED:
            self.job_of.pop(nid, None)
        else:
            self.job_of[nid] = w.job_id
        if w.status.state is JobState.RUNNING:
            self.events.put(("running", nid))

    def pinned(self, pool_node: int | None) -> str | None:
        names = self.run.cfg.cluster.node_names
        return names[pool_node] if names and pool_node is not None else None

    def start(self, nid: str, after: After = NOW) -> None:
        # No Prefect tags on node task runs: Prefect 3.8 acquires a concurrency lease on the server
        # for every tag of every task run ("tag:<tag>"), measured at ~2 s per task run (median;
        # p90 6 s) against `run`'s server, against 5 ms without tags. The run's name
        # `<stage>/<name>` carries the stage and the cell; the UI filters task runs by name.
        # quote(): else Prefect walks the whole RunContext (plan, config) of every task for futures
        fut = run_node_task.submit(quote(self.run.ctx), nid, after)  # type: ignore[call-overload]
        self.futures[nid] = fut
        fut.add_done_callback(lambda _f, nid=nid: self.events.put(("end", nid)))

    def submit_ahead(self) -> None:
        """Start now the tasks of the jobs the forecast starts within `ahead_s`, each queued in
        Slurm behind the jobs it waits for: its inputs' jobs (through in-process CPU steps,
        afterok) and the jobs planned before it on its node (afterany)."""
        sched, plan = self.sched, self.run.plan
        now = time.monotonic()
        # a node admitted now starts about now (its GPUs are free); one submitted ahead, once
        # the watcher saw it RUNNING
        remaining = {t: max(0.0, sched.tasks[t].hours - (now - self.running_since[t]) / self.hour_s)
                     for t in sched.running if t in self.running_since}
        for planned in forecast(sched, remaining, self.ahead_s / self.hour_s):
            tid = planned.placement.task.id
            if plan.nodes[tid].job.kind == "cpu":
                continue  # runs in the flow's process once its inputs are committed
            gates = sched.open_gates(tid, through=lambda t: plan.nodes[t.id].job.kind == "cpu")
            if any(g not in self.job_of for g in gates):
                continue  # a gate's job is not submitted yet: a later cycle takes it
            ok = tuple(sorted({self.job_of[g] for g in gates}))
            end = tuple(sorted({self.job_of[t] for t in planned.behind
                                if t in self.job_of and t not in sched.done and self.job_of[t] not in ok}))
            sched.queue(tid, planned.placement.node)
            self.ahead[tid] = ok
            self.start(tid, After(ok, end, self.pinned(planned.placement.node)))

    def ended(self, nid: str, progress: artifacts.StageProgress) -> None:
        fut = self.futures[nid]
        fut.wait()  # pins the final state the engine returned (the API's copy can lag)
        state = fut.state
        result = fut.result() if state.is_completed() else None
        outcome = _outcome(state, result)
        if outcome == "failed" and any(self._doomed(d) for d in self.run.plan.nodes[nid].deps):
            outcome = "blocked"  # submitted ahead, then cancelled by Slurm when an input failed
        elif outcome == "failed" and self._replaced_input(nid) and self._cancelled_in_queue(state):
            # Queued behind an input's job that the machine lost; the watcher resubmitted that
            # one under a new id, and Slurm cancelled this job with the old. Its inputs are
            # fine: admit it again (its job never ran, so no submission bound is spent on it).
            get_run_logger().warning("%s: its job was cancelled in the queue behind an input's job that was "
                                     "resubmitted; admitting it again", nid)
            del self.ahead[nid]
            del self.futures[nid]
            self.running_since.pop(nid, None)
            self.sched.readmit(nid)
            return
        if outcome == "failed":
            self.run.failed[nid] = str(state.message or state.name)
        if outcome in ("ran", "cached"):
            self.sched.finish(nid)
        else:  # its dependants are never admitted
            self.sched.fail(nid)
        self.run.settle(nid, outcome, result, progress)

    def _replaced_input(self, nid: str) -> bool:
        """`nid` was queued behind a job that is no longer its node's job (it was resubmitted).
        Any other cancel (scancel, a failed input) stands."""
        current = set(self.job_of.values())
        return any(job not in current for job in self.ahead.get(nid, ()))

    def _cancelled_in_queue(self, state: State[Any]) -> bool:
        """The task failed because its job was cancelled before it ever ran."""
        err = state.result(raise_on_failure=False)
        return (isinstance(err, JobError) and err.status.state is JobState.CANCELLED
                and not err.status.elapsed_s)

    def _doomed(self, nid: str) -> bool:
        """`nid` failed, or never will run: something it needs (through CPU steps) failed."""
        return nid in self.sched.failed or (nid in self.sched.tasks and nid not in self.sched.done and any(
            self._doomed(d) for d in self.run.plan.nodes[nid].deps))

    def _inputs_settled(self, nid: str) -> bool:
        return all(d not in self.sched.tasks or d in self.sched.done or self._doomed(d)
                   for d in self.run.plan.nodes[nid].deps)

    def loop(self, progress: artifacts.StageProgress) -> None:
        sched = self.sched
        deferred: list[str] = []
        while True:
            for p in sched.pick():
                self.running_since[p.task.id] = time.monotonic()
                self.start(p.task.id, After(node=self.pinned(p.node)))
            if self.ahead_s > 0:
                self.submit_ahead()
            if not sched.running and not sched.queued:
                break
            try:  # with submit-ahead, the forecast also moves with the clock
                kind, nid = self.events.get(timeout=min(self.ahead_s / 4, 5.0) if self.ahead_s > 0 else None)
            except queue.Empty:
                continue
            if kind == "end":
                deferred.append(nid)
                # a node submitted ahead may end before its inputs' ends were processed (or be
                # cancelled because one failed): settle it after them, so the scheduler sees
                # ends in dependency order
                while ready := [n for n in deferred if self._inputs_settled(n)]:
                    for n in ready:
                        deferred.remove(n)
                        self.ended(n, progress)
            elif kind == "running" and nid in sched.tasks and nid not in self.running_since:
                self.running_since[nid] = time.monotonic()
                sched.started(nid)
        for nid in self.todo:
            if nid not in self.futures:  # never admitted: an upstream node failed
                self.run.settle(nid, "blocked", None, progress)


def _execute(run: _Run, todo: list[str], progress: artifacts.StageProgress) -> None:
    """Start each node's task when the scheduler admits it; settle it when its task ends.

    The scheduler alone decides what starts next (never Prefect's `wait_for` or concurrency
    limits): a node is admitted once its inputs are committed and its GPUs fit the pool, or,
    with submit-ahead, earlier, as a job Slurm holds until its inputs' jobs end. A failed
    node's dependants are never admitted (blocked); independent cells run on.
    """
    admitted = _Admitted(run, todo)
    run.ctx.on_job = admitted.job_submitted
    run.state_hooks.append(admitted.job_changed)
    try:
        admitted.loop(progress)
        if run.ctx.watcher is not None:  # nodes committed on their result files: see their jobs end
            left = run.ctx.watcher.drain(DRAIN_S)
            if left:
                get_run_logger().warning("%d job(s) still tearing down after %d s, their work committed: %s",
                                         len(left), DRAIN_S, " ".join(left))
    except BaseException:  # cancelled (SIGTERM from the runner) or interrupted: stop our jobs
        cancel_in_process(run.ctx.watcher, run.record)
        raise
    finally:
        run.state_hooks.remove(admitted.job_changed)


@flow(name="grid", task_runner=ThreadPoolTaskRunner(max_workers=64),  # type: ignore[arg-type]
      validate_parameters=True, on_cancellation=[on_cancellation_hook])
def grid(params: GridParams | None = None) -> dict[str, Any]:
    logger = get_run_logger()
    claim()  # whatever process runs the flow (CLI, `serve`, a worker) owns its local jobs (owner.py)
    run_id = flow_run_ctx.get_id() or f"local-{uuid.uuid4().hex[:12]}"
    attempt = flow_run_ctx.get_run_count() or 1
    run = _prepare(params or GridParams(), run_id, attempt, logger)
    # One run per grid and store: held from before the store is read until the last node ended.
    with contextlib.nullcontext() if run.ctx.dry_run else grid_lease(run.store, run.cfg.name, logger):
        return _run_nodes(run, logger)


def _run_nodes(run: _Run, logger: Any) -> dict[str, Any]:
    plan, store, ctx = run.plan, run.store, run.ctx
    # The store decides what is done. A done node needs no task run at all: the no-op nightly
    # run of the paper grid is 129 manifest checks, not 129 Prefect tasks. A dry run runs no task.
    done = {n for n in run.node_ids if n not in ctx.force
            and store.is_done(plan.nodes[n].stage, plan.nodes[n].name, plan.keys[n])}
    todo = [n for n in run.node_ids if n not in done]
    logger.info("plan %s: %d cells, %d nodes selected, %d in the store, %d to %s (run record %s)", run.cfg.name,
                len(plan.cells), len(run.node_ids), len(done), len(todo), "check" if ctx.dry_run else "run",
                run.record.dir)
    events.emit("plan", config=run.cfg.name, nodes={n: plan.nodes[n].stage for n in run.node_ids}, done=sorted(done))
    artifacts.publish_plan(plan, store, run.node_ids, ctx.dry_run)
    progress = artifacts.StageProgress(plan, run.node_ids, [] if ctx.dry_run else todo)
    for nid in run.node_ids:
        if nid in done or ctx.dry_run:
            path = store.rel(store.path(plan.nodes[nid].stage, plan.nodes[nid].name, plan.keys[nid]))
            result = NodeOutcome(nid, plan.keys[nid], path, cached=nid in done, would_run=nid not in done)
            run.settle(nid, "cached" if nid in done else "would_run", result, progress)
    if todo and not ctx.dry_run:
        _execute(run, todo, progress)
    progress.finish()
    return _summarize(run, logger)


def _summarize(run: _Run, logger: Any) -> dict[str, Any]:
    outcomes, failed = run.outcomes, run.failed
    blocked = sorted(n for n, o in outcomes.items() if o == "blocked")
    artifacts.publish_results(run.plan, run.store, run.node_ids, outcomes, failed, blocked)
    submitted = [j for j in run.record.jobs() if j.get("attempt", 1) == run.attempt]
    summary: dict[str, Any] = {
        "config": run.cfg.name,
        "nodes": len(run.node_ids),
        "ran": sorted(n for n, o in outcomes.items() if o == "ran"),
        "cached": sorted(n for n, o in outcomes.items() if o == "cached"),
        "would_run": sorted(n for n, o in outcomes.items() if o == "would_run"),
        "failed": failed,
        "blocked": blocked,
        "artifacts": {n: o.path for n, o in run.results.items()},
        "run_id": run.record.run_id,
        "retry_of": run.target.run_id if run.target else None,
        "jobs_submitted": len(submitted),
    }
    logger.info("ran %d, cached %d, would run %d, failed %d, blocked %d; %d job(s) submitted", len(summary["ran"]),
                len(summary["cached"]), len(summary["would_run"]), len(failed), len(blocked), len(submitted))
    if failed or blocked:
        lines = [f"{n}: {m.splitlines()[0] if m else 'failed'}" for n, m in failed.items()]
        raise GridFailed(f"{len(failed)} node(s) failed, {len(blocked)} blocked by them:\n  " + "\n  ".join(lines))
    return summary
