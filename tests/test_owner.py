"""owner.py: what a run starts dies with it, even when the run is SIGKILLed (issue 16, D2)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from compress_distill.owner import OWNER_ENV, alive, start_time, sweep_orphans, tagged

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="Linux /proc")

# An owner that claims, starts a grandchild (a shell that starts `sleep`), prints both pids,
# then waits for a line on stdin before SIGKILLing itself.
OWNER = textwrap.dedent("""
    import os, signal, subprocess, sys
    from compress_distill.owner import claim
    token = claim()
    child = subprocess.Popen(["bash", "-c", "sleep 300 & wait"])
    print(token, child.pid, flush=True)
    sys.stdin.readline()
    if sys.argv[1] == "kill-guard":
        guard = subprocess.run(["pgrep", "-f", "compress_distill.owner " + token], capture_output=True, text=True)
        for pid in guard.stdout.split():
            os.kill(int(pid), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def _owner(mode: str) -> tuple[subprocess.Popen[str], str, int]:
    env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}
    proc = subprocess.Popen([sys.executable, "-c", OWNER, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None
    token, child = proc.stdout.readline().split()
    return proc, token, int(child)


def _wait_gone(token: str, timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    left = [p for p, t in tagged().items() if t == token]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for p, t in tagged().items() if t == token]
    return left


def test_a_sigkilled_owner_takes_its_descendants_with_it() -> None:
    proc, token, child = _owner("plain")
    deadline = time.monotonic() + 10
    owned = [p for p, t in tagged().items() if t == token]
    while len(owned) < 2 and time.monotonic() < deadline:  # until the shell has started its sleep
        time.sleep(0.05)
        owned = [p for p, t in tagged().items() if t == token]
    assert child in owned and len(owned) >= 2, owned  # the shell and its sleep carry the token
    assert alive(token)
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not alive(token)
    assert _wait_gone(token) == [], "the guard left the owner's processes running"


def test_the_next_claim_sweeps_what_a_dead_owner_left_when_its_guard_died_too() -> None:
    proc, token, child = _owner("kill-guard")
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    proc.wait(timeout=30)
    time.sleep(2)  # two guard polls: nothing kills the orphans now
    assert child in [p for p, t in tagged().items() if t == token], "orphans expected before the sweep"
    assert token in sweep_orphans()
    assert _wait_gone(token, timeout=2) == []


def test_a_live_owner_and_a_recycled_pid_are_told_apart() -> None:
    me = os.getpid()
    assert alive(f"{me}:{start_time(me)}:x")
    assert not alive(f"{me}:{int(start_time(me) or 0) + 1}:x")  # same pid, another process
