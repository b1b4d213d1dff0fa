"""The flow's scheduler holds the GPU pool: GPUs in use never exceed nodes x gpus_per_node.

The scheduler admits a GPU job only when it fits the pool (flows/grid.py), whatever Prefect
runs the flow: here the session's shared `prefect server`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from compress_distill.config import load_config
from compress_distill.plan import build_plan
from compress_distill.selection import nodes_for_selection

from .conftest import CONFIGS, REPO
from .prefect_stack import SKELETON, shared_stack

pytestmark = pytest.mark.slow


def test_running_gpu_jobs_never_exceed_the_pool(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                               request: pytest.FixtureRequest) -> None:
    stack = shared_stack(tmp_path_factory, request.config).stack
    data = yaml.safe_load((CONFIGS / "mini.yaml").read_text())
    # a pool of 2 GPUs; tiny trains on 2 (a whole node), everything else takes 1; 3 local job slots.
    # tiny's two raw cells (lora, full) become ready together: without admission both trainings
    # (4 GPUs) would run at once, plus an evaluation
    data["cluster"].update({"nodes": 1, "gpus_per_node": 2, "local_workers": 3})
    data["students"]["tiny"]["gpus"] = 2
    # admission is under test, not learning: 1 epoch over 100 questions a domain (mini.yaml's 17
    # epochs over 500 made two sequential trainings outlast the timeout on a loaded machine)
    data["training"]["num_epochs"] = 1
    for ds in data["datasets"].values():
        ds.update({"limit": 100, "eval_limit": 25})
    cfg = tmp_path / "mini-2gpu.yaml"
    cfg.write_text(yaml.safe_dump(data))
    store = tmp_path / "store"
    res = subprocess.run([sys.executable, "-m", "compress_distill.cli", "run", str(cfg), "--store", str(store),
                          "--select", "student=tiny", "--select", "data=raw", "--json"], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, **SKELETON, "PREFECT_API_URL": stack.api}, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    assert not summary["failed"]
    assert stack.limits() == {}  # no Prefect concurrency limit does it

    spans = []  # (start, end, gpus) of every node that ran as a GPU job, from the manifests
    for manifest in store.glob("*/*/manifest.json"):
        m = json.loads(manifest.read_text())
        if m["job"]["job_id"] and m["job"]["gpus"] > 0:
            spans.append((m["started_at"], m["finished_at"], m["job"]["gpus"]))
    plan = build_plan(load_config(cfg))
    gpu_jobs = [n for n in nodes_for_selection(plan, {"student": "tiny", "data": "raw"})
                if plan.nodes[n].job.kind != "cpu" and plan.nodes[n].job.gpus > 0]
    assert len(spans) == len(gpu_jobs) == 5  # generate, 2 train, 2 evaluate
    edges = sorted([(s, g) for s, _, g in spans] + [(e, -g) for _, e, g in spans], key=lambda x: (x[0], x[1]))
    in_use = peak = 0
    for _, delta in edges:  # ends sort before starts at the same instant
        in_use += delta
        peak = max(peak, in_use)
    assert peak <= 2, f"{peak} GPUs in use at once in a pool of 2"
