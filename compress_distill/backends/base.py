"""The job-backend protocol shared by the local (subprocess) and Slurm backends.

A job is an argv list plus resources. Data reaches the job through files
and argv elements, never through text pasted into a shell script.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class JobState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    REQUEUED = "REQUEUED"  # not finished: a requeued/preempted job runs again
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    UNKNOWN = "UNKNOWN"  # the backend could not tell (e.g. sacct answered nothing yet)

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def transient(self) -> bool:
        """A failure worth retrying: the job did nothing wrong, its machine did."""
        return self in TRANSIENT


TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT,
                      JobState.NODE_FAIL, JobState.PREEMPTED, JobState.OUT_OF_MEMORY})
TRANSIENT = frozenset({JobState.NODE_FAIL, JobState.PREEMPTED})


@dataclass(frozen=True)
class JobRequest:
    name: str                 # deterministic: node id + key, so a resubmit can be detected
    command: list[str]        # argv, executed without a shell
    workdir: Path
    log_path: Path
    kind: str                 # vllm | train | eval | cpu (selects resources/env in the cluster profile)
    gpus: int = 0
    cpus: int = 1
    mem: str | None = None
    time_limit: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    # A job array ("0-9", "0-99%8", "1,3,5"): one id, one task per index; each task gets
    # SLURM_ARRAY_TASK_ID and logs to array_task_log(log_path, index). None = a single job.
    array: str | None = None
    # Higher runs first among this run's queued jobs: the node's longest remaining path in
    # minutes (scheduler.node_priorities). Slurm: --nice (jobs.flags.nice_for); local: the
    # start order of queued jobs. None = the backend's default (no --nice, i.e. nice 0;
    # locally: ahead of prioritised jobs, in submit order).
    priority: int | None = None
    # Job ids (of the same backend) that must COMPLETE before this job may start (if one
    # fails, this job is cancelled), and those that must only have ENDED. Slurm:
    # --dependency=afterok:..,afterany:.. --kill-on-invalid-dep=yes. Lets a driver submit
    # ahead (flows/grid.py). The local backend starts jobs at submit and refuses both.
    after: tuple[str, ...] = ()
    after_end: tuple[str, ...] = ()
    # Run on exactly this node (Slurm: --nodelist): the flow's scheduler placed it there, in a
    # pool the profile names node by node (cluster.node_names). The local backend ignores it.
    node: str | None = None


@dataclass(frozen=True)
class After:
    """Where and behind what the scheduler puts a node's job: the jobs it is queued behind
    (submit-ahead, scheduler.forecast; those in `ok` must complete, and if one fails Slurm
    cancels it; those in `end` must only have ended), and the pool node it was placed on
    (None: the backend places it)."""

    ok: tuple[str, ...] = ()
    end: tuple[str, ...] = ()
    node: str | None = None

    @property
    def waits(self) -> bool:
        return bool(self.ok or self.end)


NOW = After()


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: JobState
    exit_code: int | None = None
    node: str | None = None
    elapsed_s: float | None = None
    reason: str | None = None
    restarts: int = 0  # times the scheduler requeued the job (each restart runs it again)


class JobError(RuntimeError):
    """A job ended in a state other than COMPLETED. Carries the state and the log tail."""

    def __init__(self, job_id: str, status: JobStatus, log_tail: str = ""):
        self.job_id = job_id
        self.status = status
        self.log_tail = log_tail
        msg = f"job {job_id} ended {status.state.value}"
        if status.exit_code not in (None, 0):
            msg += f" (exit {status.exit_code})"
        if status.reason:
            msg += f": {status.reason}"
        if log_tail:
            msg += f"\n--- log tail ---\n{log_tail}"
        super().__init__(msg)

    @property
    def transient(self) -> bool:
        return self.status.state.transient


class JobBackend(Protocol):
    name: str

    def submit(self, req: JobRequest) -> str:
        """Start the job; return its id."""
        ...

    def poll_many(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        """One status query for all the given jobs (never a per-job loop)."""
        ...

    def cancel(self, job_ids: Iterable[str]) -> None:
        ...


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
