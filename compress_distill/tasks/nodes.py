"""The one Prefect task: run a plan node through the core runner.

The artifact store, not Prefect's result cache, decides what is done: the
task has no cache policy, and a cache hit is a store lookup that costs a
manifest read and a stat() per file. The flow starts this task only when its
scheduler admits the node (flows/grid.py: the project's one admission policy),
so the task itself waits for nothing.

No Prefect retries: the job watcher resubmits a job that the machine lost
(backends/watch.py, the one retry layer), so one node costs at most
`1 + JobWatcher.max_retries` sbatch submissions per run.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.exceptions import MissingContextError

from .. import events, faults
from ..backends.base import NOW, After
from ..runner import NodeOutcome, RunContext, run_node


def job_submitted(node_id: str, job_id: str, log_path: Path) -> None:
    """RunContext.on_job: the job id and log path go to the live view and to the task's Prefect log."""
    events.emit("job", node_id, job_id=job_id, log=str(log_path))
    with contextlib.suppress(MissingContextError):  # called outside a task run (e.g. direct runner use)
        get_run_logger().info("%s: job %s submitted, log %s", node_id, job_id, log_path)


@task(cache_policy=NONE, task_run_name="{node_id}")
def run_node_task(ctx: RunContext, node_id: str, after: After = NOW) -> NodeOutcome:
    """`after`: the jobs this node's job waits for in the queue (submitted ahead, flows/grid.py)."""
    logger = get_run_logger()
    events.emit("start", node_id)
    outcome = run_node(ctx, node_id, after)
    faults.reached("task-end", node_id)
    if outcome.cached:
        logger.info("%s: cached -> %s", node_id, outcome.path)
    elif outcome.would_run:
        logger.info("%s: would run (dry run) -> %s", node_id, outcome.path)
    else:
        job = f" job {outcome.job_id}" if outcome.job_id else ""
        logger.info("%s: ran%s in %.1fs -> %s", node_id, job, outcome.seconds, outcome.path)
    return outcome
