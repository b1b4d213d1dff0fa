"""LocalBackend: the JobRequest argv as subprocesses, same logs/state files as Slurm (no Slurm needed)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from compress_distill.backends.base import JobError, JobRequest, JobState
from compress_distill.backends.common import read_state
from compress_distill.backends.local import LocalBackend
from compress_distill.backends.watch import JobWatcher


def req(tmp_path: Path, name: str, code: str, **kw) -> JobRequest:
    return JobRequest(name=name, command=[sys.executable, "-c", code], workdir=tmp_path,
                      log_path=tmp_path / "logs" / f"{name}.log", kind="cpu", **kw)


def watcher(backend: LocalBackend, **kw) -> JobWatcher:
    return JobWatcher(backend, initial_interval=0.05, max_interval=0.2, **kw)


def test_success_argv_env_log_and_state_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_PARENT", "p")
    code = "import os,sys; print(sys.argv[1:], os.getcwd(), os.environ['FROM_PARENT'], os.environ['FROM_REQ'])"
    r = JobRequest(name="ok", command=[sys.executable, "-c", code, "$HOME", "a b", "`id`"], workdir=tmp_path,
                   log_path=tmp_path / "logs" / "ok.log", kind="cpu", env={"FROM_REQ": "r"})
    b = LocalBackend(max_workers=2)
    w = watcher(b)
    jid = w.submit(r)
    st = w.wait([jid], timeout=30)[jid]
    assert st.state is JobState.COMPLETED and st.exit_code == 0 and st.node
    text = r.log_path.read_text()
    # no shell: "$HOME" and backticks arrive literally
    assert f"['$HOME', 'a b', '`id`'] {tmp_path} p r" in text
    assert "[compress-distill] job" in text and "exit 0" in text
    state = read_state(r.log_path)
    assert state and state["backend"] == "local" and state["job_id"] == jid and state["state"] == "COMPLETED"


def test_failure_raises_with_log_tail(tmp_path: Path) -> None:
    b = LocalBackend()
    w = watcher(b)
    jid = w.submit(req(tmp_path, "bad", "import sys; print('something broke', file=sys.stderr); sys.exit(1)"))
    with pytest.raises(JobError) as ei:
        w.wait([jid], timeout=30)
    e = ei.value
    assert e.status.state is JobState.FAILED and e.status.exit_code == 1 and not e.transient
    assert "something broke" in e.log_tail and "something broke" in str(e)


def test_missing_program_is_a_failure(tmp_path: Path) -> None:
    b = LocalBackend()
    r = JobRequest(name="nope", command=["/no/such/program"], workdir=tmp_path, log_path=tmp_path / "n.log",
                   kind="cpu")
    jid = b.submit(r)
    st = b.poll_many([jid])[jid]
    assert st.state is JobState.FAILED and st.exit_code == 127 and "cannot start" in (st.reason or "")


def test_max_workers_blocks_submit(tmp_path: Path) -> None:
    b = LocalBackend(max_workers=2)
    t0 = time.monotonic()
    ids = [b.submit(req(tmp_path, f"s{i}", "import time; time.sleep(0.8)")) for i in range(3)]
    # the third submit had to wait for a slot
    assert time.monotonic() - t0 >= 0.7
    statuses = watcher(b).wait(ids, timeout=30)
    assert all(s.state is JobState.COMPLETED for s in statuses.values())


def test_time_limit_is_timeout_with_hint(tmp_path: Path) -> None:
    b = LocalBackend(kill_grace_s=1)
    w = watcher(b)
    jid = w.submit(req(tmp_path, "slow", "import time; print('working', flush=True); time.sleep(60)",
                       time_limit="0:01"))  # MM:SS = 1 s
    with pytest.raises(JobError) as ei:
        w.wait([jid], timeout=30)
    assert ei.value.status.state is JobState.TIMEOUT
    assert "raise the time limit or resume from checkpoint" in str(ei.value)
    assert "working" in ei.value.log_tail


def test_cancel_kills_the_whole_process_group(tmp_path: Path) -> None:
    b = LocalBackend(kill_grace_s=1)
    pidfile = tmp_path / "grandchild.pid"
    code = ("import subprocess,sys,time; p=subprocess.Popen(['sleep','300']); "
            f"open({str(pidfile)!r},'w').write(str(p.pid)); time.sleep(300)")
    jid = b.submit(req(tmp_path, "victim", code))
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.05)
    grandchild = int(pidfile.read_text())
    b.cancel([jid])
    st = b.poll_many([jid])[jid]
    assert st.state is JobState.CANCELLED
    time.sleep(0.2)
    assert not _alive(grandchild)


def test_array_tasks_logs_and_worst_task(tmp_path: Path) -> None:
    b = LocalBackend(max_workers=2)
    code = ("import os,sys; t=os.environ['SLURM_ARRAY_TASK_ID']; print('task', t); "
            "sys.exit(5 if t == '2' else 0)")
    r = req(tmp_path, "arr", code, array="0-3%2")
    w = watcher(b)
    jid = w.submit(r)
    with pytest.raises(JobError) as ei:
        w.wait([jid], timeout=30)
    st = ei.value.status
    assert st.state is JobState.FAILED and st.job_id == f"{jid}_2" and st.exit_code == 5
    assert "task 2" in ei.value.log_tail  # the failing task's own log
    assert (tmp_path / "logs" / "arr.0.log").read_text().count("task 0") == 1
    ok = b.poll_many([f"{jid}_0", f"{jid}_1", f"{jid}_3"])
    assert all(s.state is JobState.COMPLETED for s in ok.values())


def test_unknown_id_is_unknown(tmp_path: Path) -> None:
    st = LocalBackend().poll_many(["local-0-999"])["local-0-999"]
    assert st.state is JobState.UNKNOWN


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
