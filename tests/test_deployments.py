"""Deployments on a real Prefect server: registration, limits, the nightly cron, grid/mini and
grid/full triggered through the REST API, and a failed cell retried through grid/retry-failed
and through the UI's retry (same flow run) with job submissions counted."""

from __future__ import annotations

import datetime as dt
import json
import time
import zoneinfo
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import CONFIGS
from .prefect_stack import (
    SHARED_SELECT,
    SHARED_TZ,
    Stack,
    job_nodes,
    run_jobs,
    selected_nodes,
    shared_stack,
    task_runs,
)

pytestmark = pytest.mark.slow

TZ = SHARED_TZ
FAILED_CELL = "mini-teacher.tiny.lora.aggressive"
SELECT = SHARED_SELECT  # what --mini-select gives grid/mini in the shared stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[tuple[Stack, Path, Path]]:
    shared = shared_stack(tmp_path_factory, request.config)
    shared.reset()
    yield shared.stack, shared.store, shared.inject
    shared.reset()


def test_deployments_are_registered_and_no_concurrency_limits(stack: tuple[Stack, Path, Path]) -> None:
    s, store, _ = stack
    deps = s.deployments()
    assert {"grid/full", "grid/mini", "grid/nightly", "grid/retry-failed"} <= set(deps)
    assert deps["grid/mini"]["parameters"]["params"]["select"] == {"student": "tiny", "method": "lora"}
    assert deps["grid/mini"]["parameters"]["params"]["store_root"] == str(store)
    assert deps["grid/retry-failed"]["parameters"]["params"]["retry_of"] == "last"
    # GPUs are admitted by the flow's scheduler, one run per grid is a store lease: no Prefect limits
    assert s.limits() == {}


def test_nightly_cron_really_gets_scheduled_runs(stack: tuple[Stack, Path, Path]) -> None:
    """With SQLAlchemy 2.1 the scheduler silently creates nothing: ask the API for real runs."""
    s, _, _ = stack
    dep = s.deployments()["grid/nightly"]
    assert [sch["schedule"]["cron"] for sch in dep["schedules"]] == ["0 2 * * *"]
    assert dep["schedules"][0]["schedule"]["timezone"] == TZ
    runs: list[dict] = []
    for _ in range(60):  # the scheduler loop runs every 5 s in this stack
        runs = s.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep["id"]]},
                                                          "state": {"type": {"any_": ["SCHEDULED"]}}}})
        if runs:
            break
        time.sleep(2)
    assert runs, "the nightly cron deployment produced no scheduled flow runs"
    tz = zoneinfo.ZoneInfo(TZ)
    for run in runs:
        start = dt.datetime.fromisoformat(run["expected_start_time"].replace("Z", "+00:00")).astimezone(tz)
        assert (start.hour, start.minute) == (2, 0), start
        assert start > dt.datetime.now(tz)


def test_grid_mini_triggered_through_the_api_completes_one_run_at_a_time(stack: tuple[Stack, Path, Path]) -> None:
    """Two runs of grid/mini triggered together: one runs every node, the other waits for the grid's
    lease, then finds everything in the store: no task run, no job (a no-op re-run)."""
    s, store, _ = stack
    ids = [s.trigger("grid/mini"), s.trigger("grid/mini")]
    runs = {i: s.wait_final(i) for i in ids}
    for run in runs.values():
        assert run["state_type"] == "COMPLETED", (run["state"], s.tail("serve.log"))
    jobs = {i: sorted(j["node"] for j in run_jobs(store, i)) for i in ids}
    first, second = sorted(ids, key=lambda i: -len(jobs[i]))
    # tiny x lora = 2 cells: one job per job node (model builds, generate, compress, 2 train, 2 evaluate)
    assert jobs[first] == sorted(job_nodes(CONFIGS / "mini.yaml", SELECT))
    assert jobs[second] == [] and task_runs(s, second) == [], "the second run did not wait for the first"
    assert len(task_runs(s, first)) == len(selected_nodes(CONFIGS / "mini.yaml", SELECT))
    arts = s.artifacts(first)
    assert {"mini-plan", "mini-results", "mini-results-md", "mini-progress", "mini-stage-train"} <= set(arts)
    results = arts["mini-results"]["data"]
    rows = results if isinstance(results, list) else json.loads(results)
    assert {r["cell"] for r in rows} == {"mini-teacher.tiny.lora.raw", FAILED_CELL}
    assert all(r["train_job"] and r["eval_job"] and r["artifact"] for r in rows)
    assert "mini-results" in s.artifacts(second)  # a no-op run still shows the results table


def test_grid_full_dry_run_through_the_api_submits_nothing(stack: tuple[Stack, Path, Path]) -> None:
    s, store, _ = stack
    run_id = s.trigger("grid/full", {"dry_run": True})
    run = s.wait_final(run_id, timeout=900)
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run_jobs(store, run_id) == []
    assert "paper-plan" in s.artifacts(run_id)


def test_failed_cell_is_reported_and_retries_rerun_only_it(stack: tuple[Stack, Path, Path], tmp_path: Path) -> None:
    s, _, fail_file = stack
    store = tmp_path / "store"  # fresh: every node of the two cells must run once
    params = {"store_root": str(store)}
    fail_file.write_text(f"train/{FAILED_CELL}\n")
    failed_id = s.trigger("grid/mini", params)
    failed = s.wait_final(failed_id)
    assert failed["state_type"] == "FAILED"
    assert f"train/{FAILED_CELL}" in failed["state"]["message"]
    assert "1 node(s) failed, 1 blocked" in failed["state"]["message"]
    first = [j["node"] for j in run_jobs(store, failed_id)]
    assert sorted(first) == sorted(job_nodes(CONFIGS / "mini.yaml", SELECT) - {f"evaluate/{FAILED_CELL}"})
    assert s.artifacts(failed_id)["mini-results"]  # published even when the run fails

    fail_file.write_text("")  # the cause is fixed
    retry_id = s.trigger("grid/retry-failed")  # retry_of="last": the run above
    retry = s.wait_final(retry_id)
    assert retry["state_type"] == "COMPLETED", retry["state"]
    retried = run_jobs(store, retry_id)
    assert sorted(j["node"] for j in retried) == [f"evaluate/{FAILED_CELL}", f"train/{FAILED_CELL}"]

    # The UI's "Retry" button on the failed run (the request the UI sends) reruns the same flow run:
    # its failed cell is done now, so the rerun completes without a single job.
    before = len(run_jobs(store, failed_id))
    accepted = s.post(f"/flow_runs/{failed_id}/set_state", {"state": {
        "type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"}, "force": False})
    assert accepted["status"] == "ACCEPT", accepted
    rerun = s.wait_state(failed_id, {"COMPLETED", "FAILED", "CRASHED"}, timeout=600)
    assert rerun["state_type"] == "COMPLETED", rerun["state"]
    assert len(run_jobs(store, failed_id)) == before
