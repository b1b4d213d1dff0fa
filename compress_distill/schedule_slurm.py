"""The real-jobs driver of scheduler.Scheduler: submit its picks to a JobBackend, finish on COMPLETED.

The twin of `scheduler.simulate_tasks`: same `Scheduler`, same `pick`/`finish` calls, but
the clock is the wall clock and a task ends when the backend says so. Used by the replay
benchmark (bench/bench_replay.py) and its test; the flow's hook is the same loop.

- Readiness-based: a task is submitted when its deps are done AND the capacity model says
  it fits now, in the scheduler's order (see README, "Scheduling").
- Submit-ahead (`ahead_s` > 0): each cycle the scheduler runs itself forward on the
  estimates (`scheduler.forecast`); what it would start within the next `ahead_s` seconds
  is submitted now, pinned where it was planned, after the jobs of its inputs (Slurm:
  afterok; cancelled if one fails) and after those planned before it on its node (afterany).
  slurmctld then starts it the moment its inputs end and its GPUs free up, instead of one
  driver poll + one scheduler pass later.
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
from .scheduler import Placement, Scheduler, Task, forecast

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
    waits_for: tuple[str, ...] = ()  # submitted ahead: the job ids it was queued behind


@dataclass
class DriveResult:
    makespan_s: float               # first submit -> last completion seen by the driver
    rows: list[JobRow] = field(default_factory=list)
    polls: int = 0
    failed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class After:
    """What a job submitted ahead waits for: the jobs in `ok` must complete (if one fails,
    it is cancelled); those in `end` must only have ended (they held its GPUs before it)."""

    ok: tuple[str, ...] = ()
    end: tuple[str, ...] = ()


NOW = After()
Submit = Callable[[Placement, After], str]


def run_on_backend(sched: Scheduler, backend: JobBackend, submit: Submit, *,
                   instant: Callable[[Task], bool] = lambda t: t.hours == 0,
                   node_names: Sequence[str] = (), poll_s: float = 0.2, timeout_s: float | None = None,
                   ahead_s: float = 0.0, seconds_per_hour: float = 3600.0,
                   clock: Callable[[], float] = time.monotonic) -> DriveResult:
    """Run `sched` to the end with real jobs. `submit(placement, after)` submits one that may
    start only once the jobs in `after.ok` completed and those in `after.end` ended, and
    returns its id.

    `node_names[i]` is the backend's name of pool node i (to follow the real placement).
    `ahead_s` > 0 submits ahead (module doc); `seconds_per_hour` converts the estimates.
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
    job_of: dict[str, str] = {}       # task id -> job id
    try:
        while True:
            now = clock() - t0
            for job_id in _start_ready(sched, submit, instant, rows, live, lock, now, job_of):
                watcher.track(job_id)
            if ahead_s > 0:
                for job_id in _submit_ahead(sched, submit, instant, rows, live, lock, now, job_of,
                                            ahead_s, seconds_per_hour):
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
                        sched.started(row.task, index.get(st.node or "", row.node))
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


def _start_ready(sched: Scheduler, submit: Submit, instant: Callable[[Task], bool], rows: list[JobRow],
                 live: dict[str, JobRow], lock: threading.Lock, now: float, job_of: dict[str, str]) -> list[str]:
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
            row.job_id = submit(p, NOW)  # a failed submit raises: the caller's run is over, live jobs cancelled
            job_of[p.task.id] = row.job_id
            submitted.append(row.job_id)
            with lock:
                live[row.job_id] = row


def _submit_ahead(sched: Scheduler, submit: Submit, instant: Callable[[Task], bool], rows: list[JobRow],
                  live: dict[str, JobRow], lock: threading.Lock, now: float, job_of: dict[str, str],
                  ahead_s: float, seconds_per_hour: float) -> list[str]:
    """Submit what the forecast starts within `ahead_s`, each after the jobs it waits for."""
    by_task = {r.task: r for r in rows if r.job_id is not None}
    remaining = {}
    for tid in sched.running:
        r = by_task.get(tid)
        ran_h = (now - r.running_s) / seconds_per_hour if r is not None and r.running_s is not None else 0.0
        remaining[tid] = max(0.0, sched.tasks[tid].hours - ran_h)
    submitted: list[str] = []
    for plan in forecast(sched, remaining, ahead_s / seconds_per_hour):
        p = plan.placement
        if instant(p.task):
            continue  # no job: the driver completes it once its deps are done
        after = _gate_jobs(sched, p.task.id, instant, job_of)
        if after is None:
            continue  # waits for a task not submitted yet; a later cycle takes it
        # and after the jobs that hold its node's GPUs before it in the forecast (ended in any
        # state): else the backend's queue order (priority) could start a later one there first
        behind = [job_of[t] for t in plan.behind if t in job_of and t not in sched.done and job_of[t] not in after]
        sched.queue(p.task.id, p.node)
        row = JobRow(p.task.id, p.task.gpus, p.node, submit_s=now, waits_for=(*after, *behind))
        rows.append(row)
        row.job_id = submit(p, After(tuple(after), tuple(behind)))
        job_of[p.task.id] = row.job_id
        submitted.append(row.job_id)
        with lock:
            live[row.job_id] = row
    return submitted


def _gate_jobs(sched: Scheduler, task_id: str, instant: Callable[[Task], bool],
               job_of: Mapping[str, str]) -> list[str] | None:
    """Job ids `task_id` must wait for (through instant tasks, which have none, to their own
    gates); None if one of them is neither submitted nor instant."""
    gates = sched.open_gates(task_id, instant)
    if any(g not in job_of for g in gates):
        return None
    return sorted({job_of[g] for g in gates}, key=lambda j: (len(j), j))


def sleep_request(p: Placement, workdir: Path, seconds_per_hour: float, *, tag: str,
                  priority: int | None = None, min_s: float = 0.0, after: After = NOW,
                  stamps: bool = False) -> JobRequest:
    """The replay's job for a placement: `sleep <estimated hours x seconds_per_hour>` (at least
    `min_s`) with its GPU count. `stamps`: the job appends its start and end (epoch seconds,
    ns resolution) to `stamp_path(...)`, for makespans finer than sacct's 1 s."""
    seconds = max(p.task.hours * seconds_per_hour, min_s)
    name = sleep_job_name(tag, p.task.id)
    command = ["sleep", f"{seconds:.3f}"]
    if stamps:
        command = ["sh", "-c", 'date +%s.%N >> "$1"; sleep "$2"; date +%s.%N >> "$1"', "sh",
                   str(stamp_path(workdir, name)), f"{seconds:.3f}"]
    return JobRequest(name=name, command=command, workdir=workdir,
                      log_path=workdir / "logs" / f"{name}.log", kind=p.task.kind, gpus=p.task.gpus,
                      cpus=1, mem="64M", time_limit=str(math.ceil(seconds / 60) + 2), priority=priority,
                      after=after.ok, after_end=after.end)


def sleep_job_name(tag: str, task_id: str) -> str:
    """The name (and stamp file name) of the replay job of `task_id` in the run tagged `tag`."""
    return f"{tag}-{task_id.replace('/', ':')}"


def stamp_path(workdir: Path, name: str) -> Path:
    return workdir / "stamps" / f"{name}.txt"


def read_stamps(workdir: Path, name: str) -> tuple[float, float] | None:
    """(start, end) epoch seconds a stamped sleep job wrote, or None if it did not finish."""
    try:
        values = [float(x) for x in stamp_path(workdir, name).read_text().split()]
    except (FileNotFoundError, ValueError):
        return None
    return (values[0], values[-1]) if len(values) >= 2 else None


def sleep_submitter(workdir: Path, seconds_per_hour: float, *, tag: str, partition: str | None = None,
                    gpu_type: str | None = None, pin_nodes: Sequence[str] = (),
                    priorities: Mapping[str, int] | None = None, min_s: float = 0.0, stamps: bool = False,
                    ) -> tuple[SlurmBackend, Submit]:
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
    if stamps:
        stamp_path(workdir, "x").parent.mkdir(parents=True, exist_ok=True)

    def submit(p: Placement, after: After = NOW) -> str:
        req = sleep_request(p, workdir, seconds_per_hour, tag=tag, priority=prio.get(p.task.id), min_s=min_s,
                            after=after, stamps=stamps)
        return (pinned[p.node] if pinned and p.node is not None else base).submit(req)

    return base, submit
