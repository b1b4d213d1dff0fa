"""Slurm client failures without a cluster: timeouts, a controller that is down, bad sbatch answers."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from compress_distill.backends.base import JobRequest, JobState
from compress_distill.backends.slurm import SlurmBackend
from compress_distill.backends.slurm_cli import CommandResult, SlurmCommandError, is_transient, run_command


def test_run_command_times_out() -> None:
    t0 = time.monotonic()
    with pytest.raises(SlurmCommandError) as ei:
        run_command(["sleep", "10"], 0.3)
    assert ei.value.timed_out and is_transient(ei.value) and time.monotonic() - t0 < 3


def test_run_command_missing_program() -> None:
    with pytest.raises(SlurmCommandError, match="cannot run"):
        run_command(["/no/such/sbatch"], 5)


class Down:
    """slurmctld and slurmdbd down: every client call times out."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, argv: Sequence[str], timeout: float) -> CommandResult:
        self.calls.append(argv[0])
        raise SlurmCommandError(argv, f"no answer within {timeout} s", timed_out=True)


def _req(tmp_path: Path) -> JobRequest:
    return JobRequest(name="n", command=["true"], workdir=tmp_path, log_path=tmp_path / "n.log", kind="cpu")


def test_poll_with_controller_down_returns_unknown_or_last_known() -> None:
    down = Down()
    b = SlurmBackend(runner=down)
    st = b.poll_many(["5"])["5"]
    assert st.state is JobState.UNKNOWN and "sacct failed" in (st.reason or "")
    assert down.calls == ["squeue", "sacct"]


def test_submit_with_controller_down_gives_up_without_blind_resubmits(tmp_path: Path) -> None:
    down = Down()
    b = SlurmBackend(runner=down, submit_retries=2, retry_wait_s=0.01)
    with pytest.raises(SlurmCommandError, match="gave up"):
        b.submit(_req(tmp_path))
    # one sbatch; the retries never resubmit while the queue cannot be checked
    assert down.calls == ["squeue", "sbatch", "squeue", "squeue"]


def test_rejected_sbatch_is_raised_at_once(tmp_path: Path) -> None:
    calls = []

    def runner(argv, timeout):
        calls.append(argv[0])
        if argv[0] == "sbatch":
            return CommandResult(tuple(argv), 1, "", "sbatch: error: Invalid account or account/partition combination")
        return CommandResult(tuple(argv), 0, "", "")

    with pytest.raises(SlurmCommandError, match="Invalid account"):
        SlurmBackend(runner=runner).submit(_req(tmp_path))
    assert calls == ["squeue", "sbatch"]


def test_unparseable_sbatch_output_fails_loudly(tmp_path: Path) -> None:
    def runner(argv, timeout):
        return CommandResult(tuple(argv), 0, "Submitted batch job 12\n" if argv[0] == "sbatch" else "", "")

    with pytest.raises(ValueError, match="unparseable"):
        SlurmBackend(runner=runner).submit(_req(tmp_path))


def test_script_file_written_next_to_log(tmp_path: Path) -> None:
    def runner(argv, timeout):
        return CommandResult(tuple(argv), 0, "42\n" if argv[0] == "sbatch" else "", "")

    b = SlurmBackend(runner=runner, partition="gpu", gpu_request="gres")
    assert b.submit(_req(tmp_path)) == "42"
    script = tmp_path / "n.sbatch"
    assert script.exists() and script.stat().st_mode & 0o111
    assert (tmp_path / "n.state.json").exists()


def test_from_profile_reads_cluster_profile_fields() -> None:
    from compress_distill.config import ClusterProfile

    p = ClusterProfile(backend="slurm", partition="gpu", account="acct", qos="q", gpu_type="h100", gpu_request="gres")
    b = SlurmBackend.from_profile(p, requeue=True)
    o = b.options
    assert (o.partition, o.account, o.qos, o.gpu_type, o.gpu_request, o.requeue) == \
        ("gpu", "acct", "q", "h100", "gres", True)
