"""Per-cell Axolotl configs (paper appendix H.3), rendered as plain dicts. Pure.

`render_axolotl_config(node, dataset_path=..., output_dir=...)` returns the
YAML mapping for one training cell's train node; `dump_yaml` writes it with a header.
Every hyperparameter comes from the node's identity (`plan.TrainParams`): the values
its key hashed, the student's method overrides and the FSDP decision already resolved
there, never recomputed from the study config.
Targets Axolotl 0.19.0 (`compress_distill/jobs/envs/axolotl-cpu-requirements.txt`).

What every cell gets (H.3): base model, EOT trained per turn, `split_thinking`,
bf16 + tf32, sequence length 16384 with sample packing padded to length, micro
batch 1 x grad-accum 8, cosine with 10% warmup, one epoch, 5% validation split,
the CutCrossEntropy and Liger plugins (fused RMSNorm, RoPE, GLU activation and
gated RMSNorm; the gated kernel only acts on Qwen3.5's linear-attention layers
and is ignored elsewhere). The chat template, EOT tokens, the key the template
reads the reasoning from (`template_thinking_key`: split_thinking moves the
`<think>` block there), the attention kernel and weight loading come from the
student's model family (cluster/families.py): H.3's "`<|im_end|>`, FlashAttention 2"
holds only for Qwen.

Decisions (also in the README):
- Parallelism. Full fine-tuning of students with `fsdp: true` (8B/9B/20B)
  uses FSDP2: FULL_SHARD (`reshard_after_forward`), TRANSFORMER_BASED_WRAP
  on the student's decoder-layer class, activation checkpointing and full
  state dicts. LoRA runs and the 0.8B full run use plain DDP: H.3 lists FSDP
  only for full fine-tuning, the bf16 8B/9B weights (16-18 GB) fit an 80 GB
  H100 next to LoRA states, and H.3's LoRA optimizer `adamw_bnb_8bit` is one
  that Axolotl rejects under FSDP2.
- FSDP2 + 8-bit optimizers: Axolotl's validator rejects bitsandbytes'
  (`adamw_bnb_8bit`, `adamw_8bit`), and torchao's (`adamw_torch_8bit`,
  `adamw_torch_4bit`) cannot save their state under FSDP2 (axolotl#2744,
  pytorch/ao#1185): Axolotl catches the error and writes checkpoints that
  cannot resume, so a requeued 12-hour job would restart from zero. Both are an
  error at render time naming `adamw_torch_fused` (what Axolotl's own FSDP2
  examples use), rather than a silent swap that would make the config and the
  cache key lie about the optimizer that ran; paper.yaml overrides it per student.
- Under FSDP the method's `gradient_checkpointing` becomes
  `fsdp_config.activation_checkpointing` and top-level `gradient_checkpointing`
  is false: transformers refuses both at once.
- Resume: `auto_resume_from_checkpoints` picks the newest `checkpoint-N` in
  `output_dir`; `saves_per_epoch` bounds the work a requeue loses, and
  `save_only_model: false` keeps the optimizer state a resume needs.

Axolotl silently drops keys it does not know, so every key this module emits
must be in an explicit whitelist (`ALLOWED_KEYS`, `FSDP_KEYS`, `DATASET_KEYS`);
`validate_keys` applies the same check to user overlays and reports near
misses. `cpu_overlay` turns a GPU config into one that runs on CPU (mini world).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .cluster.families import quantization_config
from .plan import Node, TrainParams

AXOLOTL_VERSION = "0.19.0"
CCE_PLUGIN = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"
LIGER_PLUGIN = "axolotl.integrations.liger.LigerPlugin"
# H.3: "the Liger plugin (fused RMSNorm, RoPE, GLU activation, and gated RMSNorm)".
LIGER_FLAGS = ("liger_rms_norm", "liger_rope", "liger_glu_activation", "liger_rms_norm_gated")
# bitsandbytes optimizers that Axolotl 0.19 refuses together with FSDP2.
FSDP2_INCOMPATIBLE_OPTIMIZERS = frozenset({"adamw_bnb_8bit", "adamw_8bit", "adamw_torch_8bit", "adamw_torch_4bit"})
FSDP2_OPTIMIZER_FIX = "adamw_torch_fused"
SAVES_PER_EPOCH = 10  # a requeue loses at most ~10% of an epoch
SAVE_TOTAL_LIMIT = 2
LOGGING_STEPS = 10

ALLOWED_KEYS = frozenset({
    # model and tokenizer
    "base_model", "chat_template", "chat_template_jinja", "eot_tokens", "trust_remote_code", "special_tokens",
    "model_quantization_config", "model_quantization_config_kwargs",
    # data
    "datasets", "dataset_prepared_path", "val_set_size", "sequence_len", "sample_packing",
    "pad_to_sequence_len", "dataset_processes", "shuffle_merged_datasets",
    # optimisation
    "micro_batch_size", "gradient_accumulation_steps", "num_epochs", "max_steps", "learning_rate",
    "optimizer", "lr_scheduler", "warmup_ratio", "weight_decay", "max_grad_norm", "seed",
    # precision, attention, memory
    "bf16", "fp16", "tf32", "attn_implementation", "gradient_checkpointing", "gradient_checkpointing_kwargs",
    # plugins
    "plugins", "cut_cross_entropy", *LIGER_FLAGS,
    # LoRA
    "adapter", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
    "lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel",
    # distributed
    "fsdp_version", "fsdp_config", "ddp_find_unused_parameters",
    # outputs, checkpoints, logging
    "output_dir", "saves_per_epoch", "save_steps", "save_strategy", "save_total_limit", "save_only_model",
    "save_safetensors",
    "auto_resume_from_checkpoints", "resume_from_checkpoint", "logging_steps", "evals_per_epoch",
    "use_tensorboard", "dataloader_pin_memory", "dataloader_num_workers",
})
FSDP_KEYS = frozenset({
    "fsdp_version", "auto_wrap_policy", "transformer_layer_cls_to_wrap", "reshard_after_forward",
    "activation_checkpointing", "state_dict_type", "final_state_dict_type", "offload_params",
    "cpu_ram_efficient_loading",
})
DATASET_KEYS = frozenset({
    "path", "ds_type", "type", "data_files", "split", "field_messages", "roles_to_train",
    "train_on_eot", "train_on_eos", "split_thinking", "template_thinking_key",
})


class AxolotlKeyError(ValueError):
    """A key Axolotl would silently ignore (unknown to the whitelist)."""


def _check(keys: Any, allowed: frozenset[str], where: str) -> list[str]:
    problems = []
    for key in keys:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            problems.append(f"{where}{key!r}{hint}")
    return problems


def validate_keys(axo: Mapping[str, Any]) -> None:
    """Raise `AxolotlKeyError` for any key outside the whitelist, at any level we emit."""
    problems = _check(axo, ALLOWED_KEYS, "")
    if isinstance(axo.get("fsdp_config"), Mapping):
        problems += _check(axo["fsdp_config"], FSDP_KEYS, "fsdp_config.")
    for i, ds in enumerate(axo.get("datasets") or []):
        if isinstance(ds, Mapping):
            problems += _check(ds, DATASET_KEYS, f"datasets[{i}].")
    if problems:
        raise AxolotlKeyError(
            f"unknown Axolotl key(s): {', '.join(problems)}. Axolotl would silently ignore them.\n"
            f"allowed top-level keys: {', '.join(sorted(ALLOWED_KEYS))}\n"
            f"allowed fsdp_config keys: {', '.join(sorted(FSDP_KEYS))}\n"
            f"allowed dataset keys: {', '.join(sorted(DATASET_KEYS))}"
        )


def render_axolotl_config(
    node: Node, *, dataset_path: str | Path, output_dir: str | Path,
    prepared_dir: str | Path | None = None, base_model: str | None = None,
    overlay: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The Axolotl config for one cell's train node, from the node's identity (`TrainParams`).
    `overlay` (whitelisted keys only) is merged last."""
    cell = node.cell
    assert cell is not None  # every train node has its cell
    train = TrainParams.of(node)
    method, tr, fsdp, fam = train.method, train.training, train.fsdp, train.family
    where = f"cell {cell.name}"
    if fsdp and not train.decoder_layer:
        raise ValueError(f"{where}: students.{cell.student}.decoder_layer is required for FSDP "
                         "(the TRANSFORMER_BASED_WRAP class, e.g. LlamaDecoderLayer)")
    if fsdp and method.optimizer in FSDP2_INCOMPATIBLE_OPTIMIZERS:
        raise ValueError(
            f"{where}: optimizer {method.optimizer!r} is not compatible with FSDP2 (8-bit optimizer states "
            f"cannot be sharded or saved there: Axolotl rejects bitsandbytes', and torchao's write checkpoints "
            f"that cannot resume). Use {FSDP2_OPTIMIZER_FIX!r}, e.g. "
            f"students.{cell.student}.method_overrides.{cell.method}.optimizer: {FSDP2_OPTIMIZER_FIX}"
        )

    axo: dict[str, Any] = {
        "base_model": base_model or train.student,
        "chat_template": fam.chat_template,
        **({"chat_template_jinja": train.template_text} if fam.template_file else {}),
        "eot_tokens": list(fam.eot_tokens),
        **({"special_tokens": dict(fam.special_tokens)} if fam.special_tokens else {}),
        **quantization_config(fam.quantization),
        "datasets": [{
            "path": str(dataset_path),
            "ds_type": "json",
            "type": "chat_template",
            "field_messages": "messages",
            "roles_to_train": ["assistant"],
            "train_on_eot": tr.train_on_eot,
            "split_thinking": tr.split_thinking,
            "template_thinking_key": fam.thinking_key,
        }],
        "dataset_prepared_path": str(prepared_dir or Path(output_dir) / "prepared"),
        "val_set_size": tr.val_set_size,
        "output_dir": str(output_dir),
        "sequence_len": tr.sequence_len,
        "sample_packing": tr.sample_packing,
        "pad_to_sequence_len": tr.pad_to_sequence_len,
        "micro_batch_size": tr.micro_batch_size,
        "gradient_accumulation_steps": tr.gradient_accumulation_steps,
        "num_epochs": int(tr.num_epochs) if float(tr.num_epochs).is_integer() else tr.num_epochs,
        "learning_rate": method.learning_rate,
        "optimizer": method.optimizer,
        "lr_scheduler": tr.lr_scheduler,
        "warmup_ratio": tr.warmup_ratio,
        "bf16": tr.bf16,
        "tf32": tr.tf32,
        "attn_implementation": fam.attn_implementation,
        "gradient_checkpointing": method.gradient_checkpointing and not fsdp,
        "seed": tr.seed,
    }
    if tr.max_steps is not None:
        axo["max_steps"] = tr.max_steps
    if tr.plugins:
        axo["plugins"] = list(tr.plugins)
        if CCE_PLUGIN in tr.plugins:
            axo["cut_cross_entropy"] = True
        if LIGER_PLUGIN in tr.plugins:
            axo.update(dict.fromkeys(LIGER_FLAGS, True))
    if method.kind == "lora":
        assert method.lora is not None  # guaranteed by MethodParams' validator
        axo.update({
            "adapter": "lora",
            "lora_r": method.lora.r,
            "lora_alpha": method.lora.alpha,
            "lora_dropout": method.lora.dropout,
            "lora_target_modules": list(method.lora.target_modules),
        })
    if fsdp:
        axo["fsdp_version"] = 2
        axo["fsdp_config"] = {
            "fsdp_version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": train.decoder_layer,
            "reshard_after_forward": True,  # FULL_SHARD in FSDP2 terms
            "activation_checkpointing": method.gradient_checkpointing,
            "state_dict_type": "FULL_STATE_DICT",
            "final_state_dict_type": "FULL_STATE_DICT",  # a plain HF checkpoint that vLLM can serve
        }
    axo.update({
        "saves_per_epoch": SAVES_PER_EPOCH,
        "save_total_limit": SAVE_TOTAL_LIMIT,
        "save_only_model": False,
        "auto_resume_from_checkpoints": True,
        "logging_steps": LOGGING_STEPS,
    })
    if overlay:
        validate_keys(overlay)
        axo = _merge(axo, overlay)
    validate_keys(axo)
    return axo


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# Keys dropped for CPU: GPU-only kernels and sharding (recipes/axolotl_cpu_lora_overlay.yml).
_CPU_DROP = ("plugins", "cut_cross_entropy", *LIGER_FLAGS, "fsdp_version", "fsdp_config",
             "model_quantization_config", "model_quantization_config_kwargs")


def cpu_overlay(axo: Mapping[str, Any]) -> dict[str, Any]:
    """The same config, runnable by `axolotl train` on CPU (the mini world).

    fp32 (no bf16/tf32), sdpa instead of flash-attn, no CCE/Liger/FSDP, no
    packing (multipack needs a varlen GPU kernel), LoRA kernels off, no pinned
    memory, and plain AdamW where the optimizer needs CUDA (8-bit states).
    """
    out = {k: copy.deepcopy(v) for k, v in axo.items() if k not in _CPU_DROP}
    out.update({
        "bf16": False, "fp16": False, "tf32": False, "attn_implementation": "sdpa",
        "sample_packing": False, "pad_to_sequence_len": False, "dataloader_pin_memory": False,
    })
    if "8bit" in str(out.get("optimizer", "")):
        out["optimizer"] = "adamw_torch"
    if out.get("adapter"):
        out.update({"lora_mlp_kernel": False, "lora_qkv_kernel": False, "lora_o_kernel": False})
    validate_keys(out)
    return out


def dump_yaml(axo: Mapping[str, Any], header: str = "") -> str:
    """YAML text in emission order, with `header` lines as comments on top."""
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + yaml.safe_dump(dict(axo), sort_keys=False, default_flow_style=False, width=100)
