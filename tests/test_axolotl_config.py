"""Per-cell Axolotl YAML (paper H.3): golden cells, the key whitelist, the CPU overlay, all 55 cells."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from compress_distill.axolotl_config import (
    ALLOWED_KEYS,
    CCE_PLUGIN,
    LIGER_PLUGIN,
    AxolotlKeyError,
    cpu_overlay,
    dump_yaml,
    render_axolotl_config,
    validate_keys,
)
from compress_distill.config import load_config, parse_config
from compress_distill.jobs.study import render_study
from compress_distill.plan import build_plan

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "configs" / "paper.yaml"
TABLE11 = ROOT / "compress_distill" / "data" / "table11_compute.csv"


@pytest.fixture(scope="module")
def paper():
    return load_config(PAPER)


@pytest.fixture(scope="module")
def cells(paper):
    return {c.name: c for c in build_plan(paper).cells}


_PLANS: dict[int, tuple[object, object]] = {}  # id(config) -> (config, plan): one plan per config


def render(cfg, cell, **kw):
    """The cell's train node of `cfg`'s plan, rendered (the config resolved once, by the plan)."""
    if id(cfg) not in _PLANS:
        _PLANS[id(cfg)] = (cfg, build_plan(cfg))  # holding cfg keeps its id from being reused
    node = _PLANS[id(cfg)][1].nodes[f"train/{cell.name}"]
    return render_axolotl_config(node, dataset_path="/data/train.jsonl", output_dir="/out/run", **kw)


COMMON = {
    "dataset_prepared_path": "/out/run/prepared",
    "output_dir": "/out/run",
    "val_set_size": 0.05,
    "sequence_len": 16384, "sample_packing": True, "pad_to_sequence_len": True,
    "micro_batch_size": 1, "gradient_accumulation_steps": 8, "num_epochs": 1,
    "lr_scheduler": "cosine", "warmup_ratio": 0.1,
    "bf16": True, "tf32": True,
    "plugins": [CCE_PLUGIN, LIGER_PLUGIN], "cut_cross_entropy": True,
    "liger_rms_norm": True, "liger_rope": True, "liger_glu_activation": True, "liger_rms_norm_gated": True,
    "seed": 42,
    "auto_resume_from_checkpoints": True, "save_only_model": False, "saves_per_epoch": 10, "save_total_limit": 2,
}


def dataset_entry(thinking_key: str) -> list[dict]:
    return [{"path": "/data/train.jsonl", "ds_type": "json", "type": "chat_template", "field_messages": "messages",
             "roles_to_train": ["assistant"], "train_on_eot": "turn", "split_thinking": True,
             "template_thinking_key": thinking_key}]


# Per family (cluster/families.py): what H.3's "tokenizer template, <|im_end|>, FlashAttention 2" becomes
# where the model proves it wrong. Each row is checked against Axolotl's own examples in the README.
FAMILY_KEYS = {
    "Qwen/Qwen3.5-0.8B-Base": {"chat_template": "qwen3_5", "eot_tokens": ["<|im_end|>"],
                               "attn_implementation": "flash_attention_2",
                               "datasets": dataset_entry("reasoning_content")},
    "Qwen/Qwen3.5-9B-Base": {"chat_template": "qwen3_5", "eot_tokens": ["<|im_end|>"],
                             "attn_implementation": "flash_attention_2",
                             "datasets": dataset_entry("reasoning_content")},
    "meta-llama/Llama-3.1-8B": {"chat_template": "jinja", "eot_tokens": ["<|eot_id|>"],
                                "special_tokens": {"pad_token": "<|finetune_right_pad_id|>"},
                                "attn_implementation": "flash_attention_2",
                                "datasets": dataset_entry("reasoning_content")},
    "openai/gpt-oss-20b": {"chat_template": "tokenizer_default", "eot_tokens": ["<|end|>"],
                           "attn_implementation": "kernels-community/vllm-flash-attn3",
                           "model_quantization_config": "Mxfp4Config",
                           "model_quantization_config_kwargs": {"dequantize": True},
                           "datasets": dataset_entry("thinking")},
}


def assert_common(axo: dict) -> None:
    for key, value in {**COMMON, **FAMILY_KEYS[axo["base_model"]]}.items():
        assert axo[key] == value, key


def test_lora_cell(paper, cells):
    axo = render(paper, cells["qwen3.5-397b.llama-3.1-8b.lora.raw"])
    assert_common(axo)
    assert axo["base_model"] == "meta-llama/Llama-3.1-8B"
    assert {k: axo[k] for k in ("adapter", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")} == {
        "adapter": "lora", "lora_r": 64, "lora_alpha": 128, "lora_dropout": 0.05,
        "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    }
    assert axo["optimizer"] == "adamw_bnb_8bit" and axo["learning_rate"] == 2.0e-4
    assert axo["gradient_checkpointing"] is True
    # LoRA is DDP even on an fsdp student: no FSDP keys at all
    assert not any(k.startswith("fsdp") for k in axo)


def test_full_fsdp_cell(paper, cells):
    axo = render(paper, cells["qwen3.5-397b.gpt-oss-20b.full.raw"])
    assert_common(axo)
    assert axo["base_model"] == "openai/gpt-oss-20b"
    assert axo["fsdp_version"] == 2
    assert axo["fsdp_config"] == {
        "fsdp_version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": "GptOssDecoderLayer", "reshard_after_forward": True,
        "activation_checkpointing": True, "state_dict_type": "FULL_STATE_DICT",
        "final_state_dict_type": "FULL_STATE_DICT",
    }
    # transformers refuses FSDP activation checkpointing together with gradient_checkpointing
    assert axo["gradient_checkpointing"] is False
    # torchao's 8-bit states cannot be saved under FSDP2 (axolotl#2744): paper.yaml overrides H.3's optimizer
    assert axo["optimizer"] == "adamw_torch_fused" and axo["learning_rate"] == 1.0e-5
    assert "adapter" not in axo


def test_llama_template_renders_the_trace_and_eot(paper, cells):
    """The Llama-3.1 base model ships no template: ours renders reasoning_content and ends turns with <|eot_id|>."""
    import jinja2

    axo = render(paper, cells["qwen3.5-397b.llama-3.1-8b.full.raw"])
    template = jinja2.Environment().from_string(axo["chat_template_jinja"])
    text = template.render(bos_token="<|begin_of_text|>", add_generation_prompt=False, messages=[
        {"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A", "reasoning_content": "step 1"}])
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nQ?<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n<think>\nstep 1\n</think>\n\nA<|eot_id|>")


@pytest.mark.parametrize("student,layer", [("llama-3.1-8b", "LlamaDecoderLayer"),
                                           ("qwen3.5-9b", "Qwen3_5DecoderLayer")])
def test_fsdp_wrap_class_per_student(paper, cells, student, layer):
    axo = render(paper, cells[f"gpt-oss-120b.{student}.full.llama70b"])
    assert axo["fsdp_config"]["transformer_layer_cls_to_wrap"] == layer


def test_small_full_cell_is_ddp(paper, cells):
    axo = render(paper, cells["qwen3.5-397b.qwen3.5-0.8b.full.raw"])
    assert_common(axo)
    assert axo["base_model"] == "Qwen/Qwen3.5-0.8B-Base"
    assert axo["optimizer"] == "adamw_torch_8bit"
    assert axo["gradient_checkpointing"] is True
    assert not any(k.startswith("fsdp") for k in axo) and "adapter" not in axo


@pytest.mark.parametrize("optimizer", ["adamw_bnb_8bit", "adamw_torch_8bit"])
def test_fsdp2_with_8bit_optimizer_is_an_error_naming_the_fix(paper, cells, optimizer):
    data = yaml.safe_load(PAPER.read_text())
    data["students"]["qwen3.5-9b"]["method_overrides"] = {"full": {"optimizer": optimizer}}
    cfg = parse_config(data)
    with pytest.raises(ValueError, match="adamw_torch_fused") as err:
        render(cfg, cells["qwen3.5-397b.qwen3.5-9b.full.raw"])
    assert "FSDP2" in str(err.value) and "method_overrides" in str(err.value)


def test_fsdp_needs_decoder_layer(paper, cells):
    data = yaml.safe_load(PAPER.read_text())
    data["students"]["qwen3.5-9b"]["decoder_layer"] = None
    with pytest.raises(ValueError, match="decoder_layer"):
        render(parse_config(data), cells["qwen3.5-397b.qwen3.5-9b.full.raw"])


def test_whitelist_rejects_misspelled_keys(paper, cells):
    cell = cells["qwen3.5-397b.llama-3.1-8b.lora.raw"]
    with pytest.raises(AxolotlKeyError, match=r"'lora_rr' \(did you mean 'lora_r'\?\)") as err:
        render(paper, cell, overlay={"lora_rr": 32})
    assert "allowed top-level keys" in str(err.value) and "lora_r," in str(err.value)
    with pytest.raises(AxolotlKeyError, match=r"fsdp_config\.'reshard_after_foward'"):
        validate_keys({"fsdp_config": {"reshard_after_foward": True}})
    with pytest.raises(AxolotlKeyError, match=r"datasets\[0\]\.'roles_to_trian'"):
        validate_keys({"datasets": [{"path": "x", "roles_to_trian": ["assistant"]}]})
    with pytest.raises(AxolotlKeyError, match="flash_attention"):
        validate_keys({"flash_attention": True})  # deprecated in 0.19: attn_implementation


def test_overlay_merges_whitelisted_keys(paper, cells):
    cell = cells["qwen3.5-397b.gpt-oss-20b.full.raw"]
    axo = render(paper, cell, overlay={"model_quantization_config_kwargs": {"dequantize": False},
                                       "fsdp_config": {"cpu_ram_efficient_loading": True}})
    assert axo["model_quantization_config_kwargs"] == {"dequantize": False}
    assert axo["fsdp_config"]["cpu_ram_efficient_loading"] is True
    assert axo["fsdp_config"]["transformer_layer_cls_to_wrap"] == "GptOssDecoderLayer"


def test_all_paper_cells_render_with_table11_gpus(paper):
    cells = build_plan(paper).cells
    assert len(cells) == 55
    with TABLE11.open() as f:
        table = {(r["teacher"], r["student"], r["method"], r["data"]): int(r["gpus"]) for r in csv.DictReader(f)}
    assert len(table) == 55
    assert {(c.teacher, c.student, c.method, c.data): c.gpus for c in cells} == table
    for cell in cells:
        axo = render(paper, cell)
        validate_keys(axo)
        assert set(axo) <= ALLOWED_KEYS
        assert ("fsdp_config" in axo) == (cell.method == "full" and cell.student != "qwen3.5-0.8b")
        assert ("adapter" in axo) == (cell.method == "lora")
    assert sum(1 for c in cells if c.method == "full" and c.student == "gpt-oss-20b") == 7


def test_cpu_overlay(paper, cells):
    for name in ("qwen3.5-397b.llama-3.1-8b.lora.raw", "qwen3.5-397b.gpt-oss-20b.full.raw"):
        axo = cpu_overlay(render(paper, cells[name]))
        assert not any(k.startswith(("fsdp", "liger", "plugins", "cut_cross")) for k in axo)
        assert (axo["bf16"], axo["fp16"], axo["tf32"]) == (False, False, False)
        assert axo["attn_implementation"] == "sdpa"
        assert axo["sample_packing"] is False and axo["dataloader_pin_memory"] is False
        assert "8bit" not in axo["optimizer"]
        # the data, the chat template and the EOT tokens stay the same; only GPU kernels and weights loading go
        full = render(paper, cells[name])
        assert {k: axo[k] for k in ("datasets", "chat_template", "eot_tokens")} == {
            k: full[k] for k in ("datasets", "chat_template", "eot_tokens")}
        assert "model_quantization_config" not in axo
    lora = cpu_overlay(render(paper, cells["qwen3.5-397b.llama-3.1-8b.lora.raw"]))
    assert (lora["lora_mlp_kernel"], lora["lora_qkv_kernel"], lora["lora_o_kernel"]) == (False, False, False)
    assert lora["lora_r"] == 64


def test_dump_yaml_round_trips(paper, cells):
    axo = render(paper, cells["qwen3.5-397b.qwen3.5-9b.full.raw"])
    text = dump_yaml(axo, "line one\nline two")
    assert text.startswith("# line one\n# line two\n")
    assert yaml.safe_load(text) == axo
    assert list(yaml.safe_load(text)) == list(axo)  # emission order kept


def test_render_study_writes_every_cell(tmp_path):
    store = tmp_path / "store"
    files = render_study(PAPER, tmp_path, store_root=store)
    yamls = [f for f in files if f.name == "axolotl.yaml"]
    assert len(yamls) == 55
    one = yaml.safe_load((tmp_path / "cells" / "qwen3.5-397b.qwen3.5-9b.lora.raw" / "axolotl.yaml").read_text())
    assert one["output_dir"].startswith(f"{store}/train/.work/qwen3.5-397b.qwen3.5-9b.lora.raw-")
    assert one["datasets"][0]["path"].startswith(f"{store}/derive/qwen3.5-397b.raw-")
    # the eval job serves the train node's committed model (the stage publishes it merged)
    eval_text = (tmp_path / "cells" / "qwen3.5-397b.qwen3.5-9b.lora.raw" / "eval.sbatch").read_text()
    key = one["output_dir"].rsplit("-", 1)[1]
    assert f"CHECKPOINT={store}/train/qwen3.5-397b.qwen3.5-9b.lora.raw-{key}/model" in eval_text


def test_mini_config_renders_cpu_variants(tmp_path):
    render_study(ROOT / "configs" / "mini.yaml", tmp_path, store_root=tmp_path / "store")
    for path in (tmp_path / "cells").glob("*/axolotl.yaml"):
        axo = yaml.safe_load(path.read_text())
        assert axo["bf16"] is False and "plugins" not in axo and axo["attn_implementation"] == "sdpa"
        assert axo["sequence_len"] == 256
