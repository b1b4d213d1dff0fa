"""The Axolotl training backend: the CPU overlay (pure), and one mini cell per method end to end on CPU.

The end-to-end test runs the real stages of configs/mini-ci.yaml with `training.backend: axolotl`
and a few steps, for the raw-data LoRA and full cells: a training set written by derive's writer
(synthetic chats), the train stage (Axolotl in `.venv-axolotl`, CPU overlay), and the evaluate stage
serving the published model on the prepared eval suite. Needs `.venv-axolotl` (scripts/setup-axolotl.sh); CI sets COMPRESS_DISTILL_REQUIRE_AXOLOTL=1,
where a missing env fails instead of skipping.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from compress_distill.axolotl_config import render_axolotl_config, validate_keys
from compress_distill.cluster.envs import LOCAL_DEFAULTS
from compress_distill.config import ConfigError, parse_config
from compress_distill.plan import build_plan
from compress_distill.training import axolotl_backend as ab
from compress_distill.training.loss_log import SCHEMA

from .conftest import CONFIGS

AXOLOTL_PY = LOCAL_DEFAULTS["axolotl"] / "bin" / "python"
_REQUIRED = os.environ.get("COMPRESS_DISTILL_REQUIRE_AXOLOTL") == "1"
needs_axolotl = pytest.mark.skipif(not AXOLOTL_PY.exists() and not _REQUIRED, reason=(
    f"{AXOLOTL_PY} missing: build it with `bash scripts/setup-axolotl.sh` (~7 min, 4.3 GB)"))
STEPS = 4


def _mini_ci(**training: Any) -> dict[str, Any]:
    data = yaml.safe_load((CONFIGS / "mini-ci.yaml").read_text())
    data["training"].update(backend="axolotl", **training)
    return data


def _cell(data: dict[str, Any], method: str) -> tuple[Any, Any]:
    """(config, the train node of its first `method` cell)."""
    cfg = parse_config(data, "<test>")
    plan = build_plan(cfg)
    return cfg, next(plan.nodes[f"train/{c.name}"] for c in plan.cells if c.method == method)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_cpu_overlay_only_without_gpus(method: str, tmp_path: Path) -> None:
    data = _mini_ci(max_steps=STEPS)
    data["training"].update(bf16=True, tf32=True, sample_packing=True,
                            plugins=["axolotl.integrations.liger.LigerPlugin"])
    data["students"]["tiny"]["attn_implementation"] = None  # the family's: flash_attention_2
    cfg, cell = _cell(data, method)
    kw: dict[str, Any] = {"dataset": tmp_path / "train.jsonl", "output_dir": tmp_path / "out", "base_model": "m"}
    gpu = ab.cell_config(cfg, cell, gpus=1, **kw)
    assert gpu == render_axolotl_config(cell, dataset_path=kw["dataset"], output_dir=kw["output_dir"],
                                        base_model="m")  # on GPUs: the cluster's config, untouched
    cpu = ab.cell_config(cfg, cell, gpus=0, **kw)
    validate_keys(cpu)
    assert gpu["bf16"] and gpu["attn_implementation"] == "flash_attention_2" and gpu["plugins"]
    assert (cpu["bf16"], cpu["tf32"], cpu["sample_packing"], cpu["attn_implementation"]) == (False, False, False,
                                                                                            "sdpa")
    assert not {"plugins", "liger_rope", "fsdp_config", "saves_per_epoch"} & set(cpu)
    assert cpu["logging_steps"] == 1 and cpu["save_strategy"] == "steps" and cpu["save_steps"] >= 10**9
    # the cell's own hyperparameters survive the overlay
    for key in ("learning_rate", "micro_batch_size", "num_epochs", "max_steps", "sequence_len", "datasets",
                "output_dir", "base_model", "lora_r"):
        assert cpu.get(key) == gpu.get(key), key
    assert (cpu.get("lora_mlp_kernel") is False) == (method == "lora")
    data["training"]["save_steps"] = 2
    cfg2, cell2 = _cell(data, method)
    assert ab.cell_config(cfg2, cell2, gpus=0, **kw)["save_steps"] == 2


def test_loss_rows_from_trainer_state() -> None:
    history = [{"epoch": 0.5, "learning_rate": 0.01, "loss": 6.0, "step": 1, "tokens/total": 2048},
               {"epoch": 1.0, "learning_rate": 0.005, "loss": 5.5, "step": 2, "tokens/total": 4096},
               {"epoch": 1.0, "step": 2, "train_runtime": 3.0, "train_loss": 5.75}]
    rows = ab.loss_rows(history, {1: 1.5, 2: 3.0})
    assert [(r["step"], r["loss"], r["tokens_seen"], r["elapsed_s"]) for r in rows] == [(1, 6.0, 2048, 1.5),
                                                                                         (2, 5.5, 4096, 3.0)]
    assert set(rows[0]) == set(SCHEMA.names)
    assert math.isnan(ab.loss_rows(history[:1], {})[0]["elapsed_s"])
    resumed = [*history[:2], {"epoch": 1.5, "learning_rate": 0.001, "loss": 5.0, "step": 3, "tokens/total": 2048}]
    assert [r["tokens_seen"] for r in ab.loss_rows(resumed, {})] == [2048, 4096, 6144]  # counter restarts


def test_published_config_is_servable() -> None:
    saved = {"architectures": ["FSDPGptOssForCausalLM"], "use_cache": False, "model_type": "gpt_oss"}
    assert ab.servable_config(saved) == {"architectures": ["GptOssForCausalLM"], "use_cache": True,
                                         "model_type": "gpt_oss"}
    plain = {"architectures": ["Qwen3ForCausalLM"], "use_cache": True}
    assert ab.servable_config(plain) == plain


def test_env_comes_from_the_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _mini_ci()
    monkeypatch.setitem(LOCAL_DEFAULTS, "axolotl", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="setup-axolotl.sh"):
        ab.axolotl_env(parse_config(data))
    data["cluster"]["envs"] = {"axolotl": str(tmp_path / "named")}
    with pytest.raises(FileNotFoundError, match="cluster.envs.axolotl"):
        ab.axolotl_env(parse_config(data))
    # a GPU Slurm profile must name it: the config is refused before any job runs
    data["cluster"].update(backend="slurm", gpus_per_node=8, envs={"vllm": "/v"})
    with pytest.raises(ConfigError, match="cluster.envs.axolotl"):
        parse_config(data)


def test_gpu_profile_never_falls_back_to_cpu(tmp_path: Path) -> None:
    """A `device: gpu` job whose Axolotl env sees no GPU fails, naming the count; only `device: cpu` trains on CPU."""
    data = _mini_ci()
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").symlink_to(sys.executable)  # a torch that sees no GPU here
    data["cluster"].update(envs={"axolotl": str(env)}, device="gpu")
    with pytest.raises(RuntimeError, match="asked for 2 GPU"):
        ab.train_gpus(parse_config(data), env, 2)
    data["cluster"]["device"] = "cpu"
    assert ab.train_gpus(parse_config(data), env, 2) == 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """The LoRA and full raw cells trained by the train stage, then evaluated by the evaluate stage."""
    from compress_distill.stages import StageContext
    from compress_distill.stages.evaluate import run as evaluate
    from compress_distill.stages.prepare import run as prepare
    from compress_distill.stages.train import run as train
    from compress_distill.traces.trainset import write_split
    from compress_distill.training.tiny_models import synthetic_chats

    root = tmp_path_factory.mktemp("axolotl-cells")
    plan = build_plan(parse_config(_mini_ci(max_steps=STEPS), "<test>"))
    derive = root / "derive"
    write_split(synthetic_chats(96, seed=1), derive, "train")  # derive's writer: train.parquet + train.jsonl

    def ctx(node_id: str, inputs: dict[str, Path]) -> StageContext:
        out, work = root / node_id / "out", root / node_id / "work"
        out.mkdir(parents=True)
        work.mkdir(parents=True)
        return StageContext(plan.config, plan.nodes[node_id], inputs, out, work)

    from compress_distill.miniworld.build import build_models
    from compress_distill.serving import mini_ref, mini_root

    # the DAG's build node does this; calling the stages directly, build the students here (seconds)
    students = {mini_ref(plan.config.students[c.student].model) for c in plan.cells}
    for name, quick in students:
        build_models([name.removeprefix("mini:")], quick=quick, root=mini_root(quick))
    prep = ctx("prepare/eval-suite", {})
    prepare(prep)
    cells: dict[str, dict[str, Path]] = {}
    for method in ("lora", "full"):
        cell = next(c for c in plan.cells if c.method == method and c.data == "raw")
        tr = ctx(f"train/{cell.name}", {d: derive for d in plan.nodes[f"train/{cell.name}"].deps})
        result = train(tr)
        assert result.rows["loss.parquet"] == STEPS
        ev = ctx(f"evaluate/{cell.name}", {f"train/{cell.name}": tr.out, "prepare/eval-suite": prep.out})
        metrics = evaluate(ev).metrics
        (ev.out / "stage-metrics.json").write_text(json.dumps(metrics))
        cells[method] = {"train": tr.out, "work": tr.work, "evaluate": ev.out}
    return cells


@pytest.mark.slow
@pytest.mark.axolotl
@needs_axolotl
@pytest.mark.parametrize("method", ["lora", "full"])
def test_axolotl_cell_trains_and_evaluates(trained: dict[str, dict[str, Path]], method: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compress_distill.training.trl_backend import TrainResult

    train = trained[method]["train"]
    result = json.loads((train / "train_result.json").read_text())
    assert set(result) == {f.name for f in fields(TrainResult)}
    assert result["steps"] == STEPS and result["examples"] > 0 and result["trainable_tokens"] > 0
    assert 0 < result["params_trainable"] <= result["params_total"]
    assert (result["params_trainable"] < result["params_total"]) == (method == "lora")
    assert (trained[method]["work"] / "axolotl.log").is_file()
    assert not (trained[method]["work"] / "axolotl").exists()  # checkpoints removed once published

    loss = pq.read_table(train / "loss.parquet")
    assert loss.schema.names == SCHEMA.names
    rows = loss.to_pylist()
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 and math.isfinite(r["elapsed_s"]) for r in rows)
    assert [r["elapsed_s"] for r in rows] == sorted(r["elapsed_s"] for r in rows)

    model_dir = train / "model"
    assert not list(model_dir.glob("adapter_*"))  # LoRA merged: evaluate serves a plain HF dir
    tok = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.use_cache
    enc: Any = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    assert model.generate(**enc, max_new_tokens=4, do_sample=False).shape[1] > enc["input_ids"].shape[1]

    ev = json.loads((trained[method]["evaluate"] / "stage-metrics.json").read_text())
    assert ev["n"] > 0 and 0.0 <= ev["accuracy"] <= 1.0 and ev["failed_requests"] == 0
    assert pq.read_metadata(trained[method]["evaluate"] / "records.parquet").num_rows == ev["n"]


@pytest.mark.slow
@pytest.mark.axolotl
@needs_axolotl
def test_axolotl_backend_through_the_dag(tmp_path: Path) -> None:
    """`training.backend: axolotl` in a study config: the runner's train jobs run Axolotl (CPU overlay)
    for both methods, and their evaluations serve the published models."""
    import subprocess
    import sys

    from .conftest import REPO

    cfg = tmp_path / "mini-ci-axolotl.yaml"
    # The CI teacher is barely trained: its traces are long garbage, which Axolotl drops (TRL truncates)
    # past sequence_len, so give them room.
    cfg.write_text(yaml.safe_dump(_mini_ci(max_steps=STEPS, sequence_len=2048)))
    store = tmp_path / "store"
    res = subprocess.run([sys.executable, "-m", "compress_distill.cli", "run", str(cfg), "--store", str(store),
                          "--select", "data=raw", "--json"], capture_output=True, text=True, cwd=REPO, timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    cells = {n.split("/", 1)[1] for n in summary["ran"] if n.startswith("train/")}
    assert {c.split(".")[2] for c in cells} == {"lora", "full"} and not summary["failed"]
    for cell in cells:
        [train] = store.glob(f"train/{cell}-*")
        assert pq.read_metadata(train / "loss.parquet").num_rows == STEPS
        assert json.loads((train / "train_result.json").read_text())["steps"] == STEPS
        assert f"evaluate/{cell}" in summary["ran"]
