"""Build a tiny random-init Qwen3 causal LM + BPE tokenizer, offline, in seconds.

Used by tests and the mini world to stand up a real local server without a
model hub. The model is untrained (its outputs are noise), which is exactly
what generation tests need: real token streams, real finish reasons, real
usage counts, produced by the same code path a trained model would use.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
THINK_TOKENS = ["<think>", "</think>"]

# ChatML with a {% generation %} block so assistant-only masks work for SFT too.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}"
    "{%- else -%}"
    "{{- message['content'] + '<|im_end|>' -}}"
    "{%- endif -%}"
    "{{- '\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)


def _corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ("the a of to and is so we get first then answer number sum plus minus "
             "even odd larger smaller check wait hmm therefore").split()
    out = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        out.append(f"What is {a} plus {b}? <think>First add {a} and {b}. {a} + {b} = {a + b}.</think> "
                   f"The answer is {a + b}.")
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(5, 25))))
    return out


def build_tiny_model(out_dir: str | Path, *, hidden: int = 64, layers: int = 2, vocab: int = 400,
                     seed: int = 0) -> Path:
    """Write a tokenizer + random-init Qwen3ForCausalLM to `out_dir`; return the path."""
    # Heavy imports stay inside: importing this module must not pull torch.
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=SPECIAL_TOKENS + THINK_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(300, seed), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>", pad_token="<|pad|>", unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"], model_max_length=2048,
    )
    # Non-special added tokens: they survive decode(skip_special_tokens=True).
    hf_tok.add_tokens(THINK_TOKENS)
    hf_tok.chat_template = CHAT_TEMPLATE

    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=len(hf_tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=2048,
        tie_word_embeddings=True, eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen3ForCausalLM(cfg)
    model.generation_config.eos_token_id = hf_tok.eos_token_id
    model.generation_config.pad_token_id = hf_tok.pad_token_id
    model.save_pretrained(out)
    hf_tok.save_pretrained(out)
    log.info("tiny model (%d params) written to %s", sum(p.numel() for p in model.parameters()), out)
    return out


def ensure_tiny_model(out_dir: str | Path, **kw: int) -> Path:
    """Build once: reuse `out_dir` if a finished build is there (config.json is written before the weights,
    so the tokenizer file, written last, marks completion)."""
    out = Path(out_dir)
    if not (out / "tokenizer.json").exists():
        build_tiny_model(out, **kw)
    return out


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO)
    build_tiny_model(sys.argv[1] if len(sys.argv) > 1 else "tiny-qwen3")
