"""Fault suite (issue 16, D4): the Prefect server dies right after a node committed, while its
task is about to report back. The committed node stays a success; the run ends with a message within
COMPRESS_DISTILL_API_GONE_S instead of hanging; a rerun against a new server resumes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from compress_distill.faults import KILL_AT_ENV, KILL_PGID_ENV
from compress_distill.flows.api_watch import EXIT_API_GONE, GONE_ENV

from ..conftest import CONFIGS, REPO
from ..prefect_stack import Stack, make_stack

pytestmark = pytest.mark.slow
CELL = ["--select", "student=tiny", "--select", "method=full", "--select", "data=raw"]
TRAIN = "train/mini-teacher.tiny.full.raw"


def _config(path: Path) -> Path:
    data = yaml.safe_load((CONFIGS / "mini-ci.yaml").read_text())
    data["seed"] = random.randrange(1, 2**31)
    data["cluster"].update({"nodes": 1, "gpus_per_node": 2})  # a GPU pool: train and evaluate are GPU jobs
    path.write_text(yaml.safe_dump(data))
    return path


def _run(stack: Stack, cfg: Path, store: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "compress_distill.cli", "run", str(cfg), "--store", str(store),
                           *CELL, "--json", "--no-progress"], capture_output=True, text=True, cwd=REPO,
                          env={**stack.env, **env}, timeout=900)
    return proc, time.monotonic() - t0


def test_a_dead_prefect_server_never_fails_committed_work_nor_hangs_the_run(tmp_path: Path) -> None:
    cfg, store = _config(tmp_path / "cfg.yaml"), tmp_path / "store"
    first_stack = make_stack(tmp_path / "server-1")
    second_stack = make_stack(tmp_path / "server-2")
    try:
        first_stack.start_server()
        server_pgid = first_stack.procs[0].pid  # started in a session of its own
        first, seconds = _run(first_stack, cfg, store, **{KILL_AT_ENV: f"task-end@{TRAIN}",
                                                          KILL_PGID_ENV: str(server_pgid), GONE_ENV: "20"})
        assert first.returncode == EXIT_API_GONE, first.stderr[-3000:]
        assert "has not answered" in first.stderr and "rerun the same command" in first.stderr
        assert seconds < 300, seconds
        stage, name = TRAIN.split("/")
        assert [d for d in (store / stage).iterdir() if d.name.startswith(name) and (d / "manifest.json").is_file()]

        second_stack.start_server()
        second, _ = _run(second_stack, cfg, store)
        assert second.returncode == 0, second.stderr[-3000:]
        summary = json.loads(second.stdout)
        # Node task runs call no API (no tags, no concurrency slots), so the first run may have
        # gone on to evaluate before its watch ended it: either way nothing is done twice.
        evaluate = "evaluate/mini-teacher.tiny.full.raw"
        assert TRAIN in summary["cached"] and (evaluate in summary["cached"] or evaluate in summary["ran"])
        assert not summary["failed"] and TRAIN not in summary["ran"]
    finally:
        first_stack.stop()
        second_stack.stop()
