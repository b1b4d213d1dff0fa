"""Random-init tiny Qwen3 students and synthetic chat data, for tests and benchmarks of the trainer.

Offline and fast (a model plus tokenizer in about a second). The real mini-world
models are built by `compress_distill.miniworld`; this module only has to give the
trainer something real to train: a ChatML template with `{% generation %}` markers
(assistant-only loss), `<think>`/`</think>` as plain added tokens, digits split one
by one, and an addition-mod-10 task whose answers a tiny model can pick up quickly.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK_TOKENS = ["<think>", "</think>"]
MAX_LEN = 512

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- message['content'] + '<|im_end|>' -}}"
    "{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_FILLER = ("Let me restate the question to be sure", "I will check the result the other way round",
           "At first I thought it was different, but that is wrong", "So the sum stays the same")


def synthetic_chats(n: int, *, seed: int = 0, trace_sentences: int = 2, answer_only: bool = False
                    ) -> list[dict[str, Any]]:
    """Rows `{id, messages}` (messages as a list) for `What is (a + b) mod 10?`.

    `trace_sentences` pads the think block with filler sentences: about 12 tokens
    each, so 2 gives ~25-token traces and 8 gives ~100-token "verbose" ones.
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        ans = (a + b) % 10
        if answer_only:
            content = f" The answer is {ans}."
        else:
            core = [f"We add {a} and {b} to get {a + b}", f"Mod 10 that is {ans}"]
            filler = [rng.choice(_FILLER) for _ in range(max(0, trace_sentences - len(core)))]
            content = f"<think>{'. '.join(core[:1] + filler + core[1:])}.</think> The answer is {ans}."
        rows.append({"id": f"q{seed}-{i}", "messages": [
            {"role": "user", "content": f"What is ({a} + {b}) mod 10?"},
            {"role": "assistant", "content": content},
        ]})
    return rows


def write_chat_parquet(rows: list[dict[str, Any]], path: Path, *, messages_as_json: bool = False) -> Path:
    """Write rows to Parquet; `messages_as_json` stores the messages column as JSON strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if messages_as_json:
        rows = [{**r, "messages": json.dumps(r["messages"])} for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def build_tiny_qwen3(out_dir: Path, *, hidden: int = 32, layers: int = 2, mlp_mult: int = 3,
                     vocab_size: int = 400, seed: int = 0) -> Path:
    """Train a small BPE on the synthetic task and save it with a random-init Qwen3ForCausalLM."""
    # Heavy imports inside: importing this module stays cheap.
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS + THINK_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = ["user\n", "assistant\n"] + [m["content"] for r in synthetic_chats(300, seed=seed, trace_sentences=6)
                                         for m in r["messages"]]
    bpe.train_from_iterator(corpus, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=None, unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"], model_max_length=MAX_LEN,
    )
    # Plain (non-special) added tokens survive decode(skip_special_tokens=True).
    tok.add_tokens(THINK_TOKENS, special_tokens=False)
    tok.chat_template = CHAT_TEMPLATE

    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=mlp_mult * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=MAX_LEN,
        tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
    )
    model = Qwen3ForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
