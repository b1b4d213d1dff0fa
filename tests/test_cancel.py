"""Cancelling a served grid run from the UI/API cancels all of its live Slurm jobs in one call."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import need_dev_cluster
from .prefect_stack import Shared, run_jobs, shared_stack
from .test_retry_failed import slurm_mini

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Shared]:
    need_dev_cluster()
    shared = shared_stack(tmp_path_factory, request.config)
    shared.reset()
    # train and compress jobs sleep instead of working, so two jobs are live when we cancel
    shared.inject.write_text("train/*=sleep:900\ncompress/*=sleep:900\n")
    yield shared
    shared.reset()


def _squeue_states(ids: list[str]) -> dict[str, str]:
    out = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={','.join(ids)}", "--format=%i|%T"],
                         capture_output=True, text=True, timeout=30).stdout
    return dict(line.split("|", 1) for line in out.split() if "|" in line)


def test_cancel_flow_run_cancels_its_live_jobs_at_once(stack: Shared, tmp_path: Path) -> None:
    s = stack.stack
    cfg = slurm_mini(tmp_path / "mini-slurm.yaml")
    store = tmp_path / "store"
    run_id = s.trigger("grid/mini", {"config_path": str(cfg), "store_root": str(store),
                                     "select": {"student": "tiny", "method": "lora"}})
    live: dict[str, str] = {}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # wait until the compress and a train job both run
        jobs = {j["node"].split("/")[0]: j["job_id"] for j in run_jobs(store, run_id)}
        if {"compress", "train"} <= set(jobs):
            states = _squeue_states(list(jobs.values()))
            live = {stage: jobs[stage] for stage in ("compress", "train")}
            if all(states.get(i) == "RUNNING" for i in live.values()):
                break
        assert s.flow_run(run_id)["state_type"] in ("SCHEDULED", "PENDING", "RUNNING"), s.tail("serve.log")
        time.sleep(2)
    else:
        pytest.fail(f"the two sleeping jobs never ran together: {run_jobs(store, run_id)}")

    # what the UI's Cancel button sends
    s.post(f"/flow_runs/{run_id}/set_state", {"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True})
    run = s.wait_state(run_id, {"CANCELLED", "FAILED", "CRASHED", "COMPLETED"}, timeout=300)
    assert run["state_type"] == "CANCELLED", (run["state"], s.tail("serve.log"))

    ids = sorted(live.values())
    record = json.loads((store / ".runs" / run_id / "cancelled.json").read_text())
    assert sorted(record["job_ids"]) == ids  # both live jobs, in the one cancel call
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = _squeue_states(ids)
        if all(states.get(i) == "CANCELLED" for i in ids):
            break
        time.sleep(2)
    assert all(states.get(i) == "CANCELLED" for i in ids), states
