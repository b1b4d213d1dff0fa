"""SlurmBackend + JobWatcher against the REAL dev cluster (slurm/dev-cluster/start.sh).

The two jobs that must reach Slurm's smallest time limit (1 minute; slurmctld checks
limits every 30 s) are submitted first, by an autouse fixture, and checked by the last
tests, so the whole file takes about as long as they do (~1.5 min), not the sum.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from compress_distill.backends.base import JobError, JobRequest, JobState, JobStatus
from compress_distill.backends.common import array_task_log, read_state
from compress_distill.backends.slurm import SlurmBackend
from compress_distill.backends.slurm_cli import CommandResult, SlurmCommandError, run_command
from compress_distill.backends.watch import JobWatcher
from compress_distill.jobs.flags import job_name

from .conftest import need_dev_cluster

pytestmark = pytest.mark.slurm
TAG = f"t{uuid.uuid4().hex[:6]}"  # job names are deterministic: keep this session's apart


@pytest.fixture(scope="session")
def cluster() -> None:
    need_dev_cluster()


class Counting:
    """A runner that records each client call (and may alter answers) around the real one."""

    def __init__(self, alter: Callable[[Sequence[str], CommandResult], CommandResult] | None = None):
        self.calls: list[str] = []
        self.alter = alter

    def __call__(self, argv: Sequence[str], timeout: float) -> CommandResult:
        self.calls.append(argv[0])
        res = run_command(argv, timeout)
        return self.alter(argv, res) if self.alter else res


def job(d: Path, name: str, script: str, **kw) -> JobRequest:
    kw.setdefault("mem", "64M")
    return JobRequest(name=f"{TAG}-{name}", command=["bash", "-c", script], workdir=d,
                      log_path=d / f"{name.replace('/', '_')}.log", kind="cpu", **kw)


def watcher(b: SlurmBackend, **kw) -> JobWatcher:
    return JobWatcher(b, initial_interval=0.2, max_interval=1.0, **kw)


def wait_state(b: SlurmBackend, job_id: str, state: JobState, timeout: float = 60) -> JobStatus:
    deadline = time.monotonic() + timeout
    while True:
        st = b.poll_many([job_id])[job_id]
        if st.state is state or time.monotonic() > deadline:
            assert st.state is state, st
            return st
        time.sleep(0.3)


# --------------------------------------------------------------------------- slow jobs, started first

TIMEOUT_JOB = ("trap 'echo child: USR1 received, checkpoint saved' USR1; echo started; "
               "for i in $(seq 600); do sleep 1; done")
# First run: saves and exits on USR1, so the wrapper requeues it; second run resumes and ends.
RESUME_JOB = ('if [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ]; then echo resumed from checkpoint; exit 0; fi; '
              "trap 'echo child: saving checkpoint; exit 1' USR1; echo first run; "
              "for i in $(seq 600); do sleep 1; done")


@dataclass
class SlowJobs:
    timeout_backend: SlurmBackend
    timeout_req: JobRequest
    timeout_id: str
    resume_backend: SlurmBackend
    resume_req: JobRequest
    resume_id: str


@pytest.fixture(scope="module", autouse=True)
def slow(cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowJobs]:
    d = tmp_path_factory.mktemp("slow")
    tb = SlurmBackend(signal_before_s=50)                    # USR1 10 s into a 1-minute limit
    treq = job(d, "timeout", TIMEOUT_JOB, time_limit="1")
    rb = SlurmBackend(requeue=True, signal_before_s=50)
    rreq = job(d, "resume", RESUME_JOB, time_limit="1")
    slow = SlowJobs(tb, treq, tb.submit(treq), rb, rreq, rb.submit(rreq))
    yield slow
    tb.cancel([slow.timeout_id, slow.resume_id])  # only matters when a test was skipped or failed


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("style, gpu_type", [("gres", "h100"), ("gpus-per-node", None)])
def test_job_succeeds_and_sees_its_gpus(tmp_path: Path, style, gpu_type) -> None:
    b = SlurmBackend(gpu_request=style, gpu_type=gpu_type)
    r = job(tmp_path, f"ok-{style}", 'echo "gpus=$CUDA_VISIBLE_DEVICES var=$MYVAR"', gpus=2,
            env={"MYVAR": "it's $(not run)"})
    w = watcher(b)
    jid = w.submit(r)
    st = w.wait([jid], timeout=60)[jid]
    assert (st.state, st.exit_code) == (JobState.COMPLETED, 0) and st.node in ("node1", "node2")
    text = r.log_path.read_text()
    assert "gpus=0,1 var=it's $(not run)" in text, text
    state = read_state(r.log_path)
    assert state and state["state"] == "COMPLETED" and state["job_id"] == jid
    assert r.log_path.with_name(f"ok-{style}.sbatch").exists()


def test_exit_1_is_failed_with_log_tail(tmp_path: Path) -> None:
    w = watcher(SlurmBackend())
    jid = w.submit(job(tmp_path, "exit1", "echo loading data; echo 'ValueError: bad shard' >&2; exit 1"))
    with pytest.raises(JobError) as ei:
        w.wait([jid], timeout=60)
    e = ei.value
    assert (e.status.state, e.status.exit_code, e.transient) == (JobState.FAILED, 1, False)
    assert "ValueError: bad shard" in e.log_tail and "ValueError: bad shard" in str(e)


def test_user_cancel(tmp_path: Path) -> None:
    b = SlurmBackend()
    w = watcher(b)
    jid = w.submit(job(tmp_path, "cancel", "echo waiting; sleep 300"))
    wait_state(b, jid, JobState.RUNNING)
    assert w.cancel_all() == [jid]
    with pytest.raises(JobError) as ei:
        w.wait([jid], timeout=60)
    assert ei.value.status.state is JobState.CANCELLED and not ei.value.transient
    assert "CANCELLED" in ei.value.log_tail


def test_requeued_job_is_transient_and_runs_again(tmp_path: Path) -> None:
    b = SlurmBackend(requeue=True)
    w = watcher(b)
    r = job(tmp_path, "requeue", 'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then echo first run; sleep 300; '
                                 "else echo second run; fi")
    jid = w.submit(r)
    wait_state(b, jid, JobState.RUNNING)
    subprocess.run(["scontrol", "requeue", jid], check=True, timeout=30)
    st = w.wait([jid], timeout=90)[jid]
    assert st.state is JobState.COMPLETED and st.restarts == 1
    assert w.watched(jid).requeues == 1 and w.watched(jid).resubmits == 0  # Slurm re-ran it, not us
    text = r.log_path.read_text()
    assert "first run" in text and "DUE TO JOB REQUEUE" in text and "second run" in text


def test_job_array(tmp_path: Path) -> None:
    b = SlurmBackend()
    w = watcher(b)
    task = 'echo "task $SLURM_ARRAY_TASK_ID"'
    ok = job(tmp_path, "array-ok", task, array="0-3")
    bad = job(tmp_path, "array-bad", task + '; [ "$SLURM_ARRAY_TASK_ID" = 1 ] && { echo failing; exit 3; }; true',
              array="0-2%2")
    ok_id, bad_id = w.submit(ok), w.submit(bad)
    st = w.wait([ok_id], timeout=60)[ok_id]
    assert st.state is JobState.COMPLETED and st.job_id == ok_id
    for i in range(4):
        assert f"task {i}" in array_task_log(ok.log_path, i).read_text()
    with pytest.raises(JobError) as ei:
        w.wait([bad_id], timeout=60)
    assert ei.value.status.job_id == f"{bad_id}_1" and ei.value.status.exit_code == 3
    assert "failing" in ei.value.log_tail  # the failing task's own log


def test_empty_sacct_answer_is_unknown_not_success(tmp_path: Path) -> None:
    # (a) an id nobody knows: squeue errors, sacct answers nothing -> UNKNOWN at once
    b = SlurmBackend()
    t0 = time.monotonic()
    st = b.poll_many(["99999999"])["99999999"]
    assert st.state is JobState.UNKNOWN and "empty sacct" in (st.reason or "")
    assert time.monotonic() - t0 < 10
    w = watcher(b, unknown_timeout_s=1.0)
    with pytest.raises(JobError) as ei:  # waited out, then an error: never a hang
        w.wait(["99999999"], timeout=30)
    assert ei.value.status.state is JobState.UNKNOWN

    # (b) a finished job while accounting answers nothing: still not success
    jid = watcher(b).submit(job(tmp_path, "done", "true"))
    assert watcher(b).wait([jid], timeout=60)[jid].state is JobState.COMPLETED

    def blank_sacct(argv, res):
        return CommandResult(res.argv, 0, "", "") if argv[0] == "sacct" else res

    blind = SlurmBackend(runner=Counting(blank_sacct))
    st = blind.poll_many([jid])[jid]
    assert st.state is JobState.UNKNOWN and "slurmctld reports COMPLETED" in (st.reason or "")

    # (c) a FAILED sacct keeps the last known state
    def broken_sacct(argv, res):
        return CommandResult(res.argv, 1, "", "sacct: error: slurmdbd: connection refused") \
            if argv[0] == "sacct" else res

    assert b.poll_many([jid])[jid].state is JobState.COMPLETED
    b.runner = Counting(broken_sacct)
    assert b.poll_many([jid])[jid].state is JobState.COMPLETED


def test_poll_many_is_one_squeue_and_one_sacct(tmp_path: Path) -> None:
    b = SlurmBackend()
    w = watcher(b)
    done = [w.submit(job(tmp_path, f"n{i}", "true")) for i in range(6)]
    w.wait(done, timeout=60)
    counting = Counting()
    b.runner = counting
    out = b.poll_many(done)
    assert counting.calls == ["squeue", "sacct"]
    assert all(s.state is JobState.COMPLETED for s in out.values())

    live = [w.submit(job(tmp_path, f"live{i}", "sleep 300")) for i in range(4)]
    try:
        for jid in live:
            wait_state(b, jid, JobState.RUNNING)
        counting.calls.clear()
        out = b.poll_many(live + done)
        assert counting.calls == ["squeue", "sacct"]  # sacct only for the 6 finished
        counting.calls.clear()
        b.poll_many(live)
        assert counting.calls == ["squeue"]           # all live: squeue alone answers
        counting.calls.clear()
        b.cancel(live)
        assert counting.calls == ["scancel"]
    finally:
        b.cancel(live)


def test_watcher_polls_once_per_cycle(tmp_path: Path) -> None:
    counting = Counting()
    b = SlurmBackend(runner=counting)
    w = watcher(b)
    ids = [w.submit(job(tmp_path, f"w{i}", f"sleep {i % 3}")) for i in range(5)]
    counting.calls.clear()
    w.wait(ids, timeout=60)
    assert counting.calls.count("squeue") == w.polls and counting.calls.count("sacct") <= w.polls


def test_sbatch_error_after_submitting_does_not_duplicate(tmp_path: Path) -> None:
    real_ids: list[str] = []

    def sbatch_times_out_after_submitting(argv, res):
        if argv[0] == "sbatch" and not real_ids:
            real_ids.append(res.stdout.strip())
            raise SlurmCommandError(argv, "no answer within 30 s", timed_out=True)
        return res

    counting = Counting(sbatch_times_out_after_submitting)
    b = SlurmBackend(runner=counting, retry_wait_s=0.1)
    r = job(tmp_path, "dup", "sleep 300")
    try:
        jid = b.submit(r)
        assert [jid] == real_ids and counting.calls == ["squeue", "sbatch", "squeue"]
        assert b.submit(r) == jid  # a live job of that name is adopted, not submitted again
        names = subprocess.run(["squeue", "-h", "--name", f"{TAG}-dup", "-o", "%i"], capture_output=True,
                               text=True, timeout=30, check=True).stdout.split()
        assert names == [jid]
    finally:
        b.cancel(real_ids)


def test_find_live_takes_the_request_name_even_when_slurm_needs_another(tmp_path: Path) -> None:
    """A restarted run looks its node's job up by request name (runner._adoptable); a long or unsafe
    one is submitted under a hashed Slurm name, and find_live must map it the same way."""
    b = SlurmBackend()
    r = job(tmp_path, "train/cell with spaces" + ".x" * 80, "sleep 300")
    assert job_name(r.name) != r.name
    jid = b.submit(r)
    try:
        assert b.find_live(r.name) == jid and b.find_live(job_name(r.name)) == jid
    finally:
        b.cancel([jid])


def test_timeout_says_raise_limit_or_resume(slow: SlowJobs) -> None:
    w = watcher(slow.timeout_backend)
    w.track(slow.timeout_id, slow.timeout_req)
    with pytest.raises(JobError) as ei:
        w.wait([slow.timeout_id], timeout=150)
    e = ei.value
    assert e.status.state is JobState.TIMEOUT and not e.transient
    assert "raise the time limit or resume from checkpoint" in str(e)
    assert "USR1 received, checkpoint saved" in e.log_tail and "DUE TO TIME LIMIT" in e.log_tail


def test_signal_before_limit_requeues_and_resumes(slow: SlowJobs) -> None:
    w = watcher(slow.resume_backend)
    w.track(slow.resume_id, slow.resume_req)
    st = w.wait([slow.resume_id], timeout=150)[slow.resume_id]
    assert st.state is JobState.COMPLETED and st.restarts == 1
    text = slow.resume_req.log_path.read_text()
    assert "saving checkpoint" in text and "requeueing" in text and "resumed from checkpoint" in text
