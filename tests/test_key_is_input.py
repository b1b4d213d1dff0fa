"""The key is the input: a trainer runs with exactly the values its train node's key hashed.

The plan resolves a cell's effective hyperparameters once (a student's method overrides, the FSDP
rule) into the train node's identity, which the manifest records. Here a method override changes,
and for both backends the trainer's arguments are taken from the train stage as it runs in a job
(the plan rebuilt from the config snapshot, as node_main does; the trainer stubbed where it would
start): Axolotl's YAML (the file handed to `axolotl train`) and TRL's SFTConfig/LoRA arguments
must equal the identity, and the key must move with the override.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from compress_distill.axolotl_config import render_axolotl_config
from compress_distill.config import StudyConfig, parse_config
from compress_distill.plan import Plan, TrainParams, build_plan
from compress_distill.runner import snapshot_config
from compress_distill.stages import StageContext
from compress_distill.store import ArtifactStore

from .conftest import CONFIGS, REPO

STUDENT = "tiny"
LORA_CELL = "mini-teacher.tiny.lora.raw"
FULL_CELL = "mini-teacher.tiny.full.raw"


class TrainerReached(Exception):
    """Raised by the stubbed trainer: the stage got as far as starting it."""


def _config(backend: str, **lora_override: Any) -> StudyConfig:
    data = yaml.safe_load((CONFIGS / "mini-ci.yaml").read_text())
    data["training"]["backend"] = backend
    if lora_override:
        data["students"][STUDENT]["method_overrides"]["lora"] = lora_override
    return parse_config(data, "<test>")


def _job_plan(plan: Plan, tmp: Path) -> Plan:
    """The plan a job process sees: rebuilt from the config snapshot the runner writes (node_main)."""
    snap = snapshot_config(plan, ArtifactStore(tmp / "store"))
    return build_plan(parse_config(json.loads(snap.read_text()), snap))


def _hashed(plan: Plan, cell: str) -> dict[str, Any]:
    """The train node's params as hashed into its key: what the manifest records under `identity`."""
    return plan.identity(f"train/{cell}")["params"]  # type: ignore[no-any-return]


def _run_train_stage(plan: Plan, cell: str, tmp: Path) -> None:
    from compress_distill.stages import train

    node = plan.nodes[f"train/{cell}"]
    inputs = {dep: tmp / "in" / dep for dep in node.deps}
    ctx = StageContext(plan.config, node, inputs, tmp / "out", tmp / "work")
    with pytest.raises(TrainerReached):
        train.run(ctx)


@pytest.fixture
def no_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mini-quick student need not be built: the stage only names it to the (stubbed) trainer."""
    from compress_distill.stages import train

    monkeypatch.setattr(train, "resolve_model_dir", lambda ref: Path("/models") / ref)
    monkeypatch.setattr(train, "_base_model", lambda ref: f"/models/{ref}")


def test_override_moves_the_key_and_only_that_cell() -> None:
    base = build_plan(_config("trl"))
    changed = build_plan(_config("trl", learning_rate=0.02))
    assert _hashed(base, LORA_CELL)["method"]["learning_rate"] == 0.01
    assert _hashed(changed, LORA_CELL)["method"]["learning_rate"] == 0.02
    moved = {nid for nid in base.nodes if base.keys[nid] != changed.keys[nid]}
    # the cell's train node, its evaluation (downstream), and the report; nothing upstream, no other cell
    assert moved == {f"train/{LORA_CELL}", f"evaluate/{LORA_CELL}", "report/study"}


@pytest.mark.parametrize("cell", [LORA_CELL, FULL_CELL])
def test_axolotl_trainer_runs_with_the_hashed_values(cell: str, tmp_path: Path, no_models: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from compress_distill.training import axolotl_backend as ab

    def stub_run(config_path: Path, *args: Any, **kw: Any) -> None:
        raise TrainerReached

    monkeypatch.setattr(ab, "axolotl_env", lambda cfg: tmp_path / "env")
    monkeypatch.setattr(ab, "train_gpus", lambda cfg, env, want: 0)  # the CPU overlay, as the mini world trains
    monkeypatch.setattr(ab, "run_axolotl", stub_run)

    keys = set()
    for lr in (0.02, 0.04):
        plan = _job_plan(build_plan(_config("axolotl", learning_rate=lr, optimizer="adamw_torch_fused")), tmp_path)
        work = tmp_path / f"lr{lr}"
        _run_train_stage(plan, cell, work)
        axo = yaml.safe_load((work / "work" / ab.CONFIG_FILE).read_text())  # what `axolotl train` reads
        hashed = _hashed(plan, cell)
        method, training = hashed["method"], hashed["training"]
        expect_lr = lr if cell == LORA_CELL else 0.003
        assert method["learning_rate"] == expect_lr
        assert axo["learning_rate"] == method["learning_rate"]
        gpu = render_axolotl_config(plan.nodes[f"train/{cell}"], dataset_path="d", output_dir="o")
        assert axo["optimizer"] == gpu["optimizer"] == method["optimizer"] == \
            ("adamw_torch_fused" if cell == LORA_CELL else "adamw_torch")
        assert axo["num_epochs"] == training["num_epochs"]
        for key in ("micro_batch_size", "gradient_accumulation_steps", "sequence_len", "max_steps", "seed",
                    "lr_scheduler", "warmup_ratio", "val_set_size"):
            assert axo[key] == training[key], key
        assert axo["datasets"][0]["train_on_eot"] == training["train_on_eot"]
        assert axo["datasets"][0]["template_thinking_key"] == hashed["family"]["thinking_key"]
        assert axo["base_model"] == f"/models/{hashed['student']}"
        assert ("fsdp_config" in gpu) == hashed["fsdp"]
        if method["kind"] == "lora":
            lora = method["lora"]
            assert (axo["adapter"], axo["lora_r"], axo["lora_alpha"], axo["lora_dropout"]) == \
                ("lora", lora["r"], lora["alpha"], lora["dropout"])
            assert axo["lora_target_modules"] == lora["target_modules"]
        else:
            assert "adapter" not in axo and "lora_r" not in axo
        keys.add(plan.keys[f"train/{cell}"])
    assert len(keys) == (2 if cell == LORA_CELL else 1)  # the override moved the LoRA cell's key only


@pytest.mark.parametrize("cell", [LORA_CELL, FULL_CELL])
def test_trl_trainer_runs_with_the_hashed_values(cell: str, tmp_path: Path, no_models: None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("trl")
    from compress_distill.training import trl_backend

    seen: list[dict[str, Any]] = []

    def stub_train(model_dir: Path, train_parquet: Path, out_dir: Path, method: Any, training: Any,
                   **kw: Any) -> None:
        seen.append({"args": trl_backend.training_arguments(out_dir, method, training, max_steps=kw["max_steps"],
                                                             save_steps=kw["save_steps"], seed=kw.get("seed", 0)),
                     "lora": trl_backend.lora_arguments(method), "model_dir": model_dir})
        raise TrainerReached

    monkeypatch.setattr(trl_backend, "train_student", stub_train)
    keys = set()
    for lr in (0.02, 0.04):
        plan = _job_plan(build_plan(_config("trl", learning_rate=lr, gradient_checkpointing=True)), tmp_path)
        _run_train_stage(plan, cell, tmp_path / f"lr{lr}")
        args, lora = seen[-1]["args"], seen[-1]["lora"]
        hashed = _hashed(plan, cell)
        method, training = hashed["method"], hashed["training"]
        assert method["learning_rate"] == (lr if cell == LORA_CELL else 0.003)
        assert args["learning_rate"] == method["learning_rate"]
        assert args["activation_checkpointing"] == method["gradient_checkpointing"] == (cell == LORA_CELL)
        assert args["optim"] == method["optimizer"]
        assert args["per_device_train_batch_size"] == training["micro_batch_size"]
        assert args["gradient_accumulation_steps"] == training["gradient_accumulation_steps"]
        assert args["num_train_epochs"] == training["num_epochs"]
        assert args["max_steps"] == training["max_steps"]
        assert args["max_length"] == training["sequence_len"]
        assert args["lr_scheduler_type"] == training["lr_scheduler"]
        assert args["warmup_steps"] == training["warmup_ratio"]
        assert args["seed"] == args["data_seed"] == training["seed"]
        assert seen[-1]["model_dir"] == Path("/models") / hashed["student"]
        if method["kind"] == "lora":
            assert lora is not None
            assert (lora["r"], lora["lora_alpha"], lora["lora_dropout"], lora["target_modules"]) == (
                method["lora"]["r"], method["lora"]["alpha"], method["lora"]["dropout"],
                method["lora"]["target_modules"])
        else:
            assert lora is None
        keys.add(plan.keys[f"train/{cell}"])
    assert len(keys) == (2 if cell == LORA_CELL else 1)


def test_fsdp_is_decided_once_by_the_plan() -> None:
    """Every paper cell's Axolotl YAML shards exactly when its hashed identity says `fsdp`; flipping a
    student's `fsdp` moves the key of its full cells and drops FSDP from their YAML."""
    data = yaml.safe_load((CONFIGS / "paper.yaml").read_text())
    plan = build_plan(parse_config(data))
    for cell in plan.cells:
        node = plan.nodes[f"train/{cell.name}"]
        axo = render_axolotl_config(node, dataset_path="d", output_dir="o")
        assert ("fsdp_config" in axo) == _hashed(plan, cell.name)["fsdp"] == TrainParams.of(node).fsdp
    data["students"]["qwen3.5-9b"]["fsdp"] = False
    flipped = build_plan(parse_config(data))
    full = "qwen3.5-397b.qwen3.5-9b.full.raw"
    assert flipped.keys[f"train/{full}"] != plan.keys[f"train/{full}"]
    assert "fsdp_config" not in render_axolotl_config(flipped.nodes[f"train/{full}"], dataset_path="d",
                                                      output_dir="o")
    lora = "qwen3.5-397b.qwen3.5-9b.lora.raw"  # LoRA never shards: its key does not depend on the flag
    assert flipped.keys[f"train/{lora}"] == plan.keys[f"train/{lora}"]


def test_only_the_plan_resolves_methods() -> None:
    """`method_for` is the plan's resolver; no other module calls it (nor restates the FSDP rule)."""
    callers = []
    for path in sorted((REPO / "compress_distill").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "method_for" and isinstance(node.ctx, ast.Load):
                callers.append(path.relative_to(REPO).as_posix())
    assert callers == ["compress_distill/plan.py"]


def _seeded(backend: str, seeds: list[int]) -> StudyConfig:
    data = yaml.safe_load((CONFIGS / "mini-ci.yaml").read_text())
    data["training"]["backend"] = backend
    data["grid"][1]["seeds"] = seeds  # the LoRA block
    return parse_config(data, "<test>")


def test_the_seed_moves_only_its_runs_keys() -> None:
    """A seed is identity of its own train and evaluate nodes only: changing one run's seed moves
    that run (and the report), never the shared generation, compression or training sets."""
    base, changed = build_plan(_seeded("trl", [42, 5])), build_plan(_seeded("trl", [42, 6]))
    assert _hashed(base, f"{LORA_CELL}.s5")["training"]["seed"] == 5
    assert base.identity(f"evaluate/{LORA_CELL}.s5")["params"]["seed"] == 5
    common = set(base.nodes) & set(changed.nodes)
    assert {n for n in common if base.keys[n] != changed.keys[n]} == {"report/study"}
    assert set(base.nodes) ^ set(changed.nodes) == {f"{s}/{LORA_CELL}.s{k}" for s in ("train", "evaluate")
                                                     for k in (5, 6)}


@pytest.mark.parametrize("backend", ["trl", "axolotl"])
def test_trainers_run_with_the_hashed_seed(backend: str, tmp_path: Path, no_models: None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Each seed's trainer gets that seed (TRL's seed and data_seed; Axolotl's `seed`), read back from
    the node as a job rebuilds it, equal to what the key hashed."""
    seen: list[int] = []
    if backend == "trl":
        pytest.importorskip("trl")
        from compress_distill.training import trl_backend

        def stub_train(model_dir: Path, train_parquet: Path, out_dir: Path, method: Any, training: Any,
                       **kw: Any) -> None:
            args = trl_backend.training_arguments(out_dir, method, training, max_steps=kw["max_steps"],
                                                  save_steps=kw["save_steps"], seed=kw.get("seed", 0))
            assert args["seed"] == args["data_seed"]
            seen.append(args["seed"])
            raise TrainerReached

        monkeypatch.setattr(trl_backend, "train_student", stub_train)
    else:
        from compress_distill.training import axolotl_backend as ab

        def stub_run(config_path: Path, *args: Any, **kw: Any) -> None:
            seen.append(yaml.safe_load(Path(config_path).read_text())["seed"])
            raise TrainerReached

        monkeypatch.setattr(ab, "axolotl_env", lambda cfg: tmp_path / "env")
        monkeypatch.setattr(ab, "train_gpus", lambda cfg, env, want: 0)
        monkeypatch.setattr(ab, "run_axolotl", stub_run)
    plan = _job_plan(build_plan(_seeded(backend, [42, 3, 11])), tmp_path)
    cells = [LORA_CELL, f"{LORA_CELL}.s3", f"{LORA_CELL}.s11"]
    for cell in cells:
        _run_train_stage(plan, cell, tmp_path / cell)
    assert seen == [_hashed(plan, c)["training"]["seed"] for c in cells] == [42, 3, 11]
