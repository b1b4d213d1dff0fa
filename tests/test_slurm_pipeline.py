"""The real pipeline on the dev Slurm cluster: one mini-ci cell, every job node a Slurm job.

`compress-distill run configs/mini-ci-slurm.yaml --select data=raw --select method=full`:
the build, generate, train and evaluate nodes are submitted with their per-kind job
templates (serving jobs health-gate the project's CPU server; the train job runs TRL
inside the requeue/resume wrapper), on CPU, requesting the fake H100s as GRES. Then
Table 11 comes from `sacct` (cluster/accounting.py) and must match what the jobs allocated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from compress_distill.cluster import accounting as acc

from .conftest import CONFIGS, REPO, need_dev_cluster

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
JOB_STAGES = {"build", "generate", "train", "evaluate"}


def test_slurm_config_is_mini_ci_on_the_dev_cluster() -> None:
    ci = yaml.safe_load((CONFIGS / "mini-ci.yaml").read_text())
    sl = yaml.safe_load((CONFIGS / "mini-ci-slurm.yaml").read_text())
    drop = ("name", "description", "cluster")
    assert {k: v for k, v in ci.items() if k not in drop} == {k: v for k, v in sl.items() if k not in drop}
    assert sl["cluster"]["backend"] == "slurm" and sl["cluster"]["serve_with"] == "cpu"


@pytest.fixture(scope="module")
def cluster() -> None:
    need_dev_cluster()


def test_mini_cell_runs_as_slurm_jobs_and_is_accounted(cluster: None, tmp_path: Path) -> None:
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if k != "COMPRESS_DISTILL_STAGES"}
    res = subprocess.run([sys.executable, "-m", "compress_distill.cli", "run", str(CONFIGS / "mini-ci-slurm.yaml"),
                          "--select", "data=raw", "--select", "method=full", "--store", str(store), "--json"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    summary = json.loads(res.stdout)
    assert not summary["failed"] and summary["ran"]

    manifests = {m["node"]: m for m in (json.loads(p.read_text()) for p in store.glob("*/*/manifest.json"))}
    jobs = {n: m for n, m in manifests.items() if m["stage"] in JOB_STAGES}
    assert {m["stage"] for m in jobs.values()} == JOB_STAGES
    for n, m in jobs.items():  # every job node ran as a Slurm job, not in-process
        assert m["job"]["backend"] == "slurm" and m["job"]["job_id"], n
    [train] = [m for m in jobs.values() if m["stage"] == "train"]
    [ev] = [m for m in jobs.values() if m["stage"] == "evaluate"]
    assert train["metrics"]["steps"] > 0 and 0.0 <= ev["metrics"]["accuracy"] <= 1.0

    # The job logs name the job id and the node; the serving jobs went through the health gate.
    for m in jobs.values():
        job_dir = store / m["stage"] / ".jobs" / f"{m['name']}-{m['key']}"
        text = "".join(p.read_text() for p in job_dir.glob("attempt-*.log"))
        assert f"job {m['job']['job_id']} " in text and " on node" in text, text[:500]
        if m["stage"] in ("generate", "evaluate"):
            assert "CPU server healthy after" in text and "client exited 0" in text
        state = json.loads(next(job_dir.glob("attempt-*.state.json")).read_text())
        assert state["state"] == "COMPLETED" and state["node"] in ("node1", "node2")

    # Table 11 from sacct: the GPUs each job allocated (fake GRES), elapsed > 0.
    node_of = acc.run_jobs(store)
    assert set(node_of.values()) == set(jobs)
    rows = {r.node: r for r in acc.table11(acc.fetch_usage(node_of), node_of)}
    assert set(rows) == set(jobs)
    for n, r in rows.items():
        assert r.gpus == jobs[n]["job"]["gpus"], n
        assert r.hours > 0 and r.gpu_hours == pytest.approx(r.hours * r.gpus)
    assert rows[train["node"]].gpus == 1 and rows[ev["node"]].gpus == 1
    text = acc.format_table11(list(rows.values()))
    assert train["node"] in text and "| total |" in text
    out = subprocess.run([sys.executable, "-m", "compress_distill.cluster.accounting", str(store)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert "| train |" in out and "| evaluate |" in out
    print(out)  # the measured Table 11 of this run (pytest -s)
