"""The real-jobs driver of scheduler.Scheduler: submit its picks to a JobBackend, finish on COMPLETED.

The twin of `scheduler.simulate_tasks`: same `Scheduler`, same `pick`/`finish` calls, but
the clock is the wall clock and a task ends when the backend says so. Used by the replay
benchmark (bench/bench_replay.py) and its test; the flow's hook is the same loop.

- Readiness-based: a task is submitted when its deps are done AND the capacity model says
  it fits now, in the scheduler's order. Slurm's queue therefore never holds work that
  cannot start, and submission order alone carries the priority (see README, "Scheduling").
- One batched poll per cycle: a poller thread runs `JobWatcher.wait` over all live jobs
  (one `poll_many` per interval); every state change wakes the driver at once, so a
  finished job frees its GPUs within one poll interval.
- Tasks the caller calls `instant` (estimated 0 h: CPU steps, evaluation in the replay)
  complete in the driver without a job.
- Where the backend reports a node other than the planned one, the model follows it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .backends.base import JobBackend, JobRequest, JobState
from .backends.slurm import SlurmBackend
from .backends.watch import JobWatcher, Watched
from .scheduler import Placement, Scheduler, Task

log = logging.getLogger(__name__)


@dataclass
class JobRow:
    """One task as it ran; times in seconds since the driver started."""

    task: str
    gpus: int
    node: int | None                # planned node
    job_id: str | None = None       # None: completed in the driver (instant)
    submit_s: float = 0.0
    running_s: float | None = None  # first poll that saw it RUNNING
    end_s: float | None = None      # poll that saw it finished
    slurm_node: str | None = None
    state: str = "PENDING"


@dataclass
class DriveResult:
    makespan_s: float               # first submit -> last completion seen by the driver
    rows: list[JobRow] = field(default_factory=list)
    polls: int = 0
    failed: list[str] = field(default_factory=list)


def run_on_backend(sched: Scheduler, backend: JobBackend, submit: Callable[[Placement], str], *,
                   instant: Callable[[Task], bool] = lambda t: t.hours == 0,
                   node_names: Sequence[str] = (), poll_s: float = 0.2, timeout_s: float | None = None,
                   clock: Callable[[], float] = time.monotonic) -> DriveResult:
    """Run `sched` to the end with real jobs. `submit(placement)` starts one and returns its id.

    `node_names[i]` is the backend's name of pool node i (to follow the real placement).
    Raises TimeoutError after `timeout_s`, cancelling the live jobs.
    """
    wake = threading.Event()

    def changed(w: Watched) -> None:
        if w.status is not None and w.status.state is not JobState.PENDING:
            wake.set()

    watcher = JobWatcher(backend, initial_interval=poll_s, max_interval=poll_s, on_change=changed)
    index = {name: i for i, name in enumerate(node_names)}
    live: dict[str, JobRow] = {}      # job id -> row
    rows: list[JobRow] = []
    lock = threading.Lock()
    stop = threading.Event()
    t0 = clock()

    def poller() -> None:
        while not stop.is_set():
            with lock:
                ids = list(live)
            if not ids:
                stop.wait(poll_s / 4)
                continue
            try:
                watcher.wait(ids, timeout=poll_s, raise_on_failure=False)
                wake.set()  # all of them finished
            except TimeoutError:
                pass
            except Exception:  # never let the poller die silently: the driver would hang
                log.exception("poll loop failed")
                stop.wait(poll_s)

    thread = threading.Thread(target=poller, name="schedule-poller", daemon=True)
    thread.start()
    failed: list[str] = []
    try:
        while True:
            now = clock() - t0
            for job_id in _start_ready(sched, submit, instant, rows, live, lock, now):
                watcher.track(job_id)
            with lock:
                if not live:
                    break
            if timeout_s is not None and now > timeout_s:
                raise TimeoutError(f"schedule not finished after {timeout_s:g} s")
            wake.wait(poll_s)
            wake.clear()
            now = clock() - t0
            with lock:
                for job_id, row in list(live.items()):
                    w = watcher.watched(job_id)
                    st = w.status
                    if st is not None and st.node:
                        row.slurm_node = st.node
                        if st.node in index and row.node is not None:
                            sched.move(row.task, index[st.node])
                    if st is not None and st.state is JobState.RUNNING and row.running_s is None:
                        row.running_s = now
                    if w.finished:
                        row.end_s = now
                        del live[job_id]
                        if w.error is not None:
                            row.state = w.error.status.state.value
                            failed.append(row.task)
                            sched.fail(row.task)
                            log.error("%s", w.error)
                        else:
                            row.state = JobState.COMPLETED.value
                            sched.finish(row.task)
    except BaseException:
        with lock:
            ids = list(live)
        if ids:
            backend.cancel(ids)
        raise
    finally:
        stop.set()
        thread.join(timeout=10 * poll_s + 30)
    ends = [r.end_s for r in rows if r.end_s is not None and r.job_id is not None]
    starts = [r.submit_s for r in rows if r.job_id is not None]
    return DriveResult(max(ends) - min(starts) if ends else 0.0, rows, watcher.polls, failed)


def _start_ready(sched: Scheduler, submit: Callable[[Placement], str], instant: Callable[[Task], bool],
                 rows: list[JobRow], live: dict[str, JobRow], lock: threading.Lock, now: float) -> list[str]:
    """Submit everything the scheduler picks; instant tasks finish at once (and may unlock more)."""
    submitted: list[str] = []
    while True:
        picks = sched.pick()
        if not picks:
            return submitted
        for p in picks:
            row = JobRow(p.task.id, p.task.gpus, p.node, submit_s=now)
            rows.append(row)
            if instant(p.task):
                row.end_s, row.state = now, JobState.COMPLETED.value
                sched.finish(p.task.id)
                continue
            row.job_id = submit(p)  # a failed submit raises: the caller's run is over, live jobs cancelled
            submitted.append(row.job_id)
            with lock:
                live[row.job_id] = row


def sleep_request(p: Placement, workdir: Path, seconds_per_hour: float, *, tag: str,
                  priority: int | None = None, min_s: float = 0.0) -> JobRequest:
    """The replay's job for a placement: `sleep <estimated hours x seconds_per_hour>` (at least
    `min_s`) with its GPU count."""
    seconds = max(p.task.hours * seconds_per_hour, min_s)
    name = f"{tag}-{p.task.id.replace('/', ':')}"
    return JobRequest(name=name, command=["sleep", f"{seconds:.3f}"], workdir=workdir,
                      log_path=workdir / "logs" / f"{name}.log", kind=p.task.kind, gpus=p.task.gpus,
                      cpus=1, mem="64M", time_limit=str(math.ceil(seconds / 60) + 2), priority=priority)


def sleep_submitter(workdir: Path, seconds_per_hour: float, *, tag: str, partition: str | None = None,
                    gpu_type: str | None = None, pin_nodes: Sequence[str] = (),
                    priorities: Mapping[str, int] | None = None, min_s: float = 0.0,
                    ) -> tuple[SlurmBackend, Callable[[Placement], str]]:
    """Slurm sleep jobs for the replay (see `sleep_request`).

    With `pin_nodes`, task placed on pool node i is submitted with --nodelist=pin_nodes[i], so
    Slurm runs exactly the scheduler's packing (a dedicated pool); without, Slurm places it and
    the driver follows. `priorities` (task id -> JobRequest.priority) become --nice, as in a
    flow run. Returns (backend to poll with, submit function).
    """
    def backend(extra: tuple[str, ...] = ()) -> SlurmBackend:
        # adopt_existing=False: names carry a per-run tag, so the pre-submit squeue is pure latency
        return SlurmBackend(partition=partition, gpu_type=gpu_type, adopt_existing=False, extra_args=extra)

    base = backend()
    pinned = [backend((f"--nodelist={n}",)) for n in pin_nodes]
    prio = priorities or {}

    def submit(p: Placement) -> str:
        req = sleep_request(p, workdir, seconds_per_hour, tag=tag, priority=prio.get(p.task.id), min_s=min_s)
        return (pinned[p.node] if pinned and p.node is not None else base).submit(req)

    return base, submit
