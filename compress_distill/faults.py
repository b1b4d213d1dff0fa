"""Deterministic fault points: the orchestrator SIGKILLs itself at a named point of a node's life.

    COMPRESS_DISTILL_KILL_AT=POINT[@NODE_GLOB]
    COMPRESS_DISTILL_KILL_PGID=PGID   (optional: SIGKILL that process group instead, and go on)

The fault suite (tests/faults/) uses it instead of sleeps, to kill a run exactly where a real
crash hurts most (or, with KILL_PGID, something the run depends on: its Prefect server). Points:

| point         | reached                                                        |
| ------------- | -------------------------------------------------------------- |
| after-submit  | a job was submitted and job.json written; the job runs on       |
| job-ended     | the job ended COMPLETED with its outputs; nothing committed yet |
| after-commit  | the node committed; its task has not reported back yet          |
| task-end      | the node committed; its Prefect task is about to return         |
"""

from __future__ import annotations

import fnmatch
import os
import signal
import sys

KILL_AT_ENV = "COMPRESS_DISTILL_KILL_AT"
KILL_PGID_ENV = "COMPRESS_DISTILL_KILL_PGID"
POINTS = ("after-submit", "job-ended", "after-commit", "task-end")


def reached(point: str, node_id: str) -> None:
    """SIGKILL this process if KILL_AT names `point` (and a glob matching `node_id`)."""
    assert point in POINTS, point
    spec = os.environ.get(KILL_AT_ENV, "")
    if not spec:
        return
    want, _, glob = spec.partition("@")
    if want != point or not fnmatch.fnmatchcase(node_id, glob or "*"):
        return
    pgid = os.environ.get(KILL_PGID_ENV, "")
    if pgid.isdigit():
        print(f"[fault] {KILL_AT_ENV}={spec}: killing process group {pgid} at {point} of {node_id}",
              file=sys.stderr, flush=True)
        os.environ.pop(KILL_AT_ENV)  # once
        try:
            os.killpg(int(pgid), signal.SIGKILL)
        except ProcessLookupError:
            pass
        return
    print(f"[fault] {KILL_AT_ENV}={spec}: killing pid {os.getpid()} at {point} of {node_id}",
          file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
