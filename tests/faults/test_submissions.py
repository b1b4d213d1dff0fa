"""One retry layer (issue 17): a node costs at most 1 + JobWatcher.max_retries sbatch submissions
per run, however often the machine fails under it.

The dev cluster's node running the generate job is set DOWN (then resumed) every time the job
runs, so every attempt ends NODE_FAIL, a transient failure. The profile says `requeue: false`,
else Slurm itself would rerun the job under the same id (no sbatch). The watcher resubmits it
twice and then gives up; nothing else (no Prefect task retry) submits it again. `sacct` counts the sbatch
submissions by the node's deterministic job name.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from compress_distill.backends.watch import MAX_RESUBMITS

from ..conftest import REPO, need_dev_cluster
from ..test_retry_failed import sbatch_jobs, slurm_mini
from .test_restart import GENERATE, SKELETON, _env, _names, _run

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
MAX_SUBMISSIONS = 1 + MAX_RESUBMITS


@pytest.fixture
def slurm() -> None:
    need_dev_cluster()


def _scontrol_node(node: str, state: str) -> bool:
    return subprocess.run(["scontrol", "update", f"NodeName={node}", f"State={state}", "Reason=fault-test"],
                          capture_output=True, timeout=30).returncode == 0


def _resume(node: str) -> None:
    """Bring the node back. The dev cluster may return it to service by itself as it registers
    again (then RESUME is refused as an invalid state): done once sinfo no longer says down."""
    for _ in range(60):
        if _scontrol_node(node, "RESUME"):
            return
        state = subprocess.run(["sinfo", "-h", "-N", "-n", node, "-o", "%T"], capture_output=True, text=True,
                               timeout=30).stdout.strip()
        if state and not state.startswith("down"):
            return
        time.sleep(0.5)


def _fail_nodes_under(job_name: str, stop: threading.Event, failed: list[str], times: int = 1 << 30) -> None:
    """Set DOWN the node of every running job named `job_name` (its job ends NODE_FAIL), then resume it;
    the first `times` of them."""
    seen: set[str] = set()
    while not stop.is_set() and len(failed) < times:
        out = subprocess.run(["squeue", "-h", "-t", "R", "-n", job_name, "-o", "%i %N"], capture_output=True,
                             text=True, timeout=30).stdout
        for line in out.splitlines():
            job_id, _, node = line.strip().partition(" ")
            if job_id in seen or not node:
                continue
            seen.add(job_id)
            if _scontrol_node(node, "DOWN"):
                failed.append(job_id)
                time.sleep(1)
            _resume(node)
        stop.wait(0.3)


def _no_requeue(cfg: Path, **cluster: object) -> Path:
    data = yaml.safe_load(cfg.read_text())
    data["cluster"].update({"requeue": False, **cluster})
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def test_a_node_the_machine_keeps_failing_is_submitted_at_most_three_times(slurm: None, tmp_path: Path) -> None:
    cfg, store = _no_requeue(slurm_mini(tmp_path / "cfg.yaml")), tmp_path / "store"
    names = _names(cfg)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    stop, failed = threading.Event(), list[str]()
    killer = threading.Thread(target=_fail_nodes_under, args=(names[GENERATE], stop, failed), daemon=True)
    killer.start()
    try:
        # the job lives long enough for the node to be set DOWN under it
        res = _run(cfg, store, _env(**SKELETON, COMPRESS_DISTILL_SKELETON_DELAY_S="20"))
    finally:
        stop.set()
        killer.join(timeout=60)
        for node in ("node1", "node2"):  # whatever happened, leave the dev cluster usable
            _scontrol_node(node, "RESUME")
    assert res.returncode == 1, res.stderr[-3000:]
    assert len(failed) == MAX_SUBMISSIONS, failed
    counts = sbatch_jobs(names, since, MAX_SUBMISSIONS)
    assert counts[GENERATE] == MAX_SUBMISSIONS, counts
    assert {n for n in counts if n != GENERATE} <= {n for n in names if n.startswith("build/")}, counts  # nothing downstream
    summary = "\n".join(res.stderr.splitlines()[-40:])
    assert GENERATE in summary and "NODE_FAIL" in summary, summary
    assert not list((store / "generate").glob("*/manifest.json"))


def test_jobs_queued_behind_a_lost_job_run_after_its_resubmission(slurm: None, tmp_path: Path) -> None:
    """Submit-ahead: the compression jobs wait in Slurm's queue behind the generation job (afterok).
    The machine loses that job once; the watcher resubmits it under a new id, and Slurm cancels the
    jobs queued behind the old one. The flow admits them again (their jobs never ran), and the
    run completes: the generation costs 2 submissions, nothing fails."""
    cfg, store = _no_requeue(slurm_mini(tmp_path / "cfg.yaml"), submit_ahead_s=600.0), tmp_path / "store"
    names = _names(cfg)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    stop, failed = threading.Event(), list[str]()
    killer = threading.Thread(target=_fail_nodes_under, args=(names[GENERATE], stop, failed, 1), daemon=True)
    killer.start()
    try:  # a compressed-trace cell: its compression job is what queues behind the generation
        res = subprocess.run([sys.executable, "-m", "compress_distill.cli", "run", str(cfg), "--store", str(store),
                              "--select", "student=tiny", "--select", "method=full", "--select", "data=mild",
                              "--json"], capture_output=True, text=True, cwd=REPO, timeout=600,
                             env=_env(**SKELETON, COMPRESS_DISTILL_SKELETON_DELAY_S="15"))
    finally:
        stop.set()
        killer.join(timeout=60)
        for node in ("node1", "node2"):
            _scontrol_node(node, "RESUME")
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(failed) == 1, failed
    counts = sbatch_jobs(names, since, 2)
    assert counts[GENERATE] == 2, counts
    # compress, train and evaluate were queued behind the lost job (the builds take 15 s, so they
    # were queued long before it ran), cancelled with it, and run after the resubmitted one:
    # 2 submissions each, one of which never ran
    queued = [n for n in counts if n.split("/")[0] in ("compress", "train", "evaluate")]
    assert len(queued) == 3 and all(counts[n] == 2 for n in queued), json.dumps(counts, indent=1)
    assert all(c <= 2 for c in counts.values()), counts
