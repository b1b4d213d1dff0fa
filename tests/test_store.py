"""The artifact store: atomic commit, manifests, leases, Parquet format."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from compress_distill.config import load_config
from compress_distill.plan import build_plan
from compress_distill.runner import RunContext, run_node, snapshot_config
from compress_distill.store import ArtifactStore, LeaseTimeout, diff_identity, write_parquet

from .conftest import CONFIGS


def test_commit_is_atomic_and_manifest_is_last(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    tmp = store.begin("train", "cell", "abc")
    (tmp / "out.txt").write_text("x")
    assert not store.is_done("train", "cell", "abc")
    assert not store.path("train", "cell", "abc").exists()
    final = store.commit(tmp, "train", "cell", "abc", {"name": "cell", "key": "abc", "finished_at": 1})
    assert final == tmp_path / "train" / "cell-abc"
    assert store.is_done("train", "cell", "abc") and not tmp.exists()
    assert json.loads((final / "manifest.json").read_text())["key"] == "abc"


def test_crash_debris_is_never_done_and_is_swept(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    tmp = store.begin("train", "cell", "abc")
    (tmp / "half-written.parquet").write_text("garbage")
    assert not store.is_done("train", "cell", "abc")
    tmp2 = store.begin("train", "cell", "abc")  # a rerun sweeps the earlier attempt
    assert tmp2 == tmp and list(tmp2.iterdir()) == []  # same path: a re-attached job writes where we look


def test_incomplete_final_dir_is_replaced(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    store.path("train", "cell", "abc").mkdir(parents=True)  # e.g. copied by hand, no manifest
    tmp = store.begin("train", "cell", "abc")
    store.commit(tmp, "train", "cell", "abc", {"name": "cell"})
    assert store.is_done("train", "cell", "abc")


def test_parquet_is_zstd_and_atomic(tmp_path: Path) -> None:
    n = write_parquet([{"id": "a", "x": 1}, {"id": "b", "x": 2}], tmp_path / "t.parquet")
    assert n == 2
    meta = pq.read_metadata(tmp_path / "t.parquet")
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_lease_is_exclusive_and_released(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with store.lease("s", "n", "k", ttl_s=30):
        with pytest.raises(LeaseTimeout, match="lease held by"):
            with store.lease("s", "n", "k", timeout_s=0.3, poll_s=0.05):
                pass
    with store.lease("s", "n", "k", timeout_s=0.3):
        pass


def test_live_lease_of_a_dead_local_process_is_broken_at_once(tmp_path: Path) -> None:
    """A crashed run (kill -9) must not block its successor for the whole TTL."""
    store = ArtifactStore(tmp_path)
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(proc.stdout)
    lease = tmp_path / "s" / ".locks" / "n-k.lease"
    lease.parent.mkdir(parents=True)
    lease.write_text(json.dumps({"token": "dead", "owner": f"{socket.gethostname()}:{dead_pid}",
                                 "expires": time.time() + 3600}))
    with store.lease("s", "n", "k", timeout_s=2, poll_s=0.05):
        assert json.loads(lease.read_text())["token"] != "dead"
    # a live holder on another host is respected until its TTL
    lease.write_text(json.dumps({"token": "x", "owner": "elsewhere:1", "expires": time.time() + 3600}))
    with pytest.raises(LeaseTimeout):
        with store.lease("s", "n", "k", timeout_s=0.3, poll_s=0.05):
            pass


def test_expired_lease_of_a_dead_holder_is_broken(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    lease = tmp_path / "s" / ".locks" / "n-k.lease"
    lease.parent.mkdir(parents=True)
    lease.write_text(json.dumps({"token": "dead", "owner": "gone:1", "expires": time.time() - 1}))
    with store.lease("s", "n", "k", timeout_s=2, poll_s=0.05):
        assert json.loads(lease.read_text())["token"] != "dead"


def test_diff_identity_lines() -> None:
    old = {"params": {"lr": 1, "x": {"y": 2}}, "upstream": {"a/b": "k1"}}
    new = {"params": {"lr": 2, "x": {"y": 2}}, "upstream": {"a/b": "k2"}}
    assert diff_identity(old, new) == ["params.lr: 1 -> 2", "upstream a/b changed (k1 -> k2)"]


def test_two_concurrent_runs_execute_a_step_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPRESS_DISTILL_SKELETON_DELAY_S", "1.0")
    plan = build_plan(load_config(CONFIGS / "mini.yaml"))
    store = ArtifactStore(tmp_path)
    ctx = RunContext(plan, store, snapshot_config(plan, store))
    outcomes = []
    threads = [threading.Thread(target=lambda: outcomes.append(run_node(ctx, "prepare/eval-suite")))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o.cached for o in outcomes) == [False, True]
    assert store.is_done("prepare", "eval-suite", plan.keys["prepare/eval-suite"])


def test_breaking_a_stale_lease_never_removes_a_fresh_one(tmp_path: Path) -> None:
    """Run A reads an expired lease; before A moves it away, run B breaks it and takes a fresh
    lease. A's break must leave B's lease in place."""
    from compress_distill.store import _break_stale

    lease = tmp_path / "n-k.lease"
    stale = {"token": "old", "owner": "gone:1", "expires": time.time() - 1}
    fresh = {"token": "b", "owner": "other:2", "expires": time.time() + 60}
    lease.write_text(json.dumps(fresh))          # B already replaced the stale lease
    _break_stale(lease, stale, token="a")        # A acts on what it read earlier
    assert json.loads(lease.read_text()) == fresh
    assert list(tmp_path.iterdir()) == [lease]   # no debris
    lease.write_text(json.dumps(stale))          # and the stale one itself is removed
    _break_stale(lease, stale, token="a")
    assert not lease.exists()


def test_an_unreadable_lease_is_broken_only_after_a_ttl(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    lease = tmp_path / "s" / ".locks" / "n-k.lease"
    lease.parent.mkdir(parents=True)
    lease.write_text("{not json")
    with pytest.raises(LeaseTimeout):
        with store.lease("s", "n", "k", timeout_s=0.3, poll_s=0.05, ttl_s=30):
            pass
    old = time.time() - 60
    os.utime(lease, (old, old))
    with store.lease("s", "n", "k", timeout_s=2, poll_s=0.05, ttl_s=30):
        assert json.loads(lease.read_text())["token"]


def test_racing_runs_never_hold_a_lease_together(tmp_path: Path) -> None:
    """Eight threads fight over a lease that starts out expired: at no moment do two hold it."""
    store = ArtifactStore(tmp_path)
    lease = tmp_path / "s" / ".locks" / "n-k.lease"
    lease.parent.mkdir(parents=True)
    lease.write_text(json.dumps({"token": "old", "owner": "gone:1", "expires": time.time() - 1}))
    holders, overlaps, rounds = [0], [0], [0]
    guard = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            with store.lease("s", "n", "k", timeout_s=30, poll_s=0.001, ttl_s=30):
                with guard:
                    holders[0] += 1
                    overlaps[0] += holders[0] > 1
                time.sleep(0.002)
                with guard:
                    holders[0] -= 1
                    rounds[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rounds[0] == 40 and overlaps[0] == 0
    assert not any(p.name != "n-k.lease" for p in lease.parent.iterdir())  # no .new/.stale debris
