"""The TRL CPU training backend on a random-init tiny Qwen3: full FT, LoRA, masks, resume.

Each training run is 20-30 steps of a 37k-parameter model (seconds); the file's cost is
dominated by importing torch/transformers/trl.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402

from compress_distill.config import LoraSpec, MethodSpec, TrainingSpec  # noqa: E402
from compress_distill.training.data import read_chats  # noqa: E402
from compress_distill.training.tiny_models import (  # noqa: E402
    build_tiny_qwen3,
    synthetic_chats,
    write_chat_parquet,
)
from compress_distill.training.trl_backend import RESULT_FILE, prepare_run, train_student  # noqa: E402

STEPS = 20
TRAINING = TrainingSpec(backend="trl", sequence_len=128, sample_packing=False, pad_to_sequence_len=False,
                        micro_batch_size=16, gradient_accumulation_steps=1, num_epochs=1, warmup_ratio=0.1,
                        bf16=False, tf32=False)
FULL = MethodSpec(kind="full", label="Full", learning_rate=3e-3, optimizer="adamw_torch",
                  gradient_checkpointing=False)
LORA = MethodSpec(kind="lora", label="LoRA", learning_rate=1e-2, optimizer="adamw_torch",
                  gradient_checkpointing=False,
                  lora=LoraSpec(r=8, alpha=16, dropout=0.0,
                                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"]))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trl")
    model = build_tiny_qwen3(root / "base", hidden=32, layers=2)
    rows = synthetic_chats(192, seed=1, trace_sentences=2)
    rows[:8] = synthetic_chats(8, seed=2, answer_only=True)  # answer-only turns start with a space
    return {
        "root": root, "model": model,
        "json": write_chat_parquet(rows, root / "train-json.parquet", messages_as_json=True),
        "list": write_chat_parquet(rows, root / "train-list.parquet"),
    }


@pytest.fixture(scope="module")
def full_run(world: dict[str, Path]) -> tuple[Path, object]:
    out = world["root"] / "full"
    return out, train_student(world["model"], world["json"], out, FULL, TRAINING, max_steps=STEPS)


def _losses(out: Path) -> list[dict]:
    return pq.read_table(out / "loss.parquet").to_pylist()


def _generates(model_dir: Path) -> str:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    enc = tok.apply_chat_template([{"role": "user", "content": "What is (3 + 4) mod 10?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]
    return tok.decode(out[0, enc["input_ids"].shape[1]:])


def test_reads_json_and_list_messages(world: dict[str, Path]) -> None:
    assert read_chats(world["json"]) == read_chats(world["list"])


def test_labels_are_the_templates_assistant_mask(world: dict[str, Path], tmp_path: Path) -> None:
    run = prepare_run(world["model"], world["list"], tmp_path, FULL, TRAINING, max_steps=1)
    tok = AutoTokenizer.from_pretrained(world["model"])
    chats = read_chats(world["list"])
    data = run.trainer.train_dataset
    assert len(data) == len(chats)
    for i in (0, 1, 50, 191):
        ref = tok.apply_chat_template(chats[i], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert data[i]["input_ids"] == ref["input_ids"][:TRAINING.sequence_len]
        trained = [lab != -100 for lab in data[i]["labels"]]
        assert trained == [bool(m) for m in ref["assistant_masks"]][:TRAINING.sequence_len]
        # Exactly the assistant reply and its end-of-turn token, nothing of the prompt.
        kept = [t for t, on in zip(data[i]["input_ids"], trained, strict=True) if on]
        assert tok.decode(kept) == chats[i][-1]["content"] + "<|im_end|>"
    # The collator pads labels with -100 and keeps the mask.
    batch = run.trainer.data_collator([data[0], data[1]])
    assert ((batch["labels"] != -100).sum(1) == torch.tensor([sum(lab != -100 for lab in data[j]["labels"])
                                                              for j in (0, 1)])).all()


def test_full_finetune(world: dict[str, Path], full_run: tuple[Path, object]) -> None:
    out, res = full_run
    rows = _losses(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert sum(r["loss"] for r in rows[-3:]) / 3 < rows[0]["loss"] - 0.5
    assert rows[-1]["tokens_seen"] > rows[0]["tokens_seen"] > 0
    assert all(b["elapsed_s"] >= a["elapsed_s"] for a, b in zip(rows, rows[1:], strict=False))
    assert res.steps == STEPS and res.examples == 192  # type: ignore[attr-defined]
    assert res.params_trainable == res.params_total  # type: ignore[attr-defined]
    # trainable_tokens = assistant-mask tokens of one pass over the set.
    tok = AutoTokenizer.from_pretrained(world["model"])
    masks = [tok.apply_chat_template(c, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
             ["assistant_masks"][:TRAINING.sequence_len] for c in read_chats(world["json"])]
    assert res.trainable_tokens == sum(sum(m) for m in masks)  # type: ignore[attr-defined]
    assert json.loads((out / RESULT_FILE).read_text())["steps"] == STEPS
    _generates(out / "model")


def test_lora_merged_model_is_a_plain_base_architecture(world: dict[str, Path]) -> None:
    out = world["root"] / "lora"
    res = train_student(world["model"], world["json"], out, LORA, TRAINING, max_steps=30)
    rows = _losses(out)
    assert [r["step"] for r in rows] == list(range(1, 31)) and all(math.isfinite(r["loss"]) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert 0 < res.params_trainable < res.params_total
    base = AutoModelForCausalLM.from_pretrained(world["model"])
    merged = AutoModelForCausalLM.from_pretrained(out / "model")
    assert type(merged) is type(base)
    assert not (out / "model" / "adapter_config.json").exists()
    base_sd, merged_sd = base.state_dict(), merged.state_dict()
    assert {k: v.shape for k, v in merged_sd.items()} == {k: v.shape for k, v in base_sd.items()}
    assert sum(p.numel() for p in merged.parameters()) == res.params_total
    # The adapters were folded in: the projections moved, the (untargeted) embeddings did not.
    assert not torch.equal(merged_sd["model.layers.0.self_attn.q_proj.weight"],
                           base_sd["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(merged_sd["model.embed_tokens.weight"], base_sd["model.embed_tokens.weight"])
    _generates(out / "model")


class _Crash(RuntimeError):
    pass


class _CrashAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == self.step:
            raise _Crash(f"simulated kill at step {self.step}")


def test_killed_run_resumes_from_checkpoint(world: dict[str, Path], full_run: tuple[Path, object]) -> None:
    out = world["root"] / "resume"
    with pytest.raises(_Crash):
        train_student(world["model"], world["json"], out, FULL, TRAINING, max_steps=STEPS, save_steps=5,
                      callbacks=[_CrashAt(12)])
    assert (out / "checkpoints" / "checkpoint-10").is_dir() and not (out / "model").exists()
    res = train_student(world["model"], world["json"], out, FULL, TRAINING, max_steps=STEPS, save_steps=5)
    assert res.resumed_from_step == 10 and res.steps == STEPS
    assert not (out / "checkpoints").exists()  # superseded by the saved model
    rows = _losses(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # steps 11-12 of the killed run replaced
    # Same seed, same data order: the resumed curve is the uninterrupted one.
    ref = _losses(full_run[0])
    assert [round(r["loss"], 3) for r in rows] == [round(r["loss"], 3) for r in ref]
    _generates(out / "model")
