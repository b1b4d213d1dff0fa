"""The mini DAG through Prefect (ephemeral server): caching, selective re-runs, kill and resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import CONFIGS, REPO
from .support import SKELETON_ENV

pytestmark = pytest.mark.slow
NODES = 35  # configs/mini.yaml: 5 builds, 2 prepares, generate, verify, 2 compressions, 5 derives,
#            9 train + 9 evaluate, report


@pytest.fixture(autouse=True)
def _skeleton_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    # These tests are about orchestration; the stand-in stages make each run take seconds, not minutes.
    for k, v in SKELETON_ENV.items():
        monkeypatch.setenv(k, v)


def _run(config: Path, store: Path, *extra: str, env: dict[str, str] | None = None) -> dict:
    cmd = [sys.executable, "-m", "compress_distill.cli", "run", str(config), "--store", str(store), "--json", *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})},
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return {**json.loads(res.stdout), "stderr": res.stderr}


def _committed_dirs(store: Path) -> list[Path]:
    return [d for stage in store.iterdir() if stage.is_dir() and not stage.name.startswith(".")
            for d in stage.iterdir() if not d.name.startswith(".")]


def test_rerun_is_fully_cached_and_lr_change_reruns_only_that_student(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = _run(CONFIGS / "mini.yaml", store, env={"PREFECT_LOGGING_LEVEL": "INFO"})
    assert not first["failed"] and len(first["ran"]) == first["nodes"] == NODES
    # job ids and log paths are in the task runs' Prefect logs (the UI shows the same lines)
    assert re.search(r"train/mini-teacher\.tiny\.full\.raw: job local-\S+ submitted, log \S+attempt-\d+\.log",
                     first["stderr"]), first["stderr"][-2000:]

    second = _run(CONFIGS / "mini.yaml", store, "--progress")
    assert second["ran"] == [] and len(second["cached"]) == NODES
    # the live view (stderr; its final frame when not a terminal): a bar per stage, all cached
    assert "train" in second["stderr"] and "9/9" in second["stderr"] and "9 cached" in second["stderr"]

    data = yaml.safe_load((CONFIGS / "mini.yaml").read_text())
    data["students"]["small"]["method_overrides"]["full"]["learning_rate"] = 1e-3
    changed = tmp_path / "mini-lr.yaml"
    changed.write_text(yaml.safe_dump(data))
    why = subprocess.run([sys.executable, "-m", "compress_distill.cli", "explain", str(changed),
                          "evaluate/mini-teacher.small.full.mild", "--store", str(store)],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert why.returncode == 0
    assert "will run" in why.stdout
    assert "root cause: train/mini-teacher.small.full.mild: params.method.learning_rate: 0.003 -> 0.001" in why.stdout

    third = _run(changed, store)
    small = [f"{s}/mini-teacher.small.full.{d}" for s in ("train", "evaluate")
             for d in ("mild", "aggressive")]
    assert sorted(third["ran"]) == sorted(small + ["report/study"])
    assert len(third["cached"]) == NODES - 5


def test_killed_run_resumes_and_never_shows_partial_artifacts(tmp_path: Path) -> None:
    store = tmp_path / "store"
    env = {**os.environ, "COMPRESS_DISTILL_SKELETON_DELAY_S": "1.5", "COMPRESS_DISTILL_LEASE_TTL_S": "3"}
    cmd = [sys.executable, "-m", "compress_distill.cli", "run", str(CONFIGS / "mini.yaml"), "--store", str(store)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if store.is_dir() and len(_committed_dirs(store)) >= 4:
                break
            assert proc.poll() is None, "run ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("run committed nothing in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    committed = _committed_dirs(store)
    assert 4 <= len(committed) < NODES
    for d in committed:  # a directory under its final name is always complete
        assert (d / "manifest.json").is_file(), d
    before = {d.name for d in committed}

    resumed = _run(CONFIGS / "mini.yaml", store, env={"COMPRESS_DISTILL_LEASE_TTL_S": "3"})
    assert not resumed["failed"]
    cached_names = {Path(resumed["artifacts"][n]).name for n in resumed["cached"]}
    assert before <= cached_names, "work finished before the kill is not redone"
    assert len(resumed["ran"]) == NODES - len(before)
    for d in _committed_dirs(store):
        assert (d / "manifest.json").is_file()
