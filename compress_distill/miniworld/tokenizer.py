"""The mini world's tokenizer: a byte-level BPE trained locally on mini-world text, saved as a HF tokenizer.

- Digits are split one by one, so numbers are sequences of digit tokens (the models
  learn arithmetic on digits, not on BPE chunks).
- `<think>`/`</think>` are added as NON-special tokens: `decode(skip_special_tokens=True)`
  keeps them, so served and evaluated text still carries the think block.
- The chat template is Qwen-style ChatML with `{% generation %}` markers around the
  assistant turn, so `return_assistant_tokens_mask` (TRL's assistant-only loss) works.
  eos is `<|im_end|>`, pad is `<|endoftext|>` (never eos, so padding is not learnt as stop).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from compress_distill.miniworld.traces import concise_trace, verbose_trace
from compress_distill.miniworld.world import (
    DOMAINS,
    assistant_text,
    compress_turn,
    generate_questions,
    prompt_text,
    user_turn,
)

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK_TOKENS = ["<think>", "</think>"]
MAX_LEN = 512

# An assistant message may carry its reasoning split out (as an OpenAI-style server returns it);
# it is rendered back into the think block so both shapes train identically.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}"
    "{%- if message.get('reasoning_content') is string -%}"
    "{{- '<think>' + message['reasoning_content'] + '</think> ' -}}"
    "{%- endif -%}"
    "{{- message['content'] + '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{%- else -%}"
    "{{- message['content'] + '<|im_end|>' -}}"
    "{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def training_corpus(n_per_domain: int, seed: int) -> Iterator[str]:
    """Every kind of text the models will read or write, from train-split questions only.

    The think markers are cut out: they are whole added tokens, so BPE merges of their
    characters would waste vocabulary.
    """
    for text in _raw_corpus(n_per_domain, seed):
        for marker in THINK_TOKENS:
            text = text.replace(marker, " ")
        yield text


def _raw_corpus(n_per_domain: int, seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    yield "system\n"
    for name in DOMAINS:
        for q in generate_questions(name, "train", n_per_domain, seed=seed):
            yield from ("user\n", "assistant\n")  # the chat roles, as often as turns occur
            verbose, ans = verbose_trace(q, rng, wrong=rng.random() < 0.3)
            yield user_turn(prompt_text(q), "concise")
            yield user_turn(prompt_text(q), "verbose")
            yield assistant_text(verbose, ans)
            yield assistant_text(concise_trace(q, "mild"), q["answer"])
            yield concise_trace(q, "aggressive")
            yield compress_turn(prompt_text(q), verbose)


def train_tokenizer(vocab_size: int = 600, n_per_domain: int = 1000, seed: int = 0) -> PreTrainedTokenizerFast:
    """Train the BPE and wrap it as a HF fast tokenizer. Deterministic for fixed arguments."""
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(THINK_TOKENS), min_frequency=2, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(training_corpus(n_per_domain, seed), trainer=trainer)
    # Whole, non-special tokens: matched before pre-tokenisation, kept by skip_special_tokens.
    bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=None, unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"], model_max_length=MAX_LEN,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok
