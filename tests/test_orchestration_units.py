"""Fast tests of the orchestration pieces that need no Prefect server: limits, run record and
failure injection, cancellation, retry's force trimming, artifacts content, deployments, progress."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from rich.console import Console

from compress_distill import events
from compress_distill.backends.base import JobRequest, JobState, JobStatus
from compress_distill.backends.watch import JobWatcher
from compress_distill.config import load_config
from compress_distill.flows import summary
from compress_distill.flows.cancel import cancel_in_process, cancel_recorded_jobs
from compress_distill.flows.deploy import ServeOptions, deployment_specs
from compress_distill.flows.lease import grid_lease, grid_lock_name, grid_lock_path
from compress_distill.flows.progress import GridProgress
from compress_distill.flows.retry import still_forced
from compress_distill.flows.runlog import RecordingBackend, RunRecord, injections, node_of_job
from compress_distill.plan import build_plan
from compress_distill.store import ArtifactStore, write_parquet

from .conftest import CONFIGS, REPO


class FakeBackend:
    name = "fake"

    def __init__(self, states: dict[str, JobState] | None = None):
        self.states = states or {}
        self.submitted: list[JobRequest] = []
        self.cancel_calls: list[list[str]] = []

    def submit(self, req: JobRequest) -> str:
        self.submitted.append(req)
        job_id = str(100 + len(self.submitted))
        self.states.setdefault(job_id, JobState.RUNNING)
        return job_id

    def poll_many(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        return {j: JobStatus(j, self.states.get(j, JobState.UNKNOWN)) for j in job_ids}

    def cancel(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        self.cancel_calls.append(ids)
        for j in ids:
            self.states[j] = JobState.CANCELLED


def _req(tmp: Path, name: str) -> JobRequest:
    return JobRequest(name=name, command=["true"], workdir=tmp, log_path=tmp / f"{name}.log", kind="train", gpus=1)


# ---------------------------------------------------------------------------- limits

def test_grid_lock_name_is_a_slug_of_the_config_name() -> None:
    assert grid_lock_name("Paper_v2") == "grid-paper-v2"


def test_one_run_per_grid_waits_for_the_holder_and_breaks_a_dead_ones_lease(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    order: list[str] = []
    holding = threading.Event()

    def first() -> None:
        with grid_lease(store, "mini"):
            order.append("first in")
            holding.set()
            time.sleep(1.5)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    assert holding.wait(10)
    with grid_lease(store, "mini"):  # waits for the first run
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]
    with grid_lease(store, "other"):  # another grid is not blocked
        pass

    # a run killed with -9 leaves its lease behind, unexpired: the next run must not wait for it
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = Path(grid_lock_path(store, "mini"))
    lock.write_text(json.dumps({"token": "x", "owner": f"{socket.gethostname()}:{dead.pid}",
                                "expires": time.time() + 3600}))
    t0 = time.monotonic()
    with grid_lease(store, "mini"):
        assert json.loads(lock.read_text())["token"] != "x"
    assert time.monotonic() - t0 < 5
    assert not lock.exists()


# ---------------------------------------------------------------------------- run record, injection

def test_node_of_job_inverts_the_runner_job_name() -> None:
    assert node_of_job("cd-train-qwen3.5-397b.qwen3.5-0.8b.lora.raw-1bf2204d6613a57c") == \
        "train/qwen3.5-397b.qwen3.5-0.8b.lora.raw"
    assert node_of_job("cd-generate-mini-teacher-c540d1102d81eccf") == "generate/mini-teacher"


def test_recording_backend_records_every_submission_and_injects(tmp_path: Path) -> None:
    rec = RunRecord.open(tmp_path, "run-1", {"config": "x"})
    inner = FakeBackend()
    env = {"COMPRESS_DISTILL_INJECT_JOBS": "train/a.*, generate/*=sleep:5"}
    backend = RecordingBackend(inner, rec, env=env)
    backend.submit(_req(tmp_path, "cd-train-a.b-0123456789abcdef"))
    backend.submit(_req(tmp_path, "cd-generate-t-0123456789abcdef"))
    backend.submit(_req(tmp_path, "cd-train-z.b-0123456789abcdef"))
    assert [j["node"] for j in rec.jobs()] == ["train/a.b", "generate/t", "train/z.b"]
    assert inner.submitted[0].command[-2:] == ["train/a.b", "fail"]
    assert inner.submitted[1].command[-2:] == ["generate/t", "sleep:5"]
    assert inner.submitted[2].command == ["true"]  # not matched: untouched
    res = subprocess.run(inner.submitted[0].command, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "injected fail" in res.stdout


def test_injection_file_is_read_at_each_submission(tmp_path: Path) -> None:
    f = tmp_path / "inject.txt"
    env = {"COMPRESS_DISTILL_INJECT_JOBS": f"@{f}"}
    assert injections(env) == []  # missing file: nothing injected
    f.write_text("train/*\nevaluate/x=sleep:1\n")
    assert injections(env) == [("train/*", "fail"), ("evaluate/x", "sleep:1")]
    assert injections({}) == []


def test_run_record_keeps_the_first_start_across_attempts(tmp_path: Path) -> None:
    first = RunRecord.open(tmp_path, "r", {"config": "x"}, attempt=1)
    started = first.started_at
    time.sleep(0.01)
    again = RunRecord.open(tmp_path, "r", {"config": "x"}, attempt=2)
    assert again.started_at == started and again.info()["attempt"] == 2


# ---------------------------------------------------------------------------- cancellation

def test_hook_cancels_only_live_recorded_jobs_in_one_call(tmp_path: Path) -> None:
    rec = RunRecord.open(tmp_path, "run", {})
    inner = FakeBackend({"101": JobState.RUNNING, "102": JobState.COMPLETED, "103": JobState.PENDING})
    backend = RecordingBackend(inner, rec, env={})
    for n in ("a", "b", "c"):
        backend.submit(_req(tmp_path, f"cd-train-{n}-0123456789abcdef"))
    assert cancel_recorded_jobs(rec, inner) == ["101", "103"]
    assert inner.cancel_calls == [["101", "103"]]
    assert cancel_recorded_jobs(rec, inner) == []  # the second path (flow or hook) is a no-op
    assert inner.cancel_calls == [["101", "103"]]
    assert rec.cancelled() is not None and rec.cancelled()["job_ids"] == ["101", "103"]


def test_flow_side_cancel_uses_the_watcher_once(tmp_path: Path) -> None:
    rec = RunRecord.open(tmp_path, "run", {})
    inner = FakeBackend()
    watcher = JobWatcher(RecordingBackend(inner, rec, env={}), initial_interval=0.01)
    for n in ("a", "b"):
        watcher.submit(_req(tmp_path, f"cd-train-{n}-0123456789abcdef"))
    assert sorted(cancel_in_process(watcher, rec)) == ["101", "102"]
    assert len(inner.cancel_calls) == 1
    assert cancel_in_process(watcher, rec) == [] and len(inner.cancel_calls) == 1


# ---------------------------------------------------------------------------- retry, artifacts

def _commit(store: ArtifactStore, plan, nid: str, finished_at: float, **files: list[dict]) -> None:  # type: ignore[no-untyped-def]
    node = plan.nodes[nid]
    tmp = store.begin(node.stage, node.name, plan.keys[nid])
    for fname, rows in files.items():
        write_parquet(rows, tmp / fname)
    store.commit(tmp, node.stage, node.name, plan.keys[nid], {
        "node": nid, "name": node.name, "finished_at": finished_at, "metrics": {},
        "job": {"job_id": "4242" if node.job.kind != "cpu" else None, "gpus": node.job.gpus}})


def test_retry_does_not_force_again_what_was_recommitted(tmp_path: Path) -> None:
    plan = build_plan(load_config(CONFIGS / "mini.yaml"))
    store = ArtifactStore(tmp_path)
    a, b, c = "train/mini-teacher.tiny.full.raw", "train/mini-teacher.small.full.mild", "train/mini-teacher.tiny.lora.aggressive"
    _commit(store, plan, a, finished_at=1000.0)   # committed before the run started: force again
    _commit(store, plan, b, finished_at=3000.0)   # re-committed by the run being retried: done
    assert still_forced(plan, store, frozenset({a, b, c}), since=2000.0) == {a, c}
    assert still_forced(plan, store, frozenset({a, b}), since=None) == {a, b}


def test_plan_and_results_artifacts_say_what_matters(tmp_path: Path) -> None:
    plan = build_plan(load_config(CONFIGS / "mini.yaml"))
    store = ArtifactStore(tmp_path)
    cell = "mini-teacher.tiny.lora.aggressive"
    _commit(store, plan, f"train/{cell}", 1.0)
    _commit(store, plan, f"evaluate/{cell}", 2.0, **{"records.parquet": [
        {"id": "1", "correct": True, "completion_tokens": 10}, {"id": "2", "correct": False, "completion_tokens": 30},
        {"id": "3", "correct": True, "completion_tokens": 20}, {"id": "4", "correct": True, "completion_tokens": 20}]})
    ids = list(plan.nodes)
    md = summary.plan_markdown(plan, store, ids, dry_run=True)
    assert "# Plan: mini (dry run)" in md and "| train | 9 | 1 | 8 |" in md
    outcomes = {f"train/{cell}": "cached", f"evaluate/{cell}": "cached", "train/mini-teacher.small.full.mild": "failed"}
    rows = {r["cell"]: r for r in summary.results_rows(plan, store, ids, outcomes)}
    assert len(rows) == 9
    assert rows[cell]["accuracy"] == 0.75 and rows[cell]["avg_tokens"] == 20.0
    assert rows[cell]["train_job"] == "4242" and rows[cell]["artifact"].endswith(f"evaluate/{cell}-{plan.keys[f'evaluate/{cell}']}")
    assert rows["mini-teacher.small.full.mild"]["train"] == "failed"
    text = summary.results_markdown("mini", list(rows.values()), {"train/mini-teacher.small.full.mild": "JobError: x\nlog"},
                                    ["evaluate/mini-teacher.small.full.mild"], "slurm")
    assert "`train/mini-teacher.small.full.mild`: JobError: x" in text and "| 0.750 | 4242 |" in text
    counts = {r["stage"]: r for r in summary.stage_counts(plan, ids, outcomes)}
    assert counts["train"]["cached"] == 1 and counts["train"]["failed"] == 1 and counts["train"]["pending"] == 7


# ---------------------------------------------------------------------------- deployments

def test_deployment_specs() -> None:
    specs = {s["name"]: s for s in deployment_specs(ServeOptions(timezone="Europe/Paris",
                                                                 mini_select={"student": "tiny"}))}
    assert list(specs) == ["full", "mini", "nightly", "retry-failed"]
    full = Path(specs["full"]["parameters"]["params"]["config_path"])
    assert full.is_absolute() and full.name == "paper.yaml"  # a flow run's cwd need not be the serve cwd
    assert specs["nightly"]["cron"] == "0 2 * * *" and specs["nightly"]["timezone"] == "Europe/Paris"
    assert specs["mini"]["parameters"]["params"]["select"] == {"student": "tiny"}
    assert specs["retry-failed"]["parameters"]["params"]["retry_of"] == "last"
    with pytest.raises(ValueError, match="unknown timezone"):
        deployment_specs(ServeOptions(timezone="Mars/Olympus"))


def test_serve_list_prints_the_deployments(monkeypatch: pytest.MonkeyPatch) -> None:
    res = subprocess.run([sys.executable, "-m", "compress_distill.cli", "serve", "--list", "--timezone", "UTC",
                          "--cron", "30 3 * * *"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    deps = {d["deployment"]: d for d in json.loads(res.stdout)}
    assert set(deps) == {"grid/full", "grid/mini", "grid/nightly", "grid/retry-failed"}
    assert deps["grid/nightly"]["cron"] == "30 3 * * *"


def test_prefect_yaml_matches_the_served_deployments() -> None:
    import yaml

    from compress_distill.flows.params import GridParams

    doc = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in doc["deployments"]}
    assert set(deps) == {"full", "mini", "nightly", "retry-failed"}
    for d in deps.values():
        assert d["entrypoint"] == "deployments/grid_flow.py:grid"
        GridParams.model_validate(d["parameters"]["params"])  # the form accepts them
    assert deps["nightly"]["schedules"][0]["cron"] == "0 2 * * *"


# ---------------------------------------------------------------------------- progress view

def test_progress_view_follows_events() -> None:
    view = GridProgress()
    unsubscribe = events.subscribe(view)
    events.subscribe(lambda ev: 1 / 0)  # a broken listener never breaks the run
    try:
        events.emit("plan", config="mini", nodes={"train/a": "train", "train/b": "train", "prepare/p": "prepare"},
                    done=["prepare/p"])
        events.emit("start", "train/a")
        events.emit("job", "train/a", job_id="777", log="/logs/a.log")
        events.emit("job_state", "train/a", job_id="777", state="RUNNING")
        events.emit("end", "prepare/p", outcome="cached")
        console = Console(record=True, width=160)
        console.print(view)
        text = console.export_text()
        assert "777" in text and "RUNNING" in text and "/logs/a.log" in text and "0/2" in text
        events.emit("end", "train/a", outcome="ran")
        events.emit("end", "train/b", outcome="failed")
        console.print(view)
        text = console.export_text()
        assert "2/2" in text and "1 failed" in text and "777" not in text.split("2/2")[-1]
        assert view.counts()["train"] == {"total": 2, "in store": 0, "ran": 1, "failed": 1}
    finally:
        unsubscribe()
        events._listeners.clear()
