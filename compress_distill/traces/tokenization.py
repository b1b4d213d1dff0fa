"""Fast-tokenizer helpers: loading, batched token counts, and cutting texts to N tokens by offsets.

Everything runs on the Rust `tokenizers.Tokenizer` behind a HF fast tokenizer, batched (it
parallelizes across cores) and without building per-token Python lists.

`cut_to_tokens` is the length-matched truncation kernel. It never decodes: it cuts the
ORIGINAL string at the character offset where token N ends, so the kept text is a literal
prefix of the raw trace (decode would also normalize whitespace and could split characters).
It also avoids tokenizing the whole text: it encodes a character window sized from the
token budget and accepts the cut only when token N lies before the window's last
pre-token (word). Pre-tokenization is left-to-right with at most one character of
lookahead, so every pre-token except the last one of a prefix is exactly what the full
text produces, and the BPE tokens of a pre-token depend only on it. When that cannot be
shown (too small a window, a tokenizer without word ids), the window doubles, up to the
whole text, so the result always equals cutting the full encoding.
"""

from __future__ import annotations

import importlib
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_IMPORT_LOCK = threading.Lock()
DEFAULT_CHARS_PER_TOKEN = 4.0
WINDOW_SLACK = 1.25  # window = budget * chars/token * slack + pad: most texts settle in one pass
WINDOW_PAD = 32


def backend(tok: Any) -> Any:
    """The `tokenizers.Tokenizer` of a HF fast tokenizer (or the object itself), with no
    truncation or padding configured (a copy is made if the original has them)."""
    from tokenizers import Tokenizer

    bt = tok if isinstance(tok, Tokenizer) else getattr(tok, "backend_tokenizer", None)
    if bt is None:
        raise TypeError(f"{type(tok).__name__} is not a fast tokenizer; load it with use_fast=True "
                        "(PreTrainedTokenizerFast) or pass a tokenizers.Tokenizer")
    if bt.truncation is not None or bt.padding is not None:
        bt = Tokenizer.from_str(bt.to_str())
        bt.no_truncation()
        bt.no_padding()
    return bt


def load_tokenizer(ref: str | Path) -> Any:
    """A fast tokenizer from a `tokenizer.json` file, a local directory, a hub id, or a `mini:` model ref."""
    ref_s = str(ref)
    if ref_s.startswith("mini:"):
        recipes = importlib.import_module("compress_distill.miniworld.recipes")
        ref_s = str(recipes.resolve_model(ref_s))
    path = Path(ref_s)
    if path.is_file() and path.suffix == ".json":
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path))
    with _IMPORT_LOCK:  # transformers' lazy module init is not thread-safe (two derive steps in parallel)
        from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = AutoTokenizer.from_pretrained(ref_s)
    if getattr(tok, "backend_tokenizer", None) is None:
        # e.g. a Mistral repo whose default backend is mistral-common: use its tokenizer.json instead
        try:
            tok = PreTrainedTokenizerFast.from_pretrained(ref_s)
        except Exception as err:
            raise TypeError(f"{ref_s}: no fast tokenizer (tokenizer.json) available: {err}") from err
    return tok


def batch_lengths(tok: Any, texts: Sequence[str]) -> list[int]:
    """Token counts without special tokens, in one batched call."""
    # encode_batch, not encode_batch_fast: the "fast" variant measured no faster here (bench/)
    return [len(e) for e in backend(tok).encode_batch(list(texts), add_special_tokens=False)]


def _cut(enc: Any, text: str, limit: int, bt: Any) -> str:
    """The prefix of `text` made of the first `limit` tokens of `enc` (an encoding of a prefix of `text`)."""
    if limit <= 0:
        return ""
    span = enc.token_to_chars(limit - 1)
    if span is None:  # no offsets (should not happen for text tokens): fall back to decoding
        return str(bt.decode(enc.ids[:limit], skip_special_tokens=False))
    return text[:span[1]]


def cut_to_tokens(tok: Any, texts: Sequence[str], limits: Sequence[int],
                  chars_per_token: float | None = None) -> list[str]:
    """For each text, its prefix holding exactly its first `limit` tokens (the whole text if shorter).

    Same result as encoding each full text and cutting at the end offset of token `limit`,
    but only a window of about `limit` tokens is encoded. `chars_per_token` sizes the first
    window (default 4).
    """
    if len(texts) != len(limits):
        raise ValueError(f"{len(texts)} texts but {len(limits)} limits")
    bt = backend(tok)
    cpt = chars_per_token or DEFAULT_CHARS_PER_TOKEN
    out: list[str] = [""] * len(texts)  # a limit <= 0 keeps nothing
    windows = {i: min(len(t), int(limits[i] * cpt * WINDOW_SLACK) + WINDOW_PAD)
               for i, t in enumerate(texts) if limits[i] > 0}
    pending = sorted(windows)
    while pending:
        encs = bt.encode_batch([texts[i][:windows[i]] for i in pending], add_special_tokens=False)
        retry = []
        for i, enc in zip(pending, encs, strict=True):
            text, limit, n = texts[i], limits[i], len(enc)
            full = windows[i] >= len(text)
            if full:
                out[i] = text if n <= limit else _cut(enc, text, limit, bt)
                continue
            if n > limit:
                w_cut, w_last = enc.token_to_word(limit - 1), enc.token_to_word(n - 1)
                if w_cut is not None and w_last is not None and w_cut < w_last:
                    out[i] = _cut(enc, text, limit, bt)
                    continue
            windows[i] = min(len(text), max(windows[i] * 2, int(windows[i] * limit / max(n, 1) * WINDOW_SLACK)))
            retry.append(i)
        pending = retry
    return out


def truncate_to_tokens(tok: Any, texts: Sequence[str], limits: Sequence[int], *,
                       chars_per_token: float | None = None, tolerance: int = 1,
                       max_rounds: int = 4) -> tuple[list[str], list[int]]:
    """`cut_to_tokens`, then re-encode each cut and nudge it until its own token count is within
    `tolerance` of the limit. Returns (texts, re-encoded token counts).

    Why: a cut inside a word leaves a partial word whose stand-alone BPE can take a token or two
    more (or fewer) than it had in context. Each round moves the cut of the texts still off
    by the error, re-encoding only those; the closest cut seen is kept (the shorter on a tie).
    A character spanning several byte-level tokens (an emoji: 4) cannot be cut inside, so
    there the error can exceed `tolerance`.
    """
    limits = list(limits)
    cut = cut_to_tokens(tok, texts, limits, chars_per_token)
    counts = batch_lengths(tok, cut)
    best = list(zip(cut, counts, strict=True))
    trial, last = list(limits), list(counts)
    todo = [i for i in range(len(texts)) if abs(counts[i] - limits[i]) > tolerance]
    for _ in range(max_rounds):
        if not todo:
            break
        for i in todo:
            trial[i] = max(0, trial[i] + limits[i] - last[i])
        redo = cut_to_tokens(tok, [texts[i] for i in todo], [trial[i] for i in todo], chars_per_token)
        for i, text, n in zip(todo, redo, batch_lengths(tok, redo), strict=True):
            last[i] = n
            err, best_err = abs(n - limits[i]), abs(best[i][1] - limits[i])
            if err < best_err or (err == best_err and n < best[i][1]):  # a tie: stay within the budget
                best[i] = (text, n)
        todo = [i for i in todo if abs(best[i][1] - limits[i]) > tolerance]
    return [b[0] for b in best], [b[1] for b in best]


def cut_to_fraction(tok: Any, texts: Sequence[str], fraction: float) -> tuple[list[str], list[int]]:
    """Each text cut to its first ceil(fraction * n_tokens) tokens; also returns those targets."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    totals = batch_lengths(tok, texts)
    keep = [min(n, math.ceil(fraction * n - 1e-9)) for n in totals]  # epsilon: 0.5 * 10 is 5, not 6
    chars = sum(map(len, texts))
    cut, _ = truncate_to_tokens(tok, texts, keep, chars_per_token=chars / sum(totals) if sum(totals) else None)
    return cut, keep
