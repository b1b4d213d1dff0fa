"""Retry = run the same parameters again; the store skips every node that is done.

`GridParams.retry_of` names the run to retry: a flow run id, or "last" (the newest
grid run that ended Failed, Crashed or Cancelled). Its parameters are read from the
Prefect API; a retry of a retry follows the chain to the run with real parameters.

Re-running the same parameters re-executes exactly the failed cells and the nodes they
blocked: everything else is committed in the store and costs a manifest check. The one thing
that must not be repeated is `force`: a forced node that was re-committed after the
original run started is not forced again (`still_forced`), so a retry of a forced run
submits no job for the cells that succeeded.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort

from ..config import StudyConfig
from ..plan import Plan
from ..store import ArtifactStore
from .params import GridParams, load_params_config

MAX_CHAIN = 10


@dataclass(frozen=True)
class RetryTarget:
    run_id: str             # the run whose parameters are re-run (the root of a retry chain)
    run_name: str
    params: dict[str, Any]  # its GridParams, as a dict
    started_at: float | None  # when that run first started (API time), for `still_forced`


def _params_of(run: FlowRun) -> dict[str, Any]:
    raw = (run.parameters or {}).get("params") or {}
    return dict(raw) if isinstance(raw, dict) else {}


def _last_failed(client: Any, exclude: set[uuid.UUID], before: Any = None) -> FlowRun:
    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=["grid"])),
        flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(not_any_=list(exclude)) if exclude else None,
            state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.FAILED, StateType.CRASHED, StateType.CANCELLED])),
            start_time=FlowRunFilterStartTime(before_=before) if before is not None else None,
        ),
        sort=FlowRunSort.START_TIME_DESC, limit=1)
    if not runs:
        raise LookupError("retry_of='last': no failed, crashed or cancelled grid run to retry")
    return runs[0]  # type: ignore[no-any-return]


def resolve_retry(retry_of: str, self_run_id: str | None) -> RetryTarget:
    """Find the run to retry and its concrete parameters (following retries of retries)."""
    seen: set[uuid.UUID] = {uuid.UUID(self_run_id)} if self_run_id else set()
    with get_client(sync_client=True) as client:
        ref: str | None = retry_of
        before = None
        for _ in range(MAX_CHAIN):
            if ref == "last":
                run = _last_failed(client, seen, before)
            else:
                try:
                    run_id = uuid.UUID(str(ref))
                except ValueError:
                    raise ValueError(f"retry_of must be a flow run id or 'last', not {ref!r}") from None
                run = client.read_flow_run(run_id)
            seen.add(run.id)
            params = _params_of(run)
            ref = params.get("retry_of")
            if not ref:
                started = run.start_time.timestamp() if run.start_time else None
                return RetryTarget(str(run.id), run.name, params, started)
            before = run.start_time  # "last" inside a retry means: last before that retry
    raise ValueError(f"retry chain from {retry_of!r} is longer than {MAX_CHAIN} runs")


def retry_params(target: RetryTarget, params: GridParams) -> GridParams:
    """The target's parameters; `dry_run` of the retry itself wins (a dry retry shows what would run)."""
    merged = {**target.params, "retry_of": None}
    if params.dry_run:
        merged["dry_run"] = True
    return GridParams.model_validate(merged)


def effective_params(params: GridParams, run_id: str | None) -> tuple[GridParams, RetryTarget | None]:
    """The parameters a run works with: its own, or (with `retry_of`) the retried run's."""
    if not params.retry_of:
        return params, None
    target = resolve_retry(params.retry_of, run_id)
    return retry_params(target, params), target


def run_inputs(params: GridParams, run_id: str | None) -> tuple[StudyConfig, Path]:
    """Config and store root a run works on (after resolving `retry_of`)."""
    params, _ = effective_params(params, run_id)
    cfg = load_params_config(params)
    return cfg, Path(params.store_root or cfg.store_root)


def still_forced(plan: Plan, store: ArtifactStore, forced: frozenset[str], since: float | None) -> frozenset[str]:
    """Forced nodes that were not re-committed after `since` (the original run's start)."""
    if since is None:
        return forced
    keep = set()
    for nid in forced:
        node = plan.nodes[nid]
        manifest = store.manifest(node.stage, node.name, plan.keys[nid])
        if manifest is None or float(manifest.get("finished_at", 0.0)) < since:
            keep.add(nid)
    return frozenset(keep)
