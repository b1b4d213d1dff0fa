"""Weights on a cluster: which repos a config needs, what staged means, and the offline job environment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from compress_distill.cluster.weights import config_models, is_hub_id, job_env, stage, staged
from compress_distill.config import load_config, parse_config

from .conftest import CONFIGS


def test_paper_models_and_job_env() -> None:
    cfg = load_config(CONFIGS / "paper.yaml")
    refs = {m.ref for m in config_models(cfg)}
    assert {"Qwen/Qwen3.5-397B-A17B-FP8", "openai/gpt-oss-120b", "meta-llama/Llama-3.3-70B-Instruct",
            "mistralai/Ministral-3-14B-Instruct-2512", "meta-llama/Llama-3.1-8B", "openai/gpt-oss-20b"} <= refs
    # every job: the shared cache, the Hub offline, and no token
    assert job_env(cfg) == {"HF_HOME": "/shared/hf", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_hub_ids_and_staged_snapshots(tmp_path: Path) -> None:
    assert is_hub_id("org/name") and not is_hub_id("mini:teacher") and not is_hub_id("/abs/dir")
    assert not is_hub_id(str(tmp_path))
    assert staged(tmp_path, "org/name") is None
    snap = tmp_path / "hub" / "models--org--name" / "snapshots" / "rev1"
    snap.mkdir(parents=True)
    assert staged(tmp_path, "org/name") is None  # an empty snapshot is not a staged model
    (snap / "config.json").write_text("{}")
    assert staged(tmp_path, "org/name") == snap


def test_stage_needs_a_cache_and_reports_what_it_would_do(tmp_path: Path) -> None:
    data = yaml.safe_load((CONFIGS / "paper.yaml").read_text())
    data["cluster"]["weights"]["hf_home"] = None
    with pytest.raises(ValueError, match="hf_home"):
        stage(parse_config(data))
    data["cluster"]["weights"]["hf_home"] = str(tmp_path)
    rows = dict(stage(parse_config(data), dry_run=True))
    assert rows["openai/gpt-oss-20b"] == "would download"
