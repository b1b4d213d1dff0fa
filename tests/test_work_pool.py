"""The login-node alternative to `serve`: deployments/prefect.yaml deployed to a process work pool,
executed by `prefect worker` (the commands of deployments/README.md)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .prefect_stack import REPO, VENV_BIN, job_nodes, make_stack, run_jobs

pytestmark = pytest.mark.slow


def test_prefect_yaml_deploys_to_a_process_pool_and_a_worker_runs_grid_mini(tmp_path: Path) -> None:
    s = make_stack(tmp_path / "stack")
    env = {**s.env, "COMPRESS_DISTILL_HOME": str(REPO)}
    prefect = str(VENV_BIN / "prefect")
    try:
        s.start_server()
        subprocess.run([prefect, "work-pool", "create", "compress-distill", "--type", "process"], env=env,
                       cwd=REPO, check=True, capture_output=True, timeout=120)
        dep = subprocess.run([prefect, "--no-prompt", "deploy", "--all", "--prefect-file",
                              "deployments/prefect.yaml"], env=env, cwd=REPO, capture_output=True, text=True,
                             timeout=300)
        assert dep.returncode == 0, dep.stdout[-3000:] + dep.stderr[-3000:]
        deps = s.deployments()
        assert {"grid/full", "grid/mini", "grid/nightly", "grid/retry-failed"} <= set(deps)
        assert all(d["work_pool_name"] == "compress-distill" for d in deps.values())

        log = open(s.home / "worker.log", "ab")  # noqa: SIM115 - closed with the process
        worker = subprocess.Popen([prefect, "worker", "start", "--pool", "compress-distill"], env=env,
                                  cwd=s.home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        s.procs.append(worker)
        store = tmp_path / "store"
        run_id = s.trigger("grid/mini", {"select": {"student": "tiny", "method": "lora"},
                                         "store_root": str(store)})
        run = s.wait_final(run_id, timeout=900)
        assert run["state_type"] == "COMPLETED", (run["state"], s.tail("worker.log"))
        assert sorted(j["node"] for j in run_jobs(store, run_id)) == sorted(
            job_nodes(REPO / "configs" / "mini.yaml", {"student": "tiny", "method": "lora"}))
        assert "mini-results" in s.artifacts(run_id)
    finally:
        s.stop()
