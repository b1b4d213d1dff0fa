"""Reading a replay back from its store (`cluster.replay`: jobs sleep their cost-model hours, see
node.replay_payload), and the dev-cluster profile a replay of a study runs under.

`bench/bench_replay.py` and `tests/test_flow_schedule.py` both measure a replay through these:
one reading of the stamps, one notion of which jobs a job waits for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..plan import Plan
from .node import REPLAY_STAMPS


def replay_profile(scale: float, ahead_s: float, node_names: list[str], *, partition: str = "debug",
                   max_concurrent_gpu_jobs: int | None = None) -> dict[str, Any]:
    """A `cluster:` section replaying a study on the dev cluster (2 nodes x 8 fake H100s): sleep
    payloads of `scale` seconds per paper hour, jobs submitted `ahead_s` seconds ahead, each pinned
    to the node the scheduler placed it on. Every kind of job asks for 1 CPU and 64M: the fake
    nodes have 16 CPUs, so GPUs are what bounds a replay, as on the real machines."""
    return {
        "backend": "slurm", "partition": partition, "nodes": len(node_names), "gpus_per_node": 8, "gpu_type": "h100",
        "max_concurrent_gpu_jobs": max_concurrent_gpu_jobs, "device": "cpu", "serve_with": "stage",
        "jobs": {k: {"cpus_per_task": 1, "mem": "64M", "time_limit": "01:00:00"} for k in ("vllm", "train", "eval", "cpu")},
        "node_names": node_names, "replay": {"seconds_per_hour": scale}, "submit_ahead_s": ahead_s,
    }


def job_records(store: Path) -> dict[str, dict[str, Any]]:
    """node -> the runner's job.json of its last submission (job id, submitted_at, log)."""
    return {(d := json.loads(p.read_text()))["node"]: d for p in store.glob("*/.jobs/*/job.json")}


def spans(store: Path) -> dict[str, tuple[float, float]]:
    """node -> (start, end) epoch seconds, as its replay job stamped them, for every committed job."""
    out = {}
    for man in store.glob("*/*/manifest.json"):
        stamps = man.parent / REPLAY_STAMPS
        if stamps.is_file():
            v = [float(x) for x in stamps.read_text().split()]
            out[json.loads(man.read_text())["node"]] = (v[0], v[-1])
    return out


def gates(plan: Plan, nid: str, jobs: set[str]) -> set[str]:
    """The jobs among `jobs` that `nid` waits for, looking through in-process CPU steps."""
    out: set[str] = set()
    for d in plan.nodes[nid].deps:
        out |= {d} if d in jobs else gates(plan, d, jobs)
    return out
