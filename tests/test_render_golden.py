"""`compress-distill render` writes, per node, the very script the runner submits for that node and key.

The runner side is the real one: `runner.run_node` with a job backend that records what it is
given (and, standing in for the job, drops the result file into the attempt dir so the node
commits). Render's file must equal, byte for byte, the script the runner wrote and submitted
as `bash SCRIPT`, and its `#SBATCH` header must ask for the resources of the runner's request.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pytest

from compress_distill.backends.base import JobRequest, JobState, JobStatus
from compress_distill.config import load_config
from compress_distill.jobs.flags import job_name
from compress_distill.jobs.study import render_study, script_relpath
from compress_distill.plan import Plan, build_plan
from compress_distill.runner import RESULT_FILE, RunContext, run_node, snapshot_config
from compress_distill.store import ArtifactStore

from .conftest import CONFIGS


class RecordingBackend:
    """Takes every request, says COMPLETED, and writes the stage's result where the job would."""

    name = "recording"

    def __init__(self, plan: Plan, store: ArtifactStore) -> None:
        self.plan, self.store = plan, store
        self.requests: dict[str, JobRequest] = {}

    def submit(self, req: JobRequest) -> str:
        [nid] = [n for n in self.plan.nodes if req.name == f"cd-{self.plan.nodes[n].stage}-{self.plan.nodes[n].name}"
                 f"-{self.plan.keys[n]}"]
        node = self.plan.nodes[nid]
        out = self.store.attempt_dir(node.stage, node.name, self.plan.keys[nid])
        (out / RESULT_FILE).write_text(json.dumps({"rows": 0, "metrics": {}, "placeholder": True}))
        self.requests[nid] = req
        return str(len(self.requests))

    def poll_many(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        return {j: JobStatus(j, JobState.COMPLETED, exit_code=0) for j in job_ids}

    def cancel(self, job_ids: Iterable[str]) -> None:
        pass


def _header(text: str) -> dict[str, str]:
    return dict(line[len("#SBATCH --"):].split("=", 1) for line in text.splitlines() if line.startswith("#SBATCH --"))


CASES = [
    # paper.yaml: the Slurm GPU profile (vLLM serving, Axolotl training through node_main, vLLM eval)
    ("paper.yaml", "generate/qwen3.5-397b"),
    ("paper.yaml", "train/qwen3.5-397b.qwen3.5-9b.lora.raw"),
    ("paper.yaml", "evaluate/qwen3.5-397b.qwen3.5-9b.lora.raw"),
    # mini-ci-slurm.yaml: the dev cluster's `device: cpu` profile (the CPU server, a mini-world build)
    ("mini-ci-slurm.yaml", "build/mini-quick.teacher"),
    ("mini-ci-slurm.yaml", "generate/mini-teacher"),
    ("mini-ci-slurm.yaml", "evaluate/mini-teacher.tiny.full.raw"),
]


@pytest.fixture(scope="module")
def plans() -> dict[str, Plan]:
    return {name: build_plan(load_config(CONFIGS / name)) for name in {c for c, _ in CASES}}


@pytest.mark.parametrize("cfg_name, node_id", CASES)
def test_render_writes_what_the_runner_submits(plans: dict[str, Plan], cfg_name: str, node_id: str,
                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # both take the working directory as the job's workdir
    plan = plans[cfg_name]
    assert node_id in plan.nodes, sorted(plan.nodes)[:20]
    store = ArtifactStore(tmp_path / "store")
    render_study(plan.config, tmp_path / "render", store_root=store.root)
    rendered = (tmp_path / "render" / script_relpath(plan, node_id)).read_bytes()

    backend = RecordingBackend(plan, store)
    ctx = RunContext(plan=plan, store=store, config_path=snapshot_config(plan, store), backend=backend, poll_s=0.01)
    outcome = run_node(ctx, node_id)
    assert not outcome.cached and outcome.job_id == "1"
    req = backend.requests[node_id]
    assert req.command[0] == "bash"
    submitted = Path(req.command[1]).read_bytes()
    assert rendered == submitted  # the golden property: render's script is the runner's script

    text = rendered.decode()
    assert f"--node {node_id} " in text and "compress_distill.node_main" in text
    header = _header(text)
    assert header["job-name"] == job_name(req.name)
    assert (header["cpus-per-task"], header["mem"], header["time"]) == (str(req.cpus), req.mem, req.time_limit)
    gpus = header.get("gpus-per-node") or header.get("gres", "")
    assert (gpus.rsplit(":", 1)[-1] if gpus else "0") == str(req.gpus)
    if plan.config.cluster.partition:
        assert header["partition"] == plan.config.cluster.partition


def test_render_writes_one_script_per_job_node_and_nothing_else(plans: dict[str, Plan], tmp_path: Path) -> None:
    plan = plans["mini-ci-slurm.yaml"]
    files = render_study(plan.config, tmp_path / "r", store_root=tmp_path / "store")
    scripts = sorted(str(f.relative_to(tmp_path / "r")) for f in files if f.suffix == ".sbatch")
    jobs = sorted(script_relpath(plan, n) for n, node in plan.nodes.items() if node.job.kind != "cpu")
    assert scripts == jobs and len(set(jobs)) == len(jobs)
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert sorted(j["script"] for j in manifest["jobs"]) == jobs
