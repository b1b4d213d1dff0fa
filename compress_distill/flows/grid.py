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
- one run per grid and store at a time (a store lease), GPU pool limits per job (limits.py);
- artifacts: the plan at start, per-stage progress while running, results at the end;
- a run record in the store (`.runs/<run id>/`) with every job submitted;
- `retry_of` re-runs another run's parameters (retry.py); cancellation cancels the
  run's live jobs in one call (cancel.py).
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, tags
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run as flow_run_ctx
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from ..backends.factory import make_backend
from ..backends.watch import JobWatcher, Watched
from ..config import StudyConfig
from ..costmodel import CostModel, measured_hours
from ..owner import claim
from ..plan import Plan, build_plan
from ..runner import NodeOutcome, RunContext, snapshot_config
from ..scheduler import node_priorities, priority_order
from ..selection import expand_force, nodes_for_selection
from ..store import ArtifactStore
from ..tasks.nodes import job_submitted, run_node_task
from . import artifacts, events
from .cancel import cancel_in_process, on_cancellation_hook
from .limits import ensure_limits, gpu_limit_specs, grid_lease, server_limits_enabled
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
    if backend is not None:
        backend = RecordingBackend(backend, record)
        watcher = JobWatcher(backend, initial_interval=0.5, on_change=_job_state_event)
    ctx = RunContext(
        plan=plan, store=store, config_path=snapshot_config(plan, store), backend=backend, watcher=watcher,
        force=force, dry_run=params.dry_run,
        on_job=job_submitted,
        # longest remaining path (cost model refined by earlier runs' manifests): submit order and job priority
        priorities=node_priorities(plan, CostModel(measured_hours(plan, store))),
    )
    return _Run(cfg, plan, store, node_ids, ctx, record, target, attempt)


def _execute(run: _Run, todo: list[str], progress: artifacts.StageProgress) -> None:
    """Submit a task per node to run (after its upstream ones) and resolve every future."""
    plan, ctx = run.plan, run.ctx
    use_limits = not ctx.dry_run and server_limits_enabled()  # see limits.py: not in ephemeral mode
    if use_limits:
        ensure_limits(gpu_limit_specs(run.cfg.cluster))
    futures: dict[str, PrefectFuture[NodeOutcome]] = {}
    for nid in priority_order(todo, plan, ctx.priorities):  # most urgent first, deps before dependants
        node = plan.nodes[nid]
        deps = [futures[d] for d in node.deps if d in futures]  # done upstream nodes need no wait
        with tags(f"stage:{node.stage}", *([f"cell:{node.cell.name}"] if node.cell else [])):
            # quote(): else Prefect walks the whole RunContext (plan, config) of every task for futures
            futures[nid] = run_node_task.submit(quote(ctx), nid, use_limits,  # type: ignore[call-overload]
                                                wait_for=deps)
    node_of = {id(f): n for n, f in futures.items()}
    try:
        for fut in as_completed(list(futures.values())):
            nid = node_of[id(fut)]
            fut.wait()  # pins the final state the engine returned (the API's copy can lag)
            state = fut.state
            result = fut.result() if state.is_completed() else None
            outcome = _outcome(state, result)
            if outcome == "failed":
                run.failed[nid] = str(state.message or state.name)
            run.settle(nid, outcome, result, progress)
    except BaseException:  # cancelled (SIGTERM from the runner) or interrupted: stop our jobs
        cancel_in_process(ctx.watcher, run.record)
        raise


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
