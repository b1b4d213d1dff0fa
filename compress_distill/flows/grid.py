"""The `grid` flow: the whole study as one DAG of node tasks.

Each node is submitted with `wait_for` on its upstream futures, so a node
starts as soon as its own inputs exist (no stage barriers). Every future is
resolved at the end; a failed node fails the flow with a summary, while
independent cells still run to completion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, wait
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field

from ..backends.base import JobBackend
from ..config import StudyConfig, load_config, parse_config
from ..plan import build_plan
from ..runner import NodeOutcome, RunContext, snapshot_config
from ..selection import expand_force, nodes_for_selection
from ..store import ArtifactStore
from ..tasks.nodes import run_node_task


class GridParams(BaseModel):
    """Parameters of a grid run (the form shown in the Prefect UI)."""

    model_config = ConfigDict(extra="forbid")

    config_path: str | None = Field("configs/mini.yaml", description="YAML config file")
    config: dict[str, Any] | None = Field(None, description="inline config (overrides config_path)")
    select: dict[str, str] = Field(default_factory=dict,
                                   description="cell filter: axis -> glob, axes teacher/student/method/data")
    dry_run: bool = False
    force: list[str] = Field(default_factory=list, description="node-id globs to re-run even if cached")
    store_root: str | None = Field(None, description="artifact store root (default: config store_root)")


class GridFailed(RuntimeError):
    pass


def load_params_config(params: GridParams) -> StudyConfig:
    if params.config is not None:
        return parse_config(params.config, "<inline config>")
    if not params.config_path:
        raise ValueError("give config_path or config")
    return load_config(params.config_path)


def make_backend(cfg: StudyConfig) -> JobBackend | None:
    if cfg.cluster.backend == "local":
        from ..backends.local import LocalBackend

        return LocalBackend(max_workers=cfg.cluster.local_workers)
    from ..backends.slurm import SlurmBackend

    return SlurmBackend.from_profile(cfg.cluster)


@flow(name="grid", task_runner=ThreadPoolTaskRunner(max_workers=64),  # type: ignore[arg-type]
      validate_parameters=True)
def grid(params: GridParams | None = None) -> dict[str, Any]:
    params = params or GridParams()
    logger = get_run_logger()
    cfg = load_params_config(params)
    plan = build_plan(cfg)
    store = ArtifactStore(Path(params.store_root or cfg.store_root))
    node_ids = nodes_for_selection(plan, params.select)
    ctx = RunContext(
        plan=plan, store=store, config_path=snapshot_config(plan, store),
        backend=make_backend(cfg),
        force=expand_force(plan, params.force), dry_run=params.dry_run,
    )
    logger.info("plan %s: %d cells, %d nodes selected", cfg.name, len(plan.cells), len(node_ids))
    futures: dict[str, PrefectFuture[NodeOutcome]] = {}
    for nid in node_ids:
        deps = [futures[d] for d in plan.nodes[nid].deps if d in futures]
        futures[nid] = run_node_task.with_options(task_run_name=nid).submit(  # type: ignore[call-overload]
            ctx, nid, wait_for=deps)
    wait(list(futures.values()))

    outcomes: dict[str, NodeOutcome] = {}
    failed: dict[str, str] = {}
    blocked: list[str] = []
    for nid, fut in futures.items():
        state = fut.state
        if state.is_completed():
            outcomes[nid] = fut.result()
        elif state.is_failed() or state.is_crashed():
            failed[nid] = str(state.message or state.name)
        else:
            blocked.append(nid)  # never ran: an upstream node failed
    summary: dict[str, Any] = {
        "config": cfg.name,
        "nodes": len(node_ids),
        "ran": sorted(n for n, o in outcomes.items() if not o.cached and not o.would_run),
        "cached": sorted(n for n, o in outcomes.items() if o.cached),
        "would_run": sorted(n for n, o in outcomes.items() if o.would_run),
        "failed": failed,
        "blocked": sorted(blocked),
        "artifacts": {n: o.path for n, o in outcomes.items()},
    }
    logger.info("ran %d, cached %d, failed %d, blocked %d", len(summary["ran"]), len(summary["cached"]),
                len(failed), len(blocked))
    if failed or blocked:
        lines = [f"{n}: {m.splitlines()[0] if m else 'failed'}" for n, m in failed.items()]
        raise GridFailed(f"{len(failed)} node(s) failed, {len(blocked)} blocked by them:\n  " + "\n  ".join(lines))
    return summary
