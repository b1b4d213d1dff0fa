"""The flow drives the scheduler (issue 17): the paper DAG replayed through `compress-distill run` on
the real dev Slurm cluster. What runs is the product (the Prefect flow, its scheduler, the job
scripts, sbatch, the watcher, the store); only the payloads sleep (`cluster.replay`). Timing
targets live in bench/bench_replay.py; these tests check what the schedule did, from the jobs'
own start and end stamps and from sacct."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from compress_distill.config import load_config
from compress_distill.jobs.replay import gates, job_records, replay_profile, spans
from compress_distill.plan import build_plan

from .conftest import CONFIGS, REPO, need_dev_cluster

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
SCALE = 0.5  # seconds per paper hour


def _replay(tmp: Path, scale: float = SCALE, ahead_s: float = 1.0) -> Path:
    from compress_distill.backends.devcluster import partition_nodes

    data = yaml.safe_load((CONFIGS / "paper.yaml").read_text())
    data["cluster"] = replay_profile(scale, ahead_s, partition_nodes()[:2], max_concurrent_gpu_jobs=8)
    path = tmp / "replay.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run(cfg: Path, store: Path, *select: str, policy: str = "critical-path") -> subprocess.Popen[str]:
    args = [a for s in select for a in ("--select", s)]
    return subprocess.Popen([sys.executable, "-m", "compress_distill.cli", "run", str(cfg), "--store", str(store),
                             "--policy", policy, "--json", "--no-progress", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _sacct_nodes(job_ids: list[str]) -> dict[str, str]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", f"--jobs={','.join(job_ids)}", "--format=JobID,NodeList"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


def test_the_paper_dag_replays_through_run_as_the_scheduler_decided(tmp_path: Path) -> None:
    need_dev_cluster()
    cfg_path = _replay(tmp_path)
    cfg = load_config(cfg_path)
    plan = build_plan(cfg)
    store = tmp_path / "store"
    proc = _run(cfg_path, store)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert len(summary["ran"]) == len(plan.nodes) and not summary["failed"]

    span, jobs = spans(store), job_records(store)
    job_nodes = [n for n, node in plan.nodes.items() if node.job.kind != "cpu"]
    assert sorted(span) == sorted(job_nodes) == sorted(jobs)
    ahead = 0
    for nid, (start, _) in span.items():
        gate_ends = [span[g][1] for g in gates(plan, nid, set(span))]
        assert start >= max(gate_ends, default=0.0), f"{nid} started before its inputs' jobs ended"
        ahead += bool(gate_ends) and jobs[nid]["submitted_at"] < max(gate_ends)
    assert ahead > 0  # submit-ahead: queued in Slurm before their inputs' jobs ended

    # issue 7: raw-trace cells train while their teacher's compression still runs
    for teacher in ("qwen3.5-397b", "gpt-oss-120b"):
        comp_end = max(e for n, (_, e) in span.items() if n.startswith(f"compress/{teacher}."))
        assert [n for n, (s, _) in span.items() if n.startswith(f"train/{teacher}.") and n.endswith(".raw")
                and s < comp_end], teacher

    # pinned (cluster.node_names): each node's GPUs in use never exceed its 8, by Slurm's placement
    where = _sacct_nodes([jobs[n]["job_id"] for n in span])
    for node in cfg.cluster.node_names:
        mine = [(span[n], plan.nodes[n].job.gpus) for n in span if where[jobs[n]["job_id"]] == node]
        assert mine, node
        edges = sorted([(s, g) for (s, _), g in mine] + [(e, -g) for (_, e), g in mine])
        in_use = peak = 0
        for _, delta in edges:  # ends sort before starts at the same instant
            in_use += delta
            peak = max(peak, in_use)
        assert peak <= cfg.cluster.gpus_per_node, (node, peak)


def test_a_failed_input_cancels_the_jobs_queued_behind_it(tmp_path: Path) -> None:
    """Compression jobs wait in Slurm's queue behind the generation job (submitted ahead); the
    generation is cancelled: Slurm cancels them (--kill-on-invalid-dep), they never run, and the
    run reports the generation failed and everything after it blocked."""
    need_dev_cluster()
    cfg_path = _replay(tmp_path, scale=0.5, ahead_s=30.0)  # gpt-oss generation: 21.75 h -> 11 s
    store = tmp_path / "store"
    proc = _run(cfg_path, store, "teacher=gpt-oss-120b", "student=qwen3.5-0.8b")
    generate = "generate/gpt-oss-120b"
    deadline = time.monotonic() + 120
    jobs: dict[str, dict] = {}
    while time.monotonic() < deadline:  # wait until compression jobs are queued behind the generation
        jobs = job_records(store)
        if generate in jobs and any(n.startswith("compress/") for n in jobs):
            break
        time.sleep(0.2)
    assert generate in jobs and any(n.startswith("compress/") for n in jobs), sorted(jobs)
    subprocess.run(["scancel", jobs[generate]["job_id"]], check=True, timeout=30)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    assert "1 node(s) failed" in err and generate in err, err[-3000:]
    queued = [jobs[n]["job_id"] for n in jobs if n.startswith("compress/")]
    states = subprocess.run(["sacct", "-X", "-n", "-P", f"--jobs={','.join(queued)}", "--format=JobID,State,Elapsed"],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    for line in states.splitlines():
        _, state, elapsed = line.split("|")
        assert state.startswith("CANCELLED") and elapsed == "00:00:00", line  # cancelled while pending
    assert not spans(store)  # no job's payload ever ran
