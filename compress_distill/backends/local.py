"""LocalBackend: the JobBackend protocol with subprocesses on this machine.

The same JobRequest runs as it would under Slurm: argv without a shell, in its workdir,
env = this process's env + req.env, stdout+stderr appended to req.log_path (array task
i: array_task_log(log_path, i), with SLURM_ARRAY_TASK_ID=i), the same header/footer
lines in the log and the same state file (common.py). Each job gets its own session
(process group), so cancel and time limits kill everything it started.

At most `max_workers` processes run at once; `submit` blocks until a slot frees. When
several submitters wait (the flow's threads), the queued job with the highest
`JobRequest.priority` starts first (None counts as highest, like Slurm's default nice 0;
ties: submit order), as Slurm does with --nice. A small daemon thread reaps processes, enforces `time_limit` (-> TIMEOUT) and starts
queued array tasks; it exits when nothing is left.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from ..owner import OWNER_ENV
from .base import JobRequest, JobState, JobStatus
from .common import array_task_log, check_env, final_record, parse_array_spec, submit_record, write_state
from .slurm_parse import aggregate, parse_duration

log = logging.getLogger(__name__)

_ids = itertools.count(1)
_order = itertools.count(1)


@dataclass
class _Task:
    index: int | None
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started: float | None = None
    ended: float | None = None
    state: JobState = JobState.PENDING
    exit_code: int | None = None
    reason: str | None = None
    term_sent: float | None = None   # when SIGTERM went to its group (cancel or time limit)
    why_killed: JobState | None = None


@dataclass
class _Job:
    job_id: str
    req: JobRequest
    tasks: list[_Task]
    limit_s: float | None
    max_parallel: int | None
    cancelled: bool = False
    recorded: bool = False
    order: int = field(default_factory=lambda: next(_order))

    def task_id(self, t: _Task) -> str:
        return self.job_id if t.index is None else f"{self.job_id}_{t.index}"


class LocalBackend:
    name = "local"

    def __init__(self, max_workers: int = 2, *, kill_grace_s: float = 5.0, tick_s: float = 0.1):
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self.max_workers = max_workers
        self.kill_grace_s = kill_grace_s
        self.tick_s = tick_s
        self.node = socket.gethostname()
        self._jobs: dict[str, _Job] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ protocol

    def submit(self, req: JobRequest) -> str:
        if not req.command:
            raise ValueError(f"job {req.name!r}: empty command")
        if req.after or req.after_end:
            raise ValueError(f"job {req.name!r}: the local backend starts jobs at submit and cannot wait for "
                             f"other jobs ({[*req.after, *req.after_end]}); submit it once they ended")
        check_env(req.env)
        req = replace(req, workdir=req.workdir.absolute(), log_path=req.log_path.absolute())
        limit = parse_duration(req.time_limit) if req.time_limit else None
        if req.array is None:
            tasks, max_par = [_Task(None, req.log_path)], None
        else:
            indices, max_par = parse_array_spec(req.array)
            tasks = [_Task(i, array_task_log(req.log_path, i)) for i in indices]
        job = _Job(f"local-{os.getpid()}-{next(_ids)}", req, tasks, limit, max_par)
        req.log_path.parent.mkdir(parents=True, exist_ok=True)
        write_state(req.log_path, submit_record(self.name, job.job_id, req))
        with self._cond:
            self._jobs[job.job_id] = job
            self._ensure_thread()
            self._cond.notify_all()
            # block until this job's first task holds a slot (or the job was cancelled)
            while tasks[0].state is JobState.PENDING and not job.cancelled:
                self._cond.wait(self.tick_s)
        log.info("started local job %s (%s), log %s", job.job_id, req.name, req.log_path)
        return job.job_id

    def poll_many(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        out: dict[str, JobStatus] = {}
        with self._cond:
            self._tick()
            for jid in dict.fromkeys(str(j) for j in job_ids):
                out[jid] = self._status(jid)
        return out

    def cancel(self, job_ids: Iterable[str]) -> None:
        """SIGTERM each job's process group (SIGKILL after kill_grace_s); waits until they are gone."""
        now = time.monotonic()
        with self._cond:
            targets = []
            for jid in dict.fromkeys(str(j) for j in job_ids):
                job, index = self._lookup(jid)
                if job is None:
                    log.warning("cancel: unknown local job %s", jid)
                    continue
                for t in job.tasks:
                    if index is not None and t.index != index:
                        continue
                    if index is None:
                        job.cancelled = True
                    if t.state is JobState.PENDING:
                        self._finish(job, t, JobState.CANCELLED, None, "cancelled before it started")
                    elif t.state is JobState.RUNNING:
                        self._signal(t, signal.SIGTERM, JobState.CANCELLED, now)
                        targets.append(t)
            self._cond.notify_all()
            deadline = now + self.kill_grace_s + 2.0
            while any(t.state is JobState.RUNNING for t in targets) and time.monotonic() < deadline:
                self._cond.wait(self.tick_s)

    # ------------------------------------------------------------------ status

    def _lookup(self, jid: str) -> tuple[_Job | None, int | None]:
        if jid in self._jobs:
            return self._jobs[jid], None
        base, _, idx = jid.rpartition("_")
        if base in self._jobs and idx.isdigit():
            return self._jobs[base], int(idx)
        return None, None

    def _status(self, jid: str) -> JobStatus:
        job, index = self._lookup(jid)
        if job is None:
            return JobStatus(job_id=jid, state=JobState.UNKNOWN, reason="unknown local job (another process?)")
        now = time.monotonic()
        statuses = []
        for t in job.tasks:
            if index is not None and t.index != index:
                continue
            elapsed = None if t.started is None else (t.ended or now) - t.started
            statuses.append(JobStatus(job_id=job.task_id(t), state=t.state, exit_code=t.exit_code,
                                      node=self.node if t.started else None, elapsed_s=elapsed,
                                      reason=t.reason))
        if not statuses:
            return JobStatus(job_id=jid, state=JobState.UNKNOWN, reason="no such array task")
        return aggregate(jid, statuses)

    # ------------------------------------------------------------------ the worker thread

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="local-jobs", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        with self._cond:
            while True:
                self._tick()
                self._cond.notify_all()
                if not any(t.state in (JobState.PENDING, JobState.RUNNING)
                           for j in self._jobs.values() for t in j.tasks):
                    self._thread = None
                    return
                self._cond.wait(self.tick_s)

    def _tick(self) -> None:
        """Reap, enforce limits, start queued tasks. Caller holds the lock."""
        now = time.monotonic()
        running = 0
        for job in self._jobs.values():
            for t in job.tasks:
                if t.state is not JobState.RUNNING or t.proc is None:
                    continue
                rc = t.proc.poll()
                if rc is not None:
                    self._reaped(job, t, rc)
                    continue
                running += 1
                if t.term_sent is None and job.limit_s is not None and now - (t.started or now) > job.limit_s:
                    self._signal(t, signal.SIGTERM, JobState.TIMEOUT, now)
                elif t.term_sent is not None and now - t.term_sent > self.kill_grace_s:
                    self._signal(t, signal.SIGKILL, t.why_killed or JobState.CANCELLED, now)
        for job in sorted(self._jobs.values(), key=_start_rank):
            job_running = sum(t.state is JobState.RUNNING for t in job.tasks)
            for t in job.tasks:
                if running >= self.max_workers:
                    return
                if t.state is not JobState.PENDING or job.cancelled:
                    continue
                if job.max_parallel is not None and job_running >= job.max_parallel:
                    break
                self._start(job, t)
                if t.state is JobState.RUNNING:
                    running += 1
                    job_running += 1

    def _start(self, job: _Job, t: _Task) -> None:
        req = job.req
        # A local job must not outlive a killed orchestrator: node_main exits when this pid is gone.
        # A local job is this process's: it carries the run's owner token (owner.py) whatever the
        # request says, so it dies with the run, even a SIGKILLed one.
        env = {**os.environ, **req.env, OWNER_ENV: os.environ.get(OWNER_ENV, "")}
        if t.index is not None:
            env["SLURM_ARRAY_TASK_ID"] = str(t.index)
            env["SLURM_ARRAY_JOB_ID"] = job.job_id
        t.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(t.log_path, "ab") as f:
            _log_line(f, f"job {job.task_id(t)} on {self.node} start {_now()}")
            try:
                t.proc = subprocess.Popen(req.command, cwd=req.workdir, env=env, stdin=subprocess.DEVNULL,
                                          stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as e:
                _log_line(f, f"cannot start {req.command[0]!r}: {e}")
                self._finish(job, t, JobState.FAILED, 127, f"cannot start: {e}")
                return
        first = not any(x.started is not None for x in job.tasks)
        t.state, t.started = JobState.RUNNING, time.monotonic()
        if first:  # the job's own start, not its submit: its cost counts from here (jobcost.py)
            write_state(req.log_path, {"started_at": time.time()})

    def _signal(self, t: _Task, sig: signal.Signals, why: JobState, now: float) -> None:
        if t.proc is None:
            return
        t.why_killed = t.why_killed or why
        if t.term_sent is None:
            t.term_sent = now
        try:
            os.killpg(t.proc.pid, sig)  # the whole session: the job's children too
        except ProcessLookupError:
            pass

    def _reaped(self, job: _Job, t: _Task, rc: int) -> None:
        if t.why_killed is not None and rc != 0:
            state = t.why_killed
            reason = "time limit reached" if state is JobState.TIMEOUT else "cancelled"
        elif rc == 0:
            state, reason = JobState.COMPLETED, None
        else:
            state = JobState.FAILED
            reason = f"killed by signal {-rc}" if rc < 0 else None
        code = 128 - rc if rc < 0 else rc
        with open(t.log_path, "ab") as f:
            _log_line(f, f"exit {code} end {_now()}" + (f" ({state.value})" if state is not JobState.FAILED else ""))
        self._finish(job, t, state, code, reason)

    def _finish(self, job: _Job, t: _Task, state: JobState, code: int | None, reason: str | None) -> None:
        t.state, t.exit_code, t.reason, t.ended = state, code, reason, time.monotonic()
        if not job.recorded and all(x.state.terminal for x in job.tasks):
            job.recorded = True
            write_state(job.req.log_path, final_record(self._status(job.job_id)))


def _start_rank(job: _Job) -> tuple[float, int]:
    """Queued jobs start highest priority first (None: highest), then in submit order."""
    p = job.req.priority
    return (-math.inf if p is None else -p, job.order)


def _log_line(f: IO[bytes], text: str) -> None:
    f.write(f"[compress-distill] {text}\n".encode())
    f.flush()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
