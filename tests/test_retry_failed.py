"""Failure injection on the dev Slurm cluster: one cell's job fails, the flow says which; a retry
of that run re-runs only that cell. Submissions are counted in Slurm's own accounting (sacct),
not only in our run record."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from compress_distill.config import parse_config
from compress_distill.jobs.flags import job_name
from compress_distill.plan import build_plan
from compress_distill.selection import nodes_for_selection

from .conftest import CONFIGS, REPO, need_dev_cluster
from .prefect_stack import SKELETON, run_jobs

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

FAILED_CELL = "mini-teacher.tiny.lora.aggressive"
SELECT = ["--select", "student=tiny", "--select", "method=lora"]


@pytest.fixture(scope="module")
def slurm() -> None:
    need_dev_cluster()


def slurm_mini(path: Path) -> Path:
    """The mini grid on the dev cluster. A random seed gives every node (and so every Slurm job
    name) a key of its own, so sacct counts only this test's jobs."""
    data = yaml.safe_load((CONFIGS / "mini.yaml").read_text())
    data["seed"] = random.randrange(1, 2**31)
    # time limits well above the USR1 requeue signal (600 s before the limit): at 10 min a job
    # slower than slurmctld's signal check would be told to requeue at once, again and again
    data["cluster"] = {"backend": "slurm", "nodes": 2, "gpus_per_node": 8, "gpu_type": "h100",
                       "jobs": {k: {"cpus_per_task": 1, "mem": "1G", "time_limit": "00:30:00"}
                                for k in ("train", "eval", "vllm", "cpu")},
                       "serve_with": "stage",  # the skeleton stages serve no model: no vLLM in the jobs
                       "device": "cpu"}  # the dev cluster's GPUs are fake: no GPU gate in the jobs
    path.write_text(yaml.safe_dump(data))
    return path


# Every state a job can be in: with --state, sacct also lists jobs that never started (cancelled
# while pending, e.g. queued behind a job that failed), which a bare --starttime query leaves out.
_ALL_STATES = "PD,R,S,RQ,RS,CA,CD,F,NF,TO,OOM,PR,DL,BF,RV"


def _sacct_counts(by_name: dict[str, str], since: str) -> dict[str, int]:
    out = subprocess.run(["sacct", "-X", "--noheader", "--parsable2", f"--starttime={since}", "--endtime=now",
                          f"--state={_ALL_STATES}", "--format=JobID,JobName%250"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    counts: dict[str, int] = {}
    for line in out.splitlines():
        _, _, name = line.partition("|")
        if name in by_name:
            counts[by_name[name]] = counts.get(by_name[name], 0) + 1
    return counts


def sbatch_jobs(names: dict[str, str], since: str, expect_at_least: int) -> dict[str, int]:
    """node id -> number of Slurm jobs with that node's job name submitted since `since` (sacct),
    those that never ran included."""
    by_name = {v: k for k, v in names.items()}
    for _ in range(30):  # accounting lags slurmctld by a few seconds
        if sum(_sacct_counts(by_name, since).values()) >= expect_at_least:
            break
        time.sleep(2)
    time.sleep(3)  # and once more after a pause: a late extra submission must show up too
    return _sacct_counts(by_name, since)


def test_failed_cell_then_retry_submits_only_that_cell(slurm: None, tmp_path: Path) -> None:
    cfg_path = slurm_mini(tmp_path / "mini-slurm.yaml")
    plan = build_plan(parse_config(yaml.safe_load(cfg_path.read_text()), cfg_path))
    names = {nid: job_name(f"cd-{n.stage}-{n.name}-{plan.keys[nid]}") for nid, n in plan.nodes.items()}
    store = tmp_path / "store"
    t0 = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))

    env = {**os.environ, **SKELETON, "COMPRESS_DISTILL_INJECT_JOBS": f"train/{FAILED_CELL}"}
    first = subprocess.run([sys.executable, "-m", "compress_distill.cli", "run", str(cfg_path), "--store",
                            str(store), *SELECT, "--json"], capture_output=True, text=True, cwd=REPO, env=env,
                           timeout=900)
    assert first.returncode == 1, first.stderr[-3000:]
    assert f"train/{FAILED_CELL}" in first.stderr and "1 node(s) failed, 1 blocked" in first.stderr
    (run_dir,) = [d for d in (store / ".runs").iterdir() if not d.name.startswith(".")]  # not .locks/
    failed_run = run_dir.name
    ids = nodes_for_selection(plan, {"student": "tiny", "method": "lora"})
    expected_first = {n for n in ids if plan.nodes[n].job.kind != "cpu"} - {f"evaluate/{FAILED_CELL}"}
    counted = sbatch_jobs(names, t0, len(expected_first))
    assert counted == dict.fromkeys(expected_first, 1), counted
    assert sorted(j["node"] for j in run_jobs(store, failed_run)) == sorted(expected_first)

    t1 = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
    time.sleep(1.5)  # sacct --starttime has 1 s resolution: nothing of the first run may count again
    retry_code = ("import json, sys; from compress_distill.cli import _prefect_defaults; _prefect_defaults(); "
                  "from compress_distill.flows.grid import grid; "
                  "from compress_distill.flows.params import GridParams; "
                  "s = grid(GridParams(config_path=None, retry_of=sys.argv[1])); "
                  "print(json.dumps({k: s[k] for k in ('ran', 'cached', 'retry_of', 'run_id')}))")
    retry = subprocess.run([sys.executable, "-c", retry_code, failed_run], capture_output=True, text=True,
                           cwd=REPO, env={**{k: v for k, v in os.environ.items() if k != "COMPRESS_DISTILL_INJECT_JOBS"}, **SKELETON},
                           timeout=900)
    assert retry.returncode == 0, retry.stderr[-3000:]
    summary = json.loads(retry.stdout.strip().splitlines()[-1])
    assert summary["retry_of"] == failed_run
    assert sorted(summary["ran"]) == [f"evaluate/{FAILED_CELL}", f"train/{FAILED_CELL}"]
    retried = {f"train/{FAILED_CELL}": 1, f"evaluate/{FAILED_CELL}": 1}
    assert sbatch_jobs(names, t1, 2) == retried  # zero new sbatch for every other cell and upstream node
    assert sorted(j["node"] for j in run_jobs(store, summary["run_id"])) == sorted(retried)
