"""`compress-distill preflight`: each check against what it guards, and the whole command on the dev cluster.

The dev-cluster test runs the real command on the mini world (Axolotl backend) and then on one config
broken three ways (a missing env, a template without the reasoning field, an unstaged model); each
must show as a FAIL row and the command must exit 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from compress_distill.cluster.envs import LOCAL_DEFAULTS, pinned_version
from compress_distill.cluster.preflight import (
    Row,
    check_time_limits,
    check_weights,
    slurm_minutes,
)
from compress_distill.cluster.weights import config_models
from compress_distill.config import load_config, parse_config

from .conftest import CONFIGS, need_dev_cluster

PAPER = CONFIGS / "paper.yaml"
CLI = [str(Path(sys.executable).parent / "compress-distill")]
HAVE_ENVS = all((LOCAL_DEFAULTS[p] / "bin" / "python").exists() for p in ("axolotl", "vllm"))
_REQUIRED = os.environ.get("COMPRESS_DISTILL_REQUIRE_AXOLOTL") == "1"


def test_slurm_times() -> None:
    assert slurm_minutes("2-00:00:00") == 2880
    assert slurm_minutes("12:00:00") == 720
    assert slurm_minutes("30") == 30
    assert slurm_minutes("05:30") == 5.5
    assert slurm_minutes("1-12") == 2160
    assert slurm_minutes("UNLIMITED") is None
    with pytest.raises(ValueError):
        slurm_minutes("soon")


def test_time_limits_against_the_partition() -> None:
    cfg = load_config(PAPER)
    rows = check_time_limits(cfg, sinfo=lambda: "gpu* 1-00:00:00\ndebug 30:00\n")
    by_kind = {r.subject: r.status for r in rows}
    # vllm jobs ask 2 days; the partition allows one
    assert by_kind == {"vllm": "FAIL", "train": "PASS", "eval": "PASS", "cpu": "PASS"}
    assert all(r.status == "PASS" for r in check_time_limits(cfg, sinfo=lambda: "gpu* UNLIMITED\n"))
    [missing] = check_time_limits(cfg, sinfo=lambda: "other* 1:00:00\n")
    assert missing.status == "FAIL" and "not in sinfo" in missing.detail


def test_weights_must_be_staged(tmp_path: Path) -> None:
    data = yaml.safe_load(PAPER.read_text())
    data["cluster"]["weights"]["hf_home"] = str(tmp_path)
    cfg = parse_config(data)
    refs = [m.ref for m in config_models(cfg)]
    assert "kernels-community/vllm-flash-attn3" in refs  # gpt-oss's attention kernel is a hub repo too
    assert all(r.status == "FAIL" for r in check_weights(cfg))
    snap = tmp_path / "hub" / "models--openai--gpt-oss-20b" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    status = {r.subject: r.status for r in check_weights(cfg)}
    assert status["openai/gpt-oss-20b"] == "PASS" and status["meta-llama/Llama-3.1-8B"] == "FAIL"


def test_pins_are_read_from_the_env_files() -> None:
    assert pinned_version("vllm") == "0.32.0"
    assert pinned_version("axolotl") == "0.19.0"


def _preflight(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "preflight", str(config), *extra], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "COLUMNS": "200"})


def _rows(stdout: str) -> list[Row]:
    rows = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 4 and cells[2] in ("PASS", "FAIL", "SKIP"):
            rows.append(Row(*cells))
    return rows


def _mini_axolotl(tmp_path: Path, **edits: Any) -> Path:
    data = yaml.safe_load((CONFIGS / "mini-ci-slurm.yaml").read_text())
    data["training"]["backend"] = "axolotl"
    for dotted, value in edits.items():
        node = data
        *path, last = dotted.split(".")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    path = tmp_path / f"mini-{len(edits)}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.slurm
@pytest.mark.axolotl
@pytest.mark.slow
@pytest.mark.skipif(not HAVE_ENVS and not _REQUIRED, reason="needs .venv-axolotl and .venv-vllm")
def test_preflight_on_the_dev_cluster_passes_the_mini_world_and_catches_a_broken_config(tmp_path: Path) -> None:
    need_dev_cluster()
    good = _preflight(_mini_axolotl(tmp_path), "--workdir", str(tmp_path / "good"))
    rows = _rows(good.stdout)
    assert good.returncode == 0, good.stdout + good.stderr
    status = {(r.check, r.subject): r.status for r in rows}
    for key in [("env", "axolotl"), ("tokenizer", "tiny"), ("labels", "tiny"), ("vllm-args", "all serving jobs"),
                ("sbatch", "all jobs"), ("time-limit", "train")]:
        assert status.get(key) == "PASS", (key, good.stdout)

    # Broken three ways. `chatml` is Axolotl's built-in ChatML template: it drops reasoning_content.
    broken = _mini_axolotl(tmp_path, **{
        "cluster.envs.axolotl": str(tmp_path / "no-such-env"),
        "students.tiny.chat_template": "chatml",
        "students.tiny.model": "acme/never-staged-7b",
        "cluster.weights.hf_home": str(tmp_path / "hf"),
    })
    bad = _preflight(broken, "--skip", "sbatch")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    status = {(r.check, r.subject): (r.status, r.detail) for r in _rows(bad.stdout)}
    assert status[("env", "axolotl")][0] == "FAIL" and "no-such-env" in status[("env", "axolotl")][1]
    assert status[("weights", "acme/never-staged-7b")][0] == "FAIL"
    assert "blocker(s)" in bad.stdout


@pytest.mark.axolotl
@pytest.mark.slow
@pytest.mark.skipif(not HAVE_ENVS and not _REQUIRED, reason="needs .venv-axolotl and .venv-vllm")
def test_a_template_without_the_reasoning_field_fails_the_tokenizer_and_label_checks(tmp_path: Path) -> None:
    cfg = _mini_axolotl(tmp_path, **{"students.tiny.chat_template": "chatml"})
    proc = _preflight(cfg, "--skip", "sbatch", "--skip", "time-limit", "--skip", "vllm-args", "--skip", "gpu")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    status = {(r.check, r.subject): (r.status, r.detail) for r in _rows(proc.stdout)}
    assert status[("tokenizer", "tiny")][0] == "FAIL"
    assert "does not render the reasoning key 'reasoning_content'" in status[("tokenizer", "tiny")][1]
    assert status[("labels", "tiny")][0] == "FAIL"
