"""The one Prefect task: run a plan node through the core runner.

The artifact store, not Prefect's result cache, decides what is done: the
task has no cache policy, and a cache hit is a store lookup that costs a
manifest read and a stat() per file. A node that will really submit a GPU job
first takes its GPUs from the pool's global concurrency limit (flows/limits.py), so cached and
CPU nodes never wait for GPUs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.exceptions import MissingContextError

from .. import faults
from ..backends.base import JobError
from ..flows import events
from ..flows.limits import LEASE_S, gpu_limit_specs, gpu_slots
from ..runner import NodeOutcome, RunContext, run_node


def _transient(task, task_run, state) -> bool:  # type: ignore[no-untyped-def]
    """Retry only failures of the machine (preemption, node failure), never of the config or code."""
    try:
        state.result()
    except JobError as err:
        return err.transient
    except Exception:
        return False
    return False


def job_submitted(node_id: str, job_id: str, log_path: Path) -> None:
    """RunContext.on_job: the job id and log path go to the live view and to the task's Prefect log."""
    events.emit("job", node_id, job_id=job_id, log=str(log_path))
    with contextlib.suppress(MissingContextError):  # called outside a task run (e.g. direct runner use)
        get_run_logger().info("%s: job %s submitted, log %s", node_id, job_id, log_path)


def needs_gpu_slots(ctx: RunContext, node_id: str) -> bool:
    """True when running the node will submit a job that holds GPUs of a limited pool."""
    node = ctx.plan.nodes[node_id]
    if ctx.dry_run or ctx.backend is None or node.job.kind == "cpu" or node.job.gpus <= 0:
        return False
    if not gpu_limit_specs(ctx.plan.config.cluster):
        return False  # the profile has no GPU pool (e.g. the local mini world)
    return node_id in ctx.force or not ctx.store.is_done(node.stage, node.name, ctx.plan.keys[node_id])


@task(cache_policy=NONE, retries=2, retry_delay_seconds=10, retry_condition_fn=_transient, task_run_name="{node_id}")
def run_node_task(ctx: RunContext, node_id: str, gpu_limits: bool = True) -> NodeOutcome:
    logger = get_run_logger()
    events.emit("start", node_id)
    slots: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if gpu_limits and needs_gpu_slots(ctx, node_id):
        gpus = ctx.plan.nodes[node_id].job.gpus
        logger.info("%s: waiting for %d GPU slot(s) of the pool", node_id, gpus)
        slots = gpu_slots(ctx.plan.config.cluster, gpus)
    outcome: NodeOutcome | None = None
    try:
        with slots:
            outcome = run_node(ctx, node_id)
            faults.reached("slot-release", node_id)
    except Exception as err:
        if outcome is None:
            raise
        # The node committed; only the bookkeeping after it failed (the Prefect API went away while
        # the slots were released). A committed node is a success: the server frees the slots when
        # their lease expires (flows/limits.py LEASE_S), and a rerun finds the node done.
        logger.warning("%s: committed, but releasing its GPU slot(s) failed (%s: %s); the server frees "
                       "them when their lease expires (%d s)", node_id, type(err).__name__, err, LEASE_S)
    if outcome.cached:
        logger.info("%s: cached -> %s", node_id, outcome.path)
    elif outcome.would_run:
        logger.info("%s: would run (dry run) -> %s", node_id, outcome.path)
    else:
        job = f" job {outcome.job_id}" if outcome.job_id else ""
        logger.info("%s: ran%s in %.1fs -> %s", node_id, job, outcome.seconds, outcome.path)
    return outcome
