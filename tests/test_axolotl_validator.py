"""Axolotl's own validator on every rendered config, run in the separate Axolotl env.

Needs `.venv-axolotl` (compress_distill/jobs/envs/axolotl-cpu-requirements.txt); skipped without it.
Takes ~2-4 minutes: importing Axolotl alone is ~30 s on two cores.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from compress_distill.config import load_config
from compress_distill.jobs.study import render_study
from compress_distill.plan import build_plan

ROOT = Path(__file__).resolve().parent.parent
AXOLOTL_PY = ROOT / ".venv-axolotl" / "bin" / "python"
SCRIPT = ROOT / "scripts" / "validate_axolotl_configs.py"

# CI builds the env (scripts/setup-axolotl.sh) and sets COMPRESS_DISTILL_REQUIRE_AXOLOTL=1, so there a
# missing env is a failure, never a silent skip; on a developer machine it is a skip with instructions.
_REQUIRED = os.environ.get("COMPRESS_DISTILL_REQUIRE_AXOLOTL") == "1"
pytestmark = [
    pytest.mark.axolotl,
    pytest.mark.skipif(not AXOLOTL_PY.exists() and not _REQUIRED, reason=(
        f"{AXOLOTL_PY} missing: build it with `bash scripts/setup-axolotl.sh` (~7 min, 4.3 GB)")),
]


def validate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(AXOLOTL_PY), str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=900)


def test_all_paper_configs_pass_axolotl_validator(tmp_path):
    render_study(ROOT / "configs" / "paper.yaml", tmp_path, store_root=tmp_path / "store")
    proc = validate(tmp_path)
    lines = [x for x in proc.stdout.splitlines() if x.startswith(("PASS", "FAIL"))]
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert len(lines) == 55 and all(x.startswith("PASS") for x in lines)
    assert "55/55 passed" in proc.stdout
    # the manifest's GPU counts reached the validator (n_gpu drives multi-GPU checks)
    assert any("n_gpu=4" in x for x in lines) and any("n_gpu=8" in x for x in lines)


def test_validator_catches_what_axolotl_rejects_or_ignores(tmp_path):
    render_study(ROOT / "configs" / "paper.yaml", tmp_path / "r", store_root=tmp_path / "store")
    good = yaml.safe_load((tmp_path / "r" / "cells" / "qwen3.5-397b.qwen3.5-9b.full.raw" / "axolotl.yaml").read_text())
    cases = {
        "axolotl_fsdp2_bnb.yaml": {**good, "optimizer": "adamw_bnb_8bit"},   # FSDP2 + bnb 8-bit
        "axolotl_typo.yaml": {**good, "liger_rop": True},                      # silently dropped by Axolotl
        "axolotl_nobf16.yaml": {**good, "bf16": False},                        # CCE needs bf16
    }
    for name, data in cases.items():
        (tmp_path / name).write_text(yaml.safe_dump(data))
    proc = validate(*(tmp_path / n for n in cases), "--n-gpu", "8")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "FAIL" in out and "0/3 passed" in out
    assert "FSDP2 not compatible with adamw_bnb_8bit" in out
    assert "liger_rop" in out
    assert "Cut Cross Entropy requires fp16/bf16" in out


def test_mini_cpu_configs_pass_axolotl_validator(tmp_path):
    render_study(ROOT / "configs" / "mini.yaml", tmp_path, store_root=tmp_path / "store")
    proc = validate(tmp_path, "--cpu")
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    n = len(build_plan(load_config(ROOT / "configs" / "mini.yaml")).cells)
    assert f"{n}/{n} passed" in proc.stdout


# A tiny local tokenizer + Qwen3 model, built in the Axolotl env (no hub access needed).
# Two chat templates: one that drops `reasoning_content`, one that renders it.
BUILD_TINY = r'''
import json, sys
from pathlib import Path
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM
out = Path(sys.argv[1])
special = ["<|im_start|>", "<|im_end|>", "<|pad|>", "<think>", "</think>"]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
texts = [f"What is {a} plus {b}? First add. The answer is {a + b}." for a in range(20) for b in range(20)]
tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=special,
                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
turn = "{{- '<|im_start|>' + m['role'] + '\n' -}}"
plain = "{%- for m in messages -%}" + turn + "{{- m['content'] + '<|im_end|>\n' -}}{%- endfor -%}"
reasoning = ("{%- for m in messages -%}" + turn +
             "{%- if m.get('reasoning_content') -%}{{- '<think>' + m['reasoning_content'] + '</think> ' -}}{%- endif -%}"
             "{{- m['content'] + '<|im_end|>\n' -}}{%- endfor -%}")
torch.manual_seed(0)
for name, template in (("plain", plain), ("reasoning", reasoning)):
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>")
    hf.chat_template = template
    cfg = Qwen3Config(vocab_size=len(hf), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                      eos_token_id=hf.eos_token_id, pad_token_id=hf.pad_token_id)
    Qwen3ForCausalLM(cfg).save_pretrained(out / name)
    hf.save_pretrained(out / name)
with open(out / "train.jsonl", "w") as f:
    for a in range(40):
        f.write(json.dumps({"messages": [{"role": "user", "content": f"What is {a} plus 2?"},
                {"role": "assistant", "content": f"<think>First add {a} and 2.</think> The answer is {a + 2}."}]}) + "\n")
'''


def test_trace_drop_is_caught_before_training(tmp_path):
    """split_thinking with a template that ignores reasoning_content drops every trace; the check says so."""
    from compress_distill.axolotl_config import cpu_overlay, dump_yaml, render_axolotl_config

    build = subprocess.run([str(AXOLOTL_PY), "-c", BUILD_TINY, str(tmp_path)], capture_output=True, text=True,
                           timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    cfg = load_config(ROOT / "configs" / "mini.yaml")
    plan = build_plan(cfg)
    node = next(plan.nodes[f"train/{c.name}"] for c in plan.cells if c.method == "lora")
    configs = {}
    for model, split in (("plain", True), ("plain", False), ("reasoning", True)):
        axo = cpu_overlay(render_axolotl_config(
            node, dataset_path=tmp_path / "train.jsonl", output_dir=tmp_path / f"out-{model}-{split}",
            base_model=str(tmp_path / model)))
        axo["datasets"][0]["split_thinking"] = split
        configs[(model, split)] = tmp_path / f"{model}-{split}.yaml"
        configs[(model, split)].write_text(dump_yaml(axo))
    proc = subprocess.run([str(AXOLOTL_PY), str(ROOT / "compress_distill" / "envchecks" / "check_axolotl_labels.py"), *map(str, configs.values())],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    verdict = {line.split()[1].rstrip(":"): line.split()[0] for line in proc.stdout.splitlines() if line.startswith(("PASS", "FAIL"))}
    assert verdict == {str(configs[("plain", True)]): "FAIL", str(configs[("plain", False)]): "PASS",
                       str(configs[("reasoning", True)]): "PASS"}
