"""Entry point of a job process: run one node's stage into a given output directory.

    python -m compress_distill.node_main --config CFG.json --store ROOT --node ID --out TMPDIR

The orchestrator commits TMPDIR after the job ends; the job never commits.
The config arrives as a file (the resolved snapshot), never as shell text.
It is the payload of every job script (jobscripts.py), local or Slurm.

A local job (COMPRESS_DISTILL_PARENT_PID set by LocalBackend) exits when its
orchestrator dies, so a SIGKILLed run leaves no orphans. A Slurm job does not:
a restarted orchestrator re-attaches to it by job name, and `scancel` stops it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

from .config import parse_config
from .plan import build_plan
from .runner import PARENT_PID_ENV, execute_stage
from .store import ArtifactStore


def _exit_with_parent(pid: int, every_s: float = 2.0) -> None:
    """Local jobs run in their own session, so a SIGKILLed orchestrator would leave them orphaned."""

    def watch() -> None:
        while True:
            time.sleep(every_s)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                logging.getLogger(__name__).error("orchestrator %d is gone; stopping this job", pid)
                os._exit(3)
            except PermissionError:
                pass  # alive, owned by someone else

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="compress_distill.node_main")
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--store", required=True, type=Path)
    ap.add_argument("--node", required=True)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parent = os.environ.get(PARENT_PID_ENV, "")
    if parent.isdigit() and not os.environ.get("SLURM_JOB_ID"):
        _exit_with_parent(int(parent))
    elif parent.isdigit():  # a Slurm job outlives its orchestrator, which re-attaches; scancel stops it
        logging.getLogger(__name__).info("in Slurm job %s: not tied to orchestrator pid %s",
                                         os.environ["SLURM_JOB_ID"], parent)
    plan = build_plan(parse_config(json.loads(args.config.read_text()), args.config))
    if args.node not in plan.nodes:
        print(f"node {args.node!r} is not in the plan of {args.config}", file=sys.stderr)
        return 2
    execute_stage(plan, ArtifactStore(args.store), args.node, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
