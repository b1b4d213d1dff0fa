"""Fault suite (issue 16): kill the orchestrator at a named point (faults.py), restart it, and count
what ran again. A restart never deletes finished work (D1); nothing outlives its run (D2).

Slurm cases count submissions through `sacct`, by the node's deterministic job name; every case
uses a config with a seed of its own, so its job names (keys) are its own.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from compress_distill.config import parse_config
from compress_distill.faults import KILL_AT_ENV
from compress_distill.jobs.flags import job_name
from compress_distill.owner import OWNER_ENV, tagged
from compress_distill.plan import build_plan

from ..conftest import CONFIGS, REPO, need_dev_cluster
from ..support import SKELETON_ENV
from ..test_retry_failed import sbatch_jobs, slurm_mini

pytestmark = pytest.mark.slow
SKELETON = {**SKELETON_ENV, "COMPRESS_DISTILL_LEASE_TTL_S": "3"}
CELL = ["--select", "student=tiny", "--select", "method=full", "--select", "data=raw"]
GENERATE = "generate/mini-teacher"


def _env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in (OWNER_ENV, KILL_AT_ENV)}, **extra}


def _run(cfg: Path, store: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compress_distill.cli", "run", str(cfg), "--store", str(store),
                           *CELL, "--json"], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def _seeded(src: Path, dst: Path) -> Path:
    data = yaml.safe_load(src.read_text())
    data["seed"] = random.randrange(1, 2**31)
    dst.write_text(yaml.safe_dump(data))
    return dst


def _job_dir(store: Path, node: str) -> Path:
    stage, name = node.split("/", 1)
    (d,) = [p for p in (store / stage / ".jobs").iterdir() if p.name.startswith(name + "-")]
    return d


def _committed(store: Path, node: str) -> Path:
    stage, name = node.split("/", 1)
    (d,) = [p for p in (store / stage).iterdir() if p.name.startswith(name + "-") and (p / "manifest.json").is_file()]
    return d


# ------------------------------------------------------------------ local backend

def test_local_job_that_ended_before_the_kill_is_committed_not_rerun(tmp_path: Path) -> None:
    """D1 on one machine: the job finished its stage, the run died before committing it."""
    cfg, store = _seeded(CONFIGS / "mini-ci.yaml", tmp_path / "cfg.yaml"), tmp_path / "store"
    first = _run(cfg, store, _env(**SKELETON, **{KILL_AT_ENV: f"job-ended@{GENERATE}"}))
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    job_dir = _job_dir(store, GENERATE)
    before = sorted(p.name for p in job_dir.glob("attempt-*.sh"))
    assert len(before) == 1

    second = _run(cfg, store, _env(**SKELETON))
    assert second.returncode == 0, second.stderr[-3000:]
    assert GENERATE in json.loads(second.stdout)["ran"]
    assert sorted(p.name for p in job_dir.glob("attempt-*.sh")) == before, "the finished job ran again"
    record = json.loads((job_dir / "job.json").read_text())
    assert record["adopted"] and Path(record["log"]).is_file()  # job.json names the real log
    assert (_committed(store, GENERATE) / "attempts.parquet").is_file()  # the skeleton generate table


def test_a_sigkilled_run_leaves_no_server_and_no_job_behind(tmp_path: Path) -> None:
    """D2: the run's temporary Prefect server, its local job and the model server that job started
    all die with it. The kill comes once the job's model server is up (a condition, not a sleep)."""
    cfg, store = _seeded(CONFIGS / "mini-ci.yaml", tmp_path / "cfg.yaml"), tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "compress_distill.cli", "run", str(cfg), "--store", str(store),
                             *CELL], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mine = f"{proc.pid}:"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            owned = {p for p, t in tagged().items() if t.startswith(mine)}
            cmdlines = [_cmdline(p) for p in owned]
            if any("local_server" in c for c in cmdlines) and any("create_app" in c for c in cmdlines):
                break
            assert proc.poll() is None, "the run ended before its model server was up"
            time.sleep(0.2)
        else:
            pytest.fail("no model server came up under the run")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(owned) >= 4  # Prefect's server, the job's bash, node_main, the model server
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and [p for p, t in tagged().items() if t.startswith(mine)]:
        time.sleep(0.2)
    left = {p: _cmdline(p) for p, t in tagged().items() if t.startswith(mine)}
    assert not left, f"outlived their run: {left}"


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# ------------------------------------------------------------------ Slurm (dev cluster)

@pytest.fixture
def slurm() -> None:
    need_dev_cluster()


def _names(cfg: Path) -> dict[str, str]:
    plan = build_plan(parse_config(yaml.safe_load(cfg.read_text()), cfg))
    return {nid: job_name(f"cd-{n.stage}-{n.name}-{plan.keys[nid]}") for nid, n in plan.nodes.items()}


@pytest.mark.slurm
@pytest.mark.parametrize("point", ["after-submit", "job-ended"])
def test_slurm_restart_adopts_or_commits_the_job_and_never_resubmits(slurm: None, tmp_path: Path,
                                                                     point: str) -> None:
    """D1 on Slurm. `after-submit`: the job still runs when the run restarts (adopted: re-attached,
    its attempt dir untouched). `job-ended`: it COMPLETED before the restart (committed as it is)."""
    cfg, store = slurm_mini(tmp_path / "cfg.yaml"), tmp_path / "store"
    names = _names(cfg)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    slow = {**SKELETON, "COMPRESS_DISTILL_SKELETON_DELAY_S": "6"}  # the job outlives the kill
    first = _run(cfg, store, _env(**slow, **{KILL_AT_ENV: f"{point}@{GENERATE}"}))
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]

    second = _run(cfg, store, _env(**SKELETON))
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout)
    assert GENERATE in summary["ran"] and not summary["failed"]
    counts = sbatch_jobs(names, since, len([n for n in summary["ran"] if not n.startswith(("verify", "derive"))]))
    assert counts[GENERATE] == 1, counts  # one sbatch for generate, across both runs
    record = json.loads((_job_dir(store, GENERATE) / "job.json").read_text())
    assert record["adopted"] and Path(record["log"]).is_file(), record
    assert (_committed(store, GENERATE) / "attempts.parquet").is_file()  # the skeleton generate table
