"""Table tests for the pure Slurm parsing and script rendering (no Slurm needed).

The sacct/squeue texts are real outputs of the dev cluster (Slurm 22.05), trimmed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from compress_distill.backends import slurm_parse as sp
from compress_distill.backends.base import JobRequest, JobState
from compress_distill.backends.common import parse_array_spec
from compress_distill.jobs.flags import SlurmOptions, job_name, sbatch_argv
from compress_distill.jobs.script import batch_script

S = JobState


@pytest.mark.parametrize("raw, state, note", [
    ("PENDING", S.PENDING, None),
    ("RUNNING", S.RUNNING, None),
    ("COMPLETING", S.RUNNING, None),
    ("CONFIGURING", S.RUNNING, None),
    ("REQUEUED", S.REQUEUED, None),
    ("REQUEUE_HOLD", S.REQUEUED, None),
    ("COMPLETED", S.COMPLETED, None),
    ("FAILED", S.FAILED, None),
    ("CANCELLED by 0", S.CANCELLED, "cancelled by uid 0"),
    ("CANCELLED+", S.CANCELLED, None),
    ("TIMEOUT", S.TIMEOUT, None),
    ("DEADLINE", S.TIMEOUT, "DEADLINE"),
    ("NODE_FAIL", S.NODE_FAIL, None),
    ("BOOT_FAIL", S.NODE_FAIL, "BOOT_FAIL"),
    ("PREEMPTED", S.PREEMPTED, None),
    ("OUT_OF_MEMORY", S.OUT_OF_MEMORY, None),
    ("OUT_OF_ME+", S.UNKNOWN, "unrecognised Slurm state 'OUT_OF_ME+'"),
    ("WEIRD", S.UNKNOWN, "unrecognised Slurm state 'WEIRD'"),
])
def test_map_state(raw: str, state: JobState, note: str | None) -> None:
    assert sp.map_state(raw) == (state, note)


def test_transient_and_terminal_sets() -> None:
    assert {s for s in S if s.transient} == {S.NODE_FAIL, S.PREEMPTED}
    assert not S.REQUEUED.terminal and not S.UNKNOWN.terminal
    assert all(s.terminal for s in (S.COMPLETED, S.FAILED, S.CANCELLED, S.TIMEOUT, S.OUT_OF_MEMORY))


@pytest.mark.parametrize("text, code", [("0:0", 0), ("3:0", 3), ("0:15", 143), ("0:9", 137), ("2:9", 2), ("", None)])
def test_parse_exit_code(text: str, code: int | None) -> None:
    assert sp.parse_exit_code(text) == code


@pytest.mark.parametrize("text, seconds", [
    ("5", 300.0), ("1:30", 90.0), ("01:00:00", 3600.0), ("2-00:00:00", 172800.0), ("1-2", 93600.0),
    ("1-02:03", 93780.0), ("0:01", 1.0), ("UNLIMITED", None), ("", None),
])
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert sp.parse_duration(text) == seconds


def test_parse_duration_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        sp.parse_duration("soon")


@pytest.mark.parametrize("out, job_id", [("123\n", "123"), ("123;cluster\n", "123"),
                                         ("sbatch: warning: x\n77\n", "77")])
def test_parse_sbatch_output(out: str, job_id: str) -> None:
    assert sp.parse_sbatch_output(out) == job_id


@pytest.mark.parametrize("out", ["", "Submitted batch job 12\n", "abc"])
def test_parse_sbatch_output_fails_loudly(out: str) -> None:
    with pytest.raises(ValueError):
        sp.parse_sbatch_output(out)


@pytest.mark.parametrize("spec, indices, limit", [
    ("0-3", [0, 1, 2, 3], None), ("1,3,5-6", [1, 3, 5, 6], None), ("0-8:4", [0, 4, 8], None),
    ("0-99%8", list(range(100)), 8), ("7", [7], None),
])
def test_parse_array_spec(spec: str, indices: list[int], limit: int | None) -> None:
    assert parse_array_spec(spec) == (indices, limit)


@pytest.mark.parametrize("spec", ["", "a-b", "3-1", "0-3%x", "1,,2"])
def test_parse_array_spec_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_array_spec(spec)


# --------------------------------------------------------------------------- sacct / squeue

REQUEUED_THEN_DONE = """\
20|20|REQUEUED|0:0|node1|1|2026-11-23T16:15:26|None|rq
20.batch|20.batch|CANCELLED|0:15|node1|1|2026-11-23T16:15:27||batch
20|20|COMPLETED|0:0|node1|0|2026-11-23T16:15:28|BeginTime|rq
20.batch|20.batch|COMPLETED|0:0|node1|0|2026-11-23T16:15:40||batch
"""
FAILED = """\
4|4|FAILED|3:0|node1|0|2026-11-23T16:13:20|NonZeroExitCode|boom
4.batch|4.batch|FAILED|3:0|node1|0|2026-11-23T16:13:20||batch
"""
ARRAY = """\
21_0|22|COMPLETED|0:0|node1|2|2026-11-23T16:16:00|None|arr
21_0.batch|22.batch|COMPLETED|0:0|node1|2|2026-11-23T16:16:00||batch
21_3|25|FAILED|4:0|node1|2|2026-11-23T16:16:00|NonZeroExitCode|arr
21_3.batch|25.batch|FAILED|4:0|node1|2|2026-11-23T16:16:00||batch
21_5|21|COMPLETED|0:0|node1|2|2026-11-23T16:16:00|None|arr
21_5.batch|21.batch|COMPLETED|0:0|node1|2|2026-11-23T16:16:00||batch
"""
CANCELLED_ARRAY = """\
27_0|28|CANCELLED by 0|0:0|node1|3|2026-11-23T16:17:00|None|arr2
27_0.batch|28.batch|CANCELLED|0:15|node1|3|2026-11-23T16:17:00||batch
27_[1-3%1]|27|CANCELLED by 0|0:0|None assigned|0|2026-11-23T16:17:00|JobArrayTaskLimit|arr2
"""


def _status(wanted: str, sacct: str | None, squeue: str | None = "", name: str | None = None):
    q = None if squeue is None else sp.parse_squeue(squeue)
    a = None if sacct is None else sp.parse_sacct(sacct)
    return sp.combine(wanted, q, a, name)


def test_parse_sacct_groups_steps_with_their_attempt() -> None:
    attempts = sp.parse_sacct(REQUEUED_THEN_DONE)
    assert [(a.state, a.steps["batch"].state) for a in attempts] == [("REQUEUED", "CANCELLED"),
                                                                   ("COMPLETED", "COMPLETED")]


def test_name_with_separator_survives() -> None:
    [a] = sp.parse_sacct("5|5|COMPLETED|0:0|node1|1|2026-11-23T00:00:00|None|a|b\n")
    assert a.name == "a|b"
    [r] = sp.parse_squeue("5|5|5|N/A|RUNNING|None|node1|a|b\n")
    assert r.name == "a|b" and r.task is None


@pytest.mark.parametrize("wanted, sacct, squeue, state, exit_code, restarts", [
    # requeued: the latest attempt counts, and how many runs it took is reported
    ("20", REQUEUED_THEN_DONE, "", S.COMPLETED, 0, 1),
    ("4", FAILED, "", S.FAILED, 3, 0),
    # job COMPLETED but its batch step missing (accounting not complete): not success
    ("9", "9|9|COMPLETED|0:0|node1|1|2026-11-23T00:00:00|None|x\n", "", S.UNKNOWN, 0, 0),
    # job COMPLETED while accounting still shows its batch step RUNNING: poll again, not a failure
    ("9", "9|9|COMPLETED|0:0|node1|1|2026-11-23T00:00:00|None|x\n"
          "9.batch|9.batch|RUNNING|0:0|node1|1|2026-11-23T00:00:00||batch\n", "", S.UNKNOWN, 0, 0),
    # job COMPLETED but the batch step was OOM-killed
    ("9", "9|9|COMPLETED|0:0|node1|1|2026-11-23T00:00:00|None|x\n"
          "9.batch|9.batch|OUT_OF_MEMORY|0:125|node1|1|2026-11-23T00:00:00||batch\n", "", S.OUT_OF_MEMORY, 125, 0),
    ("9", "9|9|FAILED|1:0|node1|1|2026-11-23T00:00:00|None|x\n"
          "9.batch|9.batch|OUT_OF_MEMORY|0:125|node1|1|2026-11-23T00:00:00||batch\n", "", S.OUT_OF_MEMORY, 1, 0),
    ("9", "9|9|TIMEOUT|0:0|node1|60|2026-11-23T00:00:00|None|x\n", "", S.TIMEOUT, 0, 0),
    ("9", "9|9|NODE_FAIL|0:0|node1|60|2026-11-23T00:00:00|None|x\n", "", S.NODE_FAIL, 0, 0),
    ("9", "9|9|PREEMPTED|0:0|node1|60|2026-11-23T00:00:00|None|x\n", "", S.PREEMPTED, 0, 0),
    ("9", "9|9|CANCELLED by 0|0:0|node1|60|2026-11-23T00:00:00|None|x\n", "", S.CANCELLED, 0, 0),
    # squeue says it is live: that wins over a stale PREEMPTED attempt in accounting
    ("9", "9|9|PREEMPTED|0:0|node1|60|2026-11-23T00:00:00|None|x\n", "9|9|9|N/A|PENDING|BeginTime||x\n",
     S.PENDING, None, 0),
    ("9", None, "9|9|9|N/A|REQUEUED|None|node1|x\n", S.REQUEUED, None, 0),
    ("9", None, "9|9|9|N/A|COMPLETING|None|node1|x\n", S.RUNNING, None, 0),
    # an EMPTY sacct answer while slurmctld already says COMPLETED: UNKNOWN, never success
    ("9", "", "9|9|9|N/A|COMPLETED|None|node1|x\n", S.UNKNOWN, None, 0),
    # accounting lags: still RUNNING there, slurmctld says FAILED -> wait for accounting
    ("9", "9|9|RUNNING|0:0|node1|3|2026-11-23T00:00:00|None|x\n", "9|9|9|N/A|FAILED|NonZeroExitCode|node1|x\n",
     S.UNKNOWN, 0, 0),
    # squeue failed (None): accounting alone
    ("4", FAILED, None, S.FAILED, 3, 0),
])
def test_combine(wanted, sacct, squeue, state, exit_code, restarts) -> None:
    st = _status(wanted, sacct, squeue)
    assert st is not None
    assert (st.state, st.exit_code, st.restarts) == (state, exit_code, restarts)


def test_combine_nothing_known_is_none() -> None:
    assert _status("9", "", "") is None
    assert _status("9", None, None) is None


def test_reused_job_id_is_told_apart_by_name() -> None:
    old = "9|9|FAILED|1:0|node1|1|2025-01-01T00:00:00|None|someone-else\n"
    assert _status("9", old, "", name="mine") is None
    assert _status("9", old, "", name="someone-else").state is S.FAILED


def test_latest_attempt_by_submit_time_not_order() -> None:
    text = ("9|9|COMPLETED|0:0|node1|1|2026-11-23T10:00:00|None|x\n"
            "9.batch|9.batch|COMPLETED|0:0|node1|1|2026-11-23T10:00:00||batch\n"
            "9|9|NODE_FAIL|0:0|node1|1|2026-11-23T09:00:00|None|x\n")
    st = _status("9", text)
    assert st.state is S.COMPLETED and st.restarts == 1


def test_array_aggregates_to_worst_task_naming_it() -> None:
    st = _status("21", ARRAY)
    assert st.state is S.FAILED and st.exit_code == 4
    assert st.job_id == "21_3"  # the task, so that its own log can be shown
    assert "1/3 array tasks" in (st.reason or "")
    # one task by its shown id, or by its raw id
    assert _status("21_0", ARRAY).state is S.COMPLETED
    assert _status("25", ARRAY).state is S.FAILED


def test_array_all_completed() -> None:
    ok = ARRAY.replace("FAILED|4:0", "COMPLETED|0:0")
    st = _status("21", ok)
    assert (st.job_id, st.state, st.exit_code) == ("21", S.COMPLETED, 0)


def test_array_with_live_tasks_is_live() -> None:
    squeue = ("21_2|21|21|2|PENDING|JobArrayTaskLimit||arr\n"
              "21_1|23|21|1|RUNNING|None|node1|arr\n"
              "21_0|22|21|0|COMPLETED|None|node1|arr\n")
    st = _status("21", None, squeue)
    assert st.state is S.RUNNING and st.job_id == "21"


def test_array_pending_range_row_counts_when_queue_forgot_it() -> None:
    st = _status("27", CANCELLED_ARRAY)
    assert st.state is S.CANCELLED and st.reason and "cancelled by uid 0" in st.reason


# --------------------------------------------------------------------------- rendering


def _req(tmp_path: Path, **kw: Any) -> JobRequest:
    base: dict[str, Any] = dict(name="gen/teacher=q3 key:ab12", command=["echo", "hi"], workdir=tmp_path,
                                log_path=tmp_path / "logs" / "job.log", kind="vllm")
    base.update(kw)
    return JobRequest(**base)


def test_job_name_is_deterministic_and_safe() -> None:
    assert job_name("train.qwen-0.8b.lora") == "train.qwen-0.8b.lora"
    odd = job_name("a b,c;$(rm -rf /)")
    assert odd == job_name("a b,c;$(rm -rf /)") and "," not in odd and " " not in odd and "$" not in odd
    assert job_name("x" * 300) != job_name("x" * 301)


@pytest.mark.parametrize("opts, flag", [
    (SlurmOptions(), "--gpus-per-node=4"),
    (SlurmOptions(gpu_type="h100"), "--gpus-per-node=h100:4"),
    (SlurmOptions(gpu_request="gres"), "--gres=gpu:4"),
    (SlurmOptions(gpu_request="gres", gpu_type="h100"), "--gres=gpu:h100:4"),
])
def test_gpu_request_styles(tmp_path: Path, opts: SlurmOptions, flag: str) -> None:
    argv = sbatch_argv(_req(tmp_path, gpus=4), opts, tmp_path / "x.sbatch")
    assert flag in argv and not any(a.startswith(("--gres", "--gpus")) and a != flag for a in argv)


def test_sbatch_argv(tmp_path: Path) -> None:
    req = _req(tmp_path, gpus=0, cpus=8, mem="64G", time_limit="12:00:00", array="0-3%2",
               log_path=tmp_path / "100%" / "job.log")
    opts = SlurmOptions(partition="gpu", account="proj", qos="high", requeue=True, signal_before_s=300,
                        extra_args=("--exclusive",))
    argv = sbatch_argv(req, opts, tmp_path / "job.sbatch")
    assert argv[:2] == ["sbatch", "--parsable"]
    for a in (f"--job-name={job_name(req.name)}", f"--output={tmp_path}/100%%/job.%a.log", "--open-mode=append",
              "--cpus-per-task=8", "--mem=64G", "--time=12:00:00", "--partition=gpu", "--account=proj",
              "--qos=high", "--requeue", "--signal=B:USR1@300", "--array=0-3%2", "--exclusive"):
        assert a in argv, a
    assert argv[-1] == str(tmp_path / "job.sbatch")
    assert "--no-requeue" in sbatch_argv(req, SlurmOptions(), tmp_path / "j")


def test_gpu_request_must_be_known() -> None:
    with pytest.raises(ValueError, match="gpu_request"):
        SlurmOptions(gpu_request="gpus")  # type: ignore[arg-type]


def test_script_quotes_every_value(tmp_path: Path) -> None:
    """Hostile argv/env/workdir survive the script byte for byte (run with plain bash)."""
    evil = ["$(touch PWNED)", "a b", "it's", '"q"', "`id`", "; rm -rf /", "\n", "*"]
    wd = tmp_path / "dir with 'quote' $x"
    wd.mkdir()
    req = _req(tmp_path, workdir=wd, env={"EVIL": "$(touch PWNED2) 'x' \"y\""},
               command=["python3", "-c", "import json,os,sys; print(json.dumps([sys.argv[1:], os.getcwd(), "
                        "os.environ['EVIL']]))", *evil])
    script = tmp_path / "job.sbatch"
    script.write_text(batch_script(req, SlurmOptions(requeue=True, signal_before_s=60)))
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("[["))
    assert json.loads(line) == [evil, str(wd), "$(touch PWNED2) 'x' \"y\""]
    assert not list(tmp_path.rglob("PWNED*"))
    assert "exit 0" in out


def test_script_rejects_bad_env_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="environment variable"):
        batch_script(_req(tmp_path, env={"A;B": "x"}), SlurmOptions())


def test_script_forwards_usr1_and_keeps_child_exit_code(tmp_path: Path) -> None:
    """USR1 to the batch shell reaches the job; the job's own exit code is returned."""
    code = "trap 'echo got-usr1; exit 7' USR1; echo ready; while :; do sleep 0.1; done"
    script = tmp_path / "job.sbatch"
    script.write_text(batch_script(_req(tmp_path, command=["bash", "-c", code]), SlurmOptions()))
    p = subprocess.Popen(["bash", str(script)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    for line in p.stdout:
        if line.strip() == "ready":
            break
    p.send_signal(10)  # SIGUSR1
    rest = p.stdout.read()
    assert p.wait(timeout=10) == 7
    assert "got-usr1" in rest and "exit 7" in rest
