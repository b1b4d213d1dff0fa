"""JobWatcher: wait for many jobs of any backend with ONE poll per cycle, with backoff.

Many callers (e.g. Prefect tasks in threads) may wait at once; whichever is due polls
for ALL live jobs in one `backend.poll_many` call and wakes the others. The interval
starts at `initial_interval` and doubles up to `max_interval`; it drops back to the start
when a job is added or changes state.

What a final state means here (the README's table):
- COMPLETED: done.
- NODE_FAIL, PREEMPTED (transient: the machine failed, not the job): resubmitted up to
  `max_retries` (MAX_RESUBMITS) times when the watcher has the JobRequest, else raised as a
  transient JobError. This is the project's one retry layer for jobs: nothing above it
  (no Prefect task retry) submits a node again, so a node costs at most 1 + MAX_RESUBMITS
  sbatch submissions per run (tests/faults/test_submissions.py counts them on Slurm).
  A job Slurm requeues by itself (REQUEUED, or back to PENDING after RUNNING)
  is not finished: it is counted in `requeues` and waited for.
- FAILED, OUT_OF_MEMORY, TIMEOUT, CANCELLED: real failures, raised as JobError with the
  log tail. TIMEOUT says "raise the time limit or resume from checkpoint".
- UNKNOWN (e.g. sacct answers nothing) is waited out, but at most `unknown_timeout_s`:
  then it is an error too, never a hang and never a success.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .base import JobBackend, JobError, JobRequest, JobState, JobStatus, log_tail
from .common import array_task_log

MAX_RESUBMITS = 2  # of a job the machine lost (NODE_FAIL, PREEMPTED); see the module doc

log = logging.getLogger(__name__)

_HINTS = {
    JobState.TIMEOUT: "time limit reached: raise the time limit or resume from checkpoint",
    JobState.OUT_OF_MEMORY: "out of memory: raise the job's mem",
    JobState.CANCELLED: "cancelled (by a user, an admin or a failed dependency)",
    JobState.NODE_FAIL: "node failure (transient)",
    JobState.PREEMPTED: "preempted (transient)",
}


@dataclass
class Backoff:
    """Exponential backoff: initial, initial*factor, ... capped at `cap`."""

    initial: float = 1.0
    cap: float = 30.0
    factor: float = 2.0
    current: float = field(init=False)

    def __post_init__(self) -> None:
        self.current = self.initial

    def next(self) -> float:
        value = self.current
        self.current = min(self.current * self.factor, self.cap)
        return value

    def reset(self) -> None:
        self.current = self.initial


@dataclass
class Watched:
    """One job as the caller knows it. `key` is the first job id; `job_id` the current one."""

    key: str
    job_id: str
    request: JobRequest | None = None
    log_path: Path | None = None
    status: JobStatus | None = None
    earlier_ids: list[str] = field(default_factory=list)
    # its work is committed (the result file came first): watched to its end, never resubmitted
    settled: bool = False
    resubmits: int = 0
    requeues: int = 0
    unknown_since: float | None = None
    error: JobError | None = None

    @property
    def finished(self) -> bool:
        return self.error is not None or (self.status is not None and self.status.state is JobState.COMPLETED)

    def log_for(self, status: JobStatus) -> Path | None:
        """The log to show for a status (an array task's own log when it names one)."""
        if self.log_path is None:
            return None
        base, sep, task = status.job_id.rpartition("_")
        if sep and task.isdigit() and self.request is not None and self.request.array is not None:
            return array_task_log(self.log_path, task)
        return self.log_path


class JobWatcher:
    def __init__(self, backend: JobBackend, *, initial_interval: float = 1.0, max_interval: float = 30.0,
                 factor: float = 2.0, max_retries: int = MAX_RESUBMITS, unknown_timeout_s: float = 600.0,
                 log_lines: int = 30, on_change: Callable[[Watched], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.backend = backend
        self.backoff = Backoff(initial_interval, max_interval, factor)
        self.max_retries = max_retries
        self.unknown_timeout_s = unknown_timeout_s
        self.log_lines = log_lines
        self.on_change = on_change
        self.clock = clock
        self.polls = 0
        self._jobs: dict[str, Watched] = {}
        self._cond = threading.Condition()
        self._polling = False
        self._next_poll = 0.0

    # ------------------------------------------------------------------ registering

    def submit(self, req: JobRequest) -> str:
        """Submit through the backend and watch; returns the job id (the key for `wait`)."""
        job_id = self.backend.submit(req)
        self.track(job_id, req)
        return job_id

    def track(self, job_id: str, request: JobRequest | None = None, log_path: Path | None = None) -> Watched:
        """Watch a job submitted elsewhere (or earlier, by a previous orchestrator)."""
        with self._cond:
            w = self._jobs.get(job_id)
            if w is None:
                w = Watched(job_id, job_id, request, log_path or (request.log_path if request else None))
                self._jobs[job_id] = w
                self.backoff.reset()
                self._next_poll = min(self._next_poll, self.clock() + self.backoff.initial)
                self._cond.notify_all()
            return w

    def drain(self, timeout_s: float) -> list[str]:
        """Wait (at most `timeout_s`) until every watched job has ended, failures included, so that
        their final states are recorded; returns those still live after it. A run calls it at its
        end: nodes commit on their result file, while their jobs' teardown may still run."""
        with self._cond:
            keys = [k for k, w in self._jobs.items() if not w.finished]
            self.backoff.reset()
            self._next_poll = self.clock()
        try:
            self.wait(keys, timeout=timeout_s, raise_on_failure=False)
        except TimeoutError:
            pass
        with self._cond:
            return [self._jobs[k].job_id for k in keys if not self._jobs[k].finished]

    def settle(self, key: str) -> None:
        """The job's work is committed before it ended (its teardown runs on): a failure from now
        on is logged, and the job is never resubmitted."""
        with self._cond:
            self._jobs[key].settled = True

    def watched(self, key: str) -> Watched:
        with self._cond:
            return self._jobs[key]

    # ------------------------------------------------------------------ waiting

    def wait(self, job_ids: Iterable[str], timeout: float | None = None,
             raise_on_failure: bool = True) -> dict[str, JobStatus]:
        """Block until every given job is finished; return their final statuses by key.

        Raises the first JobError as soon as one of them fails (unless raise_on_failure is
        False), TimeoutError after `timeout` seconds (the jobs keep running).
        """
        keys = list(dict.fromkeys(str(k) for k in job_ids))
        for k in keys:
            self.track(k)
        deadline = None if timeout is None else self.clock() + timeout
        with self._cond:
            while True:
                if raise_on_failure:
                    err = next((self._jobs[k].error for k in keys if self._jobs[k].error), None)
                    if err is not None:
                        raise err
                if all(self._jobs[k].finished for k in keys):
                    return {k: self._final(self._jobs[k]) for k in keys}
                now = self.clock()
                if deadline is not None and now >= deadline:
                    left = [k for k in keys if not self._jobs[k].finished]
                    raise TimeoutError(f"jobs still running after {timeout} s: {', '.join(left)}")
                if not self._polling and now >= self._next_poll:
                    self._poll_cycle()
                    continue
                pause = math.inf if self._polling else self._next_poll - now
                if deadline is not None:
                    pause = min(pause, deadline - now)
                self._cond.wait(None if pause == math.inf else max(pause, 0.0))

    def cancel_all(self) -> list[str]:
        """One backend.cancel for every job still live (e.g. when the flow run is cancelled), but
        those settled: their work is committed, only their teardown may still run."""
        with self._cond:
            ids = [w.job_id for w in self._jobs.values() if not w.finished and not w.settled]
        if ids:
            self.backend.cancel(ids)
        return ids

    # ------------------------------------------------------------------ one cycle

    def _poll_cycle(self) -> None:
        """Poll all live jobs once. Called with the lock held; releases it for the IO."""
        self._polling = True
        live = {w.job_id: w for w in self._jobs.values() if not w.finished}
        resubmit: list[Watched] = []
        changed = False
        self._cond.release()
        try:
            try:
                statuses = self.backend.poll_many(list(live))
            except Exception:  # a poll that fails must not kill every waiter: retry next cycle
                log.warning("poll of %d job(s) failed", len(live), exc_info=True)
                statuses = {}
            finally:
                self.polls += 1
            with self._cond:
                now = self.clock()
                for job_id, w in live.items():
                    st = statuses.get(job_id)
                    changed |= self._apply(w, st, now, resubmit)
            for w in resubmit:  # outside the lock: a submit can block
                self._resubmit(w)
                changed = True
        finally:
            self._cond.acquire()
            self._polling = False
            if changed:
                self.backoff.reset()
            self._next_poll = self.clock() + self.backoff.next()
            self._cond.notify_all()

    def _apply(self, w: Watched, st: JobStatus | None, now: float, resubmit: list[Watched]) -> bool:
        prev = w.status
        if st is None or st.state is JobState.UNKNOWN:
            w.unknown_since = w.unknown_since or now
            if st is not None:
                w.status = st
            if now - w.unknown_since > self.unknown_timeout_s:
                why = (st.reason if st else None) or "the backend returned nothing"
                bad = JobStatus(job_id=w.job_id, state=JobState.UNKNOWN, node=prev.node if prev else None,
                                reason=f"no definite status for {self.unknown_timeout_s:g} s: {why}")
                w.error = self._error(w, bad)
                log.error("%s", w.error)
                return True
            return prev is None or st is not None and prev.state is not st.state
        w.unknown_since = None
        if prev is not None and (st.state is JobState.REQUEUED and prev.state is not JobState.REQUEUED
                                 or prev.state is JobState.RUNNING and st.state is JobState.PENDING):
            w.requeues += 1
        w.requeues = max(w.requeues, st.restarts)
        w.status = st
        changed = prev is None or prev.state is not st.state
        if changed:
            log.info("job %s (%s) %s%s%s%s", w.job_id, w.request.name if w.request else "-", st.state.value,
                     f" on {st.node}" if st.node else "", f" [{st.reason}]" if st.reason else "",
                     f"; log {w.log_for(st)}" if w.log_path else "")
            if self.on_change:
                self.on_change(w)
        if not st.state.terminal or st.state is JobState.COMPLETED:
            return changed
        if st.state.transient and w.request is not None and w.resubmits < self.max_retries and not w.settled:
            resubmit.append(w)
            return True
        w.error = self._error(w, st)
        if w.settled:
            log.warning("job %s ended %s after its work was committed", w.job_id, st.state.value)
        else:
            log.error("%s", w.error)
        return True

    def _resubmit(self, w: Watched) -> None:
        assert w.request is not None and w.status is not None
        log.warning("job %s ended %s (transient): resubmitting (%d/%d)", w.job_id, w.status.state.value,
                    w.resubmits + 1, self.max_retries)
        try:
            new_id = self.backend.submit(w.request)
        except Exception as e:
            with self._cond:
                w.error = self._error(w, replace(w.status, reason=f"{w.status.reason or ''}; resubmit failed: {e}"))
            return
        with self._cond:
            w.earlier_ids.append(w.job_id)
            w.job_id, w.status, w.resubmits = new_id, None, w.resubmits + 1

    def _error(self, w: Watched, st: JobStatus) -> JobError:
        hint = _HINTS.get(st.state)
        if hint and (not st.reason or hint not in st.reason):
            st = replace(st, reason=f"{hint}; {st.reason}" if st.reason else hint)
        path = w.log_for(st)
        return JobError(st.job_id, st, log_tail(path, self.log_lines) if path else "")

    @staticmethod
    def _final(w: Watched) -> JobStatus:
        if w.error is not None:
            return w.error.status
        assert w.status is not None
        return w.status
