"""Model families: the per-student settings that differ between Qwen3.5, Llama-3.1 and gpt-oss. Pure.

The paper's H.3 gives every student "chat template inherited from the tokenizer, EOT
`<|im_end|>`" and "FlashAttention 2". That is literally true only for Qwen; the models
prove it wrong for the others, so we follow the models (README, "Model families"):

| family  | chat template | EOT | reasoning goes in | attention | weights |
| ------- | ------------- | --- | ----------------- | --------- | ------- |
| qwen3.5 | Axolotl's `qwen3_5` (renders `reasoning_content` as `<think>`) | `<|im_end|>` | `reasoning_content` | flash_attention_2 | bf16 |
| llama3  | ours, `templates/llama3_reasoning.jinja`: the base model ships no template, and Llama-3's own drops `reasoning_content` | `<|eot_id|>` | `reasoning_content` | flash_attention_2 | bf16 |
| gpt-oss | the tokenizer's harmony template (reads `thinking`: the analysis channel) | `<|end|>`; the final turn's `<|return|>` is the eos (train_on_eos) | `thinking` | `kernels-community/vllm-flash-attn3`: transformers refuses flash_attention_2 for gpt-oss (attention sinks) | MXFP4 experts, dequantized to bf16 to train |
| chatml  | the tokenizer's own (the mini world's students) | `<|im_end|>` | `reasoning_content` | flash_attention_2 | as stored |

Sources: Axolotl 0.19's `examples/gpt-oss/gpt-oss-20b-fft-fsdp2.yaml`, `examples/qwen3.5/`,
`examples/llama-3/fft-8b-liger-fsdp.yaml` (pad `<|finetune_right_pad_id|>`) and its
`chat_templates/templates/*.jinja`; vLLM's Qwen3.5 recipe (`--language-model-only`).

Each value can be overridden per student in the config (`students.NAME.chat_template`,
`eot_tokens`, `thinking_key`, `attn_implementation`, `quantization`). The label check
(compress_distill/envchecks/check_axolotl_labels.py) uses `eot_tokens` and the source traces themselves, so it
needs no per-family reasoning marker: harmony has no `</think>`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib import resources
from typing import Any, Literal

FamilyName = Literal["qwen3.5", "llama3", "gpt-oss", "chatml"]
Quantization = Literal["mxfp4-dequantize"]


@dataclass(frozen=True)
class Family:
    name: str
    # Axolotl `chat_template`: tokenizer_default, a built-in name (qwen3_5), or `jinja` with `template_file`
    chat_template: str
    eot_tokens: tuple[str, ...]
    # the message key the chat template reads the reasoning from (Axolotl `template_thinking_key`)
    thinking_key: str
    attn_implementation: str
    quantization: Quantization | None = None
    template_file: str | None = None  # a jinja file in compress_distill/templates/, for chat_template `jinja`
    # Axolotl `special_tokens` (Llama-3 base has no pad token)
    special_tokens: tuple[tuple[str, str], ...] = ()
    # `vllm serve` flags for a checkpoint of this family (evaluation)
    serve_args: tuple[str, ...] = ()

    def template_text(self) -> str | None:
        if self.template_file is None:
            return None
        return resources.files("compress_distill").joinpath("templates", self.template_file).read_text()


# A hub kernel repo (`kernels` package), staged into the HF cache like the weights.
GPT_OSS_ATTENTION = "kernels-community/vllm-flash-attn3"

FAMILIES: dict[str, Family] = {
    # Qwen3.5 checkpoints are vision-language models; vLLM's recipe serves their text part alone.
    "qwen3.5": Family("qwen3.5", "qwen3_5", ("<|im_end|>",), "reasoning_content", "flash_attention_2",
                      serve_args=("--language-model-only",)),
    "llama3": Family("llama3", "jinja", ("<|eot_id|>",), "reasoning_content", "flash_attention_2",
                     template_file="llama3_reasoning.jinja",
                     special_tokens=(("pad_token", "<|finetune_right_pad_id|>"),)),
    # Axolotl's examples/gpt-oss: Mxfp4Config(dequantize=True), the vllm-flash-attn3 hub kernel,
    # template_thinking_key `thinking`, eot <|end|> (the final turn's <|return|> is the eos).
    "gpt-oss": Family("gpt-oss", "tokenizer_default", ("<|end|>",), "thinking", GPT_OSS_ATTENTION,
                      quantization="mxfp4-dequantize"),
    "chatml": Family("chatml", "tokenizer_default", ("<|im_end|>",), "reasoning_content", "flash_attention_2"),
}


def resolve(family: str, **overrides: Any) -> Family:
    """The family's defaults with the student's non-None overrides folded in."""
    base = FAMILIES[family]
    given: dict[str, Any] = {k: (tuple(v) if k == "eot_tokens" else v) for k, v in overrides.items() if v is not None}
    return replace(base, **given)


def quantization_config(q: Quantization | None) -> dict[str, Any]:
    """Axolotl keys for loading the weights: gpt-oss's MXFP4 experts are dequantized to train."""
    if q == "mxfp4-dequantize":
        return {"model_quantization_config": "Mxfp4Config", "model_quantization_config_kwargs": {"dequantize": True}}
    return {}
