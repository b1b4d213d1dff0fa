"""Running Slurm client commands (sbatch, squeue, sacct, scancel, scontrol) with a timeout.

Every call goes through one `Runner` function so that (1) none can hang: the clients
block for minutes when slurmctld or slurmdbd is down, and (2) tests can count or
wrap the calls without mocking Slurm itself.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..owner import OWNER_ENV

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class SlurmCommandError(RuntimeError):
    """A Slurm client could not be run, timed out, or failed."""

    def __init__(self, argv: Sequence[str], message: str, *, returncode: int | None = None,
                 stderr: str = "", timed_out: bool = False):
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.timed_out = timed_out
        super().__init__(f"{argv[0] if argv else '?'}: {message}")


Runner = Callable[[Sequence[str], float], CommandResult]


def run_command(argv: Sequence[str], timeout: float) -> CommandResult:
    """Run argv (no shell) and capture its output; raise SlurmCommandError on timeout."""
    # sbatch exports its own environment into the job: never the run's owner token (owner.py), or a
    # job on this machine (the dev cluster) would die with the orchestrator it must outlive.
    env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, check=False, env=env)
    except subprocess.TimeoutExpired as e:
        raise SlurmCommandError(argv, f"no answer within {timeout:g} s (is slurmctld/slurmdbd up?)",
                                timed_out=True) from e
    except OSError as e:  # not installed, not executable
        raise SlurmCommandError(argv, f"cannot run: {e}") from e
    return CommandResult(tuple(argv), p.returncode, p.stdout, p.stderr)


def check(res: CommandResult) -> CommandResult:
    """Raise SlurmCommandError unless the command exited 0."""
    if not res.ok:
        raise SlurmCommandError(res.argv, f"exit {res.returncode}: {res.stderr.strip()[-500:]}",
                                returncode=res.returncode, stderr=res.stderr)
    return res


# Messages after which a retry can help (controller busy or restarting); anything else
# (bad account, impossible resources) is the request's fault and is raised at once.
_TRANSIENT_MARKERS = ("Socket timed out", "Unable to contact slurm controller", "temporarily unavailable",
                      "Connection refused", "Zero Bytes were transmitted", "Transport endpoint",
                      "Slurm backup controller in standby", "slurm_persist_conn_open", "Connection reset")


def is_transient(err: SlurmCommandError) -> bool:
    return err.timed_out or any(m.lower() in err.stderr.lower() for m in _TRANSIENT_MARKERS)
