"""Entry point of a job process: run one node's stage into a given output directory.

    python -m compress_distill.node_main --config CFG.json --store ROOT --node ID --out TMPDIR

The orchestrator commits TMPDIR after the job ends; the job never commits.
The config arrives as a file (the resolved snapshot), never as shell text.
It is the payload of every job script (jobs/node.py), local or Slurm.

A local job carries its run's owner token and dies with the run, with every
server it started (owner.py). A Slurm job does not: a restarted orchestrator
re-attaches to it by job name, and `scancel` stops it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import parse_config
from .plan import build_plan
from .runner import execute_stage
from .store import ArtifactStore


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="compress_distill.node_main")
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--store", required=True, type=Path)
    ap.add_argument("--node", required=True)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    plan = build_plan(parse_config(json.loads(args.config.read_text()), args.config))
    if args.node not in plan.nodes:
        print(f"node {args.node!r} is not in the plan of {args.config}", file=sys.stderr)
        return 2
    execute_stage(plan, ArtifactStore(args.store), args.node, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
