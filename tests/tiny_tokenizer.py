"""Tiny BPE tokenizers trained in-process (no hub) for tokenizer-dependent tests."""

from __future__ import annotations

import random
from functools import cache

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

WORDS = ("the", "answer", "is", "so", "we", "need", "to", "compute", "sum", "of", "and", "then", "check",
         "wait", "let", "me", "think", "again", "patient", "dose", "mg", "option", "because", "therefore",
         "total", "apples", "each", "box", "has", "equals", "hmm", "actually", "first", "second")
EXTRA = ("café", "naïve", "β-blocker", "中文", "🙂", "x^2", "\\frac{1}{2}", "====", "...", "1,000", "3.14")


def sample_text(rng: random.Random, n_words: int, ascii_only: bool = False) -> str:
    parts = []
    extra = [e for e in EXTRA if e.isascii()] if ascii_only else EXTRA
    for _ in range(n_words):
        r = rng.random()
        if r < 0.08:
            parts.append(str(rng.randint(0, 99999)))
        elif r < 0.12:
            parts.append(rng.choice(extra))
        elif r < 0.16:
            parts.append(rng.choice([".", ",", "?", "\n", "\n\n", "  ", ":"]))
        else:
            parts.append(rng.choice(WORDS))
    return " ".join(parts)


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [sample_text(rng, rng.randint(20, 120)) for _ in range(n)]


@cache
def bytelevel(trim_offsets: bool = False) -> PreTrainedTokenizerFast:
    """GPT-2 style byte-level BPE (regex pre-tokenizer, as Llama-3 / Qwen / Tekken use)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=trim_offsets)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|im_end|>", "<think>", "</think>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>")


@cache
def metaspace() -> Tokenizer:
    """SentencePiece-like BPE whose whole text is one pre-token (no word ids to prove a cut safe)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"], show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    return tok
