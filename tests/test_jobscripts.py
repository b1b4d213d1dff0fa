"""Job scripts of plan nodes (jobs/node.py): each job node gets its per-kind template with
node_main as payload, and the script runs through the local backend as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from compress_distill.backends.base import JobRequest, JobState
from compress_distill.backends.local import LocalBackend
from compress_distill.backends.watch import JobWatcher
from compress_distill.config import load_config
from compress_distill.jobs.node import payload_argv, render_node_script
from compress_distill.owner import OWNER_ENV
from compress_distill.plan import Plan, build_plan
from compress_distill.store import ArtifactStore

from .conftest import CONFIGS


def _script(plan: Plan, node_id: str, tmp: Path) -> tuple[str, list[str]]:
    store = ArtifactStore(tmp / "store")
    payload = payload_argv(plan.config, plan.nodes[node_id], config_path=tmp / "cfg.json", store_root=store.root,
                           out=tmp / "out")
    return render_node_script(plan, store, node_id, payload=payload, workdir=tmp, log_dir=tmp,
                              job_name="j"), payload


@pytest.mark.parametrize("cfg_name", ["paper.yaml", "mini-ci.yaml", "mini-ci-slurm.yaml"])
def test_every_job_node_gets_its_template(cfg_name: str, tmp_path: Path) -> None:
    plan = build_plan(load_config(CONFIGS / cfg_name))
    server = plan.config.cluster.server
    seen = set()
    for nid, node in plan.nodes.items():
        if node.job.kind == "cpu" or (server == "cpu" and node.stage in ("generate", "compress", "judge")):
            continue  # cpu: in-process; cpu-served models resolve to built dirs (the Slurm e2e test)
        text, _ = _script(plan, nid, tmp_path)
        marker = {"generate": "vllm_job", "compress": "vllm_job", "judge": "vllm_job", "evaluate": "CHECKPOINT=",
                  "train": "TRAINER_ARGV=", "build": "TRAINER_ARGV="}[node.stage]
        assert marker in text or "Serves a model" in text, nid
        # the header states the resources the backend puts on sbatch's argv; no requeue flags (the wrapper's)
        assert "#SBATCH --cpus-per-task=" in text and "#SBATCH --output" not in text and "--signal" not in text
        assert f"SERVER={server}" in text or node.stage in ("train", "build")
        assert "compress_distill.node_main" in text and nid in text
        assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0, nid
        seen.add(node.stage)
    assert {"train", "evaluate"} <= seen


def test_axolotl_train_nodes_run_the_train_stage_and_evaluate_the_merged_model(tmp_path: Path) -> None:
    plan = build_plan(load_config(CONFIGS / "paper.yaml"))
    assert plan.config.training.backend == "axolotl"
    cell = next(c for c in plan.cells if c.method == "lora")
    text, payload = _script(plan, f"train/{cell.name}", tmp_path)
    assert "TRAINER_ARGV=" in text and "compress_distill.node_main" in text and f"train/{cell.name}" in text
    text, _ = _script(plan, f"evaluate/{cell.name}", tmp_path)
    assert "--enable-lora" not in text  # the stage merged the adapter: vLLM serves the checkpoint itself


def test_train_script_runs_payload_through_local_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rendered train job, run by LocalBackend: the payload carries the run's owner token (even
    where the request exports it empty, as the runner does for Slurm), and a config value that is
    shell code stays a literal word."""
    monkeypatch.setenv(OWNER_ENV, "1:2:test")
    plan = build_plan(load_config(CONFIGS / "mini-ci.yaml"))
    store = ArtifactStore(tmp_path / "store")
    nid = next(n for n in plan.nodes if n.startswith("train/"))
    probe = tmp_path / "probe.txt"
    payload = [sys.executable, "-c", "import os, sys; open(sys.argv[1], 'w').write("
               f"os.environ.get({OWNER_ENV!r}, '') + '|' + sys.argv[2])", str(probe), f"$(touch {tmp_path}/pwned)"]
    text = render_node_script(plan, store, nid, payload=payload, workdir=tmp_path, log_dir=tmp_path, job_name="j")
    script = tmp_path / "job.sh"
    script.write_text(text)
    w = JobWatcher(LocalBackend(max_workers=1), initial_interval=0.1)
    jid = w.submit(JobRequest(name="t", command=["bash", str(script)], workdir=tmp_path,
                              log_path=tmp_path / "job.log", kind="train", env={OWNER_ENV: ""}))
    assert w.wait([jid], timeout=60)[jid].state is JobState.COMPLETED
    token, word = probe.read_text().split("|")
    assert token == "1:2:test" and word == f"$(touch {tmp_path}/pwned)" and not (tmp_path / "pwned").exists()
    assert "no checkpoint in" in (tmp_path / "job.log").read_text()


def test_stage_override_module_replaces_stages_and_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """COMPRESS_DISTILL_STAGES=<module>: its stage functions win, missing ones stay real, and its
    SERVE_WITH is what serving jobs start; unset, the registry and the config decide."""
    from compress_distill.jobs.node import job_server
    from compress_distill.stages import STAGES_ENV, stage_function

    from .support import SKELETON_ENV, skeleton_stages

    cfg = load_config(CONFIGS / "mini.yaml")  # serve_with: vllm
    teacher = next(iter(cfg.teachers.values()))
    monkeypatch.delenv(STAGES_ENV, raising=False)
    assert stage_function("generate").__module__ == "compress_distill.stages.generate"
    monkeypatch.setenv(STAGES_ENV, SKELETON_ENV[STAGES_ENV])
    assert stage_function("generate") is skeleton_stages.generate
    assert job_server(cfg, teacher.serve) == "stage"
    monkeypatch.delattr(skeleton_stages, "judge")
    assert stage_function("judge").__module__ == "compress_distill.stages.judge"
    monkeypatch.setenv(STAGES_ENV, "no_such_stage_module")
    with pytest.raises(ImportError, match="COMPRESS_DISTILL_STAGES=no_such_stage_module"):
        stage_function("generate")
