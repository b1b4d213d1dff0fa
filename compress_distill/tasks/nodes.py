"""The one Prefect task: run a plan node through the core runner.

The artifact store, not Prefect's result cache, decides what is done: the
task has no cache policy, and a cache hit is a store lookup that costs one
stat() call.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from ..backends.base import JobError
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


@task(cache_policy=NONE, retries=2, retry_delay_seconds=10, retry_condition_fn=_transient)
def run_node_task(ctx: RunContext, node_id: str) -> NodeOutcome:
    logger = get_run_logger()
    outcome = run_node(ctx, node_id)
    if outcome.cached:
        logger.info("%s: cached -> %s", node_id, outcome.path)
    elif outcome.would_run:
        logger.info("%s: would run (dry run) -> %s", node_id, outcome.path)
    else:
        job = f" job {outcome.job_id}" if outcome.job_id else ""
        logger.info("%s: ran%s in %.1fs -> %s", node_id, job, outcome.seconds, outcome.path)
    return outcome
