"""JobWatcher with a scripted backend: one poll per cycle, backoff, transient retries, no hangs."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import pytest

from compress_distill.backends.base import JobError, JobRequest, JobState, JobStatus
from compress_distill.backends.watch import Backoff, JobWatcher

S = JobState


class Scripted:
    """A backend whose jobs walk through given state sequences, one step per poll."""

    name = "scripted"

    def __init__(self, plans: dict[str, list[JobState]]):
        self.plans = {k: list(v) for k, v in plans.items()}
        self.polls: list[list[str]] = []
        self.submitted: list[JobRequest] = []
        self.cancelled: list[list[str]] = []
        self.lock = threading.Lock()

    def submit(self, req: JobRequest) -> str:
        with self.lock:
            self.submitted.append(req)
            return f"{req.name}#{len(self.submitted)}"

    def poll_many(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        ids = list(job_ids)
        with self.lock:
            self.polls.append(ids)
        out = {}
        for i in ids:
            plan = self.plans.get(i, [S.COMPLETED])
            state = plan.pop(0) if len(plan) > 1 else plan[0]
            out[i] = JobStatus(i, state, exit_code=0 if state is S.COMPLETED else 1, restarts=0)
        return out

    def cancel(self, job_ids: Iterable[str]) -> None:
        self.cancelled.append(list(job_ids))


def fast(backend, **kw) -> JobWatcher:
    return JobWatcher(backend, initial_interval=0.01, max_interval=0.05, **kw)


def test_backoff_doubles_to_cap_and_resets() -> None:
    b = Backoff(1.0, 30.0, 2.0)
    assert [b.next() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    b.reset()
    assert b.next() == 1


def test_one_poll_per_cycle_for_all_jobs() -> None:
    plans = {f"j{i}": [S.PENDING] * i + [S.RUNNING, S.COMPLETED] for i in range(5)}
    be = Scripted(plans)
    w = fast(be)
    out = w.wait(list(plans), timeout=10)
    assert all(s.state is S.COMPLETED for s in out.values())
    assert len(be.polls) == w.polls
    assert be.polls[0] == list(plans)  # the first cycle asks about every job at once
    assert max(len(p) for p in be.polls) == 5 and len(be.polls) <= 8


def test_threads_share_the_poll() -> None:
    plans = {f"j{i}": [S.PENDING, S.RUNNING, S.RUNNING, S.COMPLETED] for i in range(6)}
    be = Scripted(plans)
    w = fast(be)
    for k in plans:
        w.track(k)
    results: dict[str, JobState] = {}
    threads = [threading.Thread(target=lambda k=k: results.update({k: w.wait([k], timeout=10)[k].state}))
               for k in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {k: S.COMPLETED for k in plans}
    assert len(be.polls) <= 6  # not one poll per waiting thread per cycle


def test_real_failure_raises_with_hint(tmp_path: Path) -> None:
    log = tmp_path / "t.log"
    log.write_text("step 1\nstep 2\nkilled\n")
    be = Scripted({"r#1": [S.RUNNING, S.TIMEOUT]})
    w = fast(be)
    w.track("r#1", JobRequest("r", ["x"], tmp_path, log, "train"))
    with pytest.raises(JobError) as ei:
        w.wait(["r#1"], timeout=10)
    e = ei.value
    assert e.status.state is S.TIMEOUT and not e.transient
    assert "raise the time limit or resume from checkpoint" in str(e) and "killed" in e.log_tail


def test_transient_failure_is_resubmitted(tmp_path: Path) -> None:
    r = JobRequest("n", ["x"], tmp_path, tmp_path / "n.log", "train")
    be = Scripted({"n#1": [S.RUNNING, S.NODE_FAIL], "n#2": [S.PENDING, S.COMPLETED]})
    w = fast(be)
    jid = w.submit(r)
    out = w.wait([jid], timeout=10)
    assert out[jid].state is S.COMPLETED and out[jid].job_id == "n#2"
    info = w.watched(jid)
    assert info.resubmits == 1 and info.earlier_ids == ["n#1"] and len(be.submitted) == 2


def test_a_settled_job_is_never_resubmitted(tmp_path: Path) -> None:
    """The node committed on the job's result file; the machine then lost the job in its teardown."""
    r = JobRequest("s", ["x"], tmp_path, tmp_path / "s.log", "train")
    be = Scripted({"s#1": [S.RUNNING, S.NODE_FAIL], "s#2": [S.COMPLETED]})
    w = fast(be)
    jid = w.submit(r)
    w.settle(jid)
    with pytest.raises(JobError):
        w.wait([jid], timeout=10)
    assert len(be.submitted) == 1 and w.watched(jid).resubmits == 0


def test_transient_failure_gives_up_after_max_retries(tmp_path: Path) -> None:
    r = JobRequest("p", ["x"], tmp_path, tmp_path / "p.log", "train")
    be = Scripted({f"p#{i}": [S.PREEMPTED] for i in range(1, 5)})
    w = fast(be, max_retries=2)
    jid = w.submit(r)
    with pytest.raises(JobError) as ei:
        w.wait([jid], timeout=10)
    assert ei.value.transient and ei.value.status.state is S.PREEMPTED
    assert len(be.submitted) == 3


def test_requeue_is_counted_and_waited_for() -> None:
    be = Scripted({"q": [S.RUNNING, S.REQUEUED, S.PENDING, S.RUNNING, S.COMPLETED]})
    w = fast(be)
    assert w.wait(["q"], timeout=10)["q"].state is S.COMPLETED
    assert w.watched("q").requeues == 1


def test_unknown_forever_is_an_error_not_a_hang() -> None:
    be = Scripted({"u": [S.UNKNOWN]})
    w = fast(be, unknown_timeout_s=0.3)
    with pytest.raises(JobError) as ei:
        w.wait(["u"], timeout=10)
    assert ei.value.status.state is S.UNKNOWN and "no definite status" in str(ei.value)


def test_failing_poll_does_not_kill_waiters_and_ends() -> None:
    class Broken(Scripted):
        def poll_many(self, job_ids):
            super().poll_many(job_ids)
            raise RuntimeError("slurmctld down")

    w = fast(Broken({}), unknown_timeout_s=0.2)
    with pytest.raises(JobError, match="no definite status"):
        w.wait(["x"], timeout=10)


def test_wait_timeout_and_cancel_all() -> None:
    be = Scripted({"a": [S.RUNNING], "b": [S.RUNNING]})
    w = fast(be)
    with pytest.raises(TimeoutError):
        w.wait(["a", "b"], timeout=0.2)
    assert sorted(w.cancel_all()) == ["a", "b"] and be.cancelled == [["a", "b"]]


def test_no_raise_mode_returns_every_status() -> None:
    be = Scripted({"a": [S.FAILED], "b": [S.RUNNING, S.COMPLETED]})
    out = fast(be).wait(["a", "b"], timeout=10, raise_on_failure=False)
    assert out["a"].state is S.FAILED and out["b"].state is S.COMPLETED
