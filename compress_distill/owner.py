"""Nothing outlives its owner: what a `compress-distill run` starts on this machine dies with it.

A run claims ownership (`claim`, once per process): it puts a token, `PID:STARTTIME:NONCE`, in its
environment, which every process it starts inherits, through any depth of children: Prefect's
temporary API server, local jobs, and the model servers those jobs start (vLLM and its engine
processes, the project's CPU server). The process start time (from /proc) makes a recycled pid never match.

Two mechanisms kill the tagged processes once the owner is gone, whatever killed it (SIGKILL
included, which no handler in the owner can catch):
- the guard: a small process in its own session (so a signal to the owner's process group does
  not reach it) that checks the owner every second and, once it is gone (however it ended), kills every process
  carrying the token: SIGTERM, then SIGKILL after a grace period;
- the sweep at the next claim: processes whose token names a dead owner (their guard was killed
  too) are killed the same way.

Slurm jobs carry no token (the runner exports the variable empty into them): a Slurm job
outlives a restarted orchestrator, which re-attaches to it by name; `scancel` stops it.
Linux only (/proc); elsewhere claiming is a no-op.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

OWNER_ENV = "COMPRESS_DISTILL_OWNER"
PROC = Path("/proc")
GRACE_S = 5.0
GUARD_POLL_S = 1.0


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of `pid` from /proc/PID/stat, None when there is no such process."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # fields 3 and 22; the command name (field 2) may hold spaces or parentheses: split after its ')'
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], fields[19]


def start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), None when there is no such process."""
    st = _stat(pid)
    return st[1] if st else None


def alive(token: str) -> bool:
    """The owner still runs: same pid, same start time, not a zombie (a SIGKILLed owner stays one
    until its parent reaps it, and that parent may be waiting for a pipe an owned process holds)."""
    pid, start, _ = token.split(":", 2)
    st = _stat(int(pid)) if pid.isdigit() else None
    return st is not None and st[1] == start and st[0] != "Z"


def tagged() -> dict[int, str]:
    """pid -> owner token of every readable process that carries one."""
    found: dict[int, str] = {}
    prefix = OWNER_ENV.encode() + b"="
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        for var in environ.split(b"\0"):
            if var.startswith(prefix):
                value = var[len(prefix):].decode(errors="replace")
                if value.count(":") == 2:
                    found[int(entry.name)] = value
                break
    return found


def kill_owned(token: str, grace_s: float = GRACE_S) -> int:
    """SIGTERM every process carrying `token` (never this one), SIGKILL those left after `grace_s`."""
    me = os.getpid()
    pids = [p for p, t in tagged().items() if t == token and p != me]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 0)
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = [p for p in pids if _running(p)]
        if not pids:
            break
    return len(pids)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; its parent has not reaped it yet)."""
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def sweep_orphans() -> list[str]:
    """Kill the processes of owners that are gone; return those owners' tokens."""
    dead = sorted({t for t in tagged().values() if not alive(t)})
    for token in dead:
        kill_owned(token)
    return dead


def claim() -> str | None:
    """Make this process the owner of everything it starts from now on (once per process); start its
    guard, after sweeping what dead owners left. Returns the token (None: not Linux)."""
    if os.environ.get(OWNER_ENV, "").startswith(f"{os.getpid()}:"):
        return os.environ[OWNER_ENV]  # claimed already
    if not PROC.is_dir():
        return None
    sweep_orphans()
    me = os.getpid()
    token = f"{me}:{start_time(me)}:{uuid.uuid4().hex[:8]}"
    guard_env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}  # the guard is not its own target
    subprocess.Popen([sys.executable, "-m", __name__, token], env=guard_env, start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ[OWNER_ENV] = token
    return token


def guard(token: str) -> int:
    while alive(token):
        time.sleep(GUARD_POLL_S)
    kill_owned(token)
    return 0


if __name__ == "__main__":
    sys.exit(guard(sys.argv[1]))
