"""Derived sources: answer-only, length-matched truncation, prefix fraction, and one-sided ids."""

from __future__ import annotations

import random
from typing import Any

import pytest

from compress_distill.traces.compression import assemble, split_response
from compress_distill.traces.derive import answer_only, derive
from compress_distill.traces.tokenization import backend, batch_lengths, cut_to_fraction, cut_to_tokens
from tests.tiny_tokenizer import bytelevel, metaspace, sample_text

TAIL = "\n\nSo the answer is \\boxed{42}."


def trace(i: int, reasoning: str) -> dict[str, Any]:
    return {"id": f"q{i}", "dataset": "gsm8k", "response": f"<think>\n{reasoning}\n</think>{TAIL}"}


def make(n: int, seed: int = 0, ascii_only: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(seed)
    traces, comps = [], []
    for i in range(n):
        raw = sample_text(rng, rng.randint(60, 400), ascii_only)
        traces.append(trace(i, raw))
        short = sample_text(rng, rng.randint(3, 40))
        comps.append(assemble(f"q{i}", traces[-1]["response"], short, dataset="gsm8k", compressor="c"))
    return traces, comps


def full_cut(tok: Any, text: str, limit: int) -> str:
    """Reference: encode the whole text, cut at the end offset of token `limit`."""
    enc = backend(tok).encode(text, add_special_tokens=False)
    if len(enc) <= limit:
        return text
    if limit <= 0:
        return ""
    return text[:enc.token_to_chars(limit - 1)[1]]


def test_answer_only_strips_the_whole_think_block() -> None:
    assert answer_only(f"<think>long\nreasoning</think>{TAIL}") == "So the answer is \\boxed{42}."
    assert answer_only("reasoning</think>B") == "B"
    with pytest.raises(ValueError):
        answer_only("no block")
    res = derive("answer_only", [trace(0, "r"), {"id": "x", "response": "<think>cut off"}])
    assert [r["response"] for r in res.rows] == ["So the answer is \\boxed{42}."]
    assert res.stats["no_think"] == 1 and res.stats["traces"] == 2


def test_raw_and_compressed_sources() -> None:
    traces, comps = make(5)
    raw = derive("raw", traces)
    assert [r["response"] for r in raw.rows] == [t["response"] for t in traces]
    comp = derive("compressed", traces, compressed=comps)
    assert [r["response"] for r in comp.rows] == [c["response"] for c in comps]
    assert all(r["response"].endswith(TAIL) for r in comp.rows)
    with pytest.raises(ValueError, match="compressed rows"):
        derive("compressed", traces)


@pytest.mark.parametrize(("trim_offsets", "ascii_only"), [(False, True), (True, True), (False, False)])
def test_truncation_matches_compressor_token_length(trim_offsets: bool, ascii_only: bool) -> None:
    tok = bytelevel(trim_offsets)
    traces, comps = make(200, ascii_only=ascii_only)
    # ASCII text: within one token. A multi-token character (this tiny vocab spells an emoji in
    # 4 byte tokens) cannot be cut inside: then within 3, and never over by more than one.
    tolerance = 1 if ascii_only else 3
    res = derive("truncated_to_match", traces, compressed=comps, tokenizer=tok)
    assert len(res.rows) == 200 and res.stats["missing_compressed"] == 0
    budgets = batch_lengths(tok, [c["reasoning"] for c in comps])
    for row, t, budget in zip(res.rows, traces, budgets, strict=True):
        parts = split_response(row["response"])
        raw = split_response(t["response"])
        assert parts is not None and raw is not None
        assert parts.tail == TAIL  # final answer byte-for-byte
        assert raw.reasoning.startswith(parts.reasoning)  # a literal prefix, not a decode
        assert row["target_tokens"] == budget
        n = batch_lengths(tok, [parts.reasoning])[0]
        assert abs(n - budget) <= tolerance and n <= budget + 1, (n, budget)


@pytest.mark.parametrize("make_tok", [lambda: bytelevel(False), lambda: bytelevel(True), metaspace])
def test_windowed_cut_equals_cutting_the_full_encoding(make_tok: Any) -> None:
    tok = make_tok()
    rng = random.Random(1)
    texts = [sample_text(rng, rng.randint(1, 300)) for _ in range(300)]
    texts += ["", "x" * 5000, "9" * 3000, "    \n\n   " * 50, "🙂" * 200, "a b " * 10 + "z" * 900]
    limits = [rng.choice([0, 1, 2, 5, 17, 60, 150, 400, 2000]) for _ in texts]
    got = cut_to_tokens(tok, texts, limits, chars_per_token=rng.choice([1.0, 4.0, 9.0]))
    assert got == [full_cut(tok, t, n) for t, n in zip(texts, limits, strict=True)]


def test_cut_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        cut_to_tokens(bytelevel(), ["a"], [1, 2])


def test_compression_longer_than_raw_keeps_the_whole_raw_trace() -> None:
    t = trace(0, "short reasoning")
    c = assemble("q0", t["response"], "a much much longer compressed reasoning than the raw one, really")
    res = derive("truncated_to_match", [t], compressed=[c], tokenizer=bytelevel())
    assert res.rows[0]["response"] == "<think>short reasoning</think>" + TAIL
    assert res.stats["not_cut"] == 1


def test_missing_ids_on_either_side_are_counted() -> None:
    traces, comps = make(6)
    comps_missing = comps[:4] + [assemble("ghost", traces[0]["response"], "x")]  # q4, q5 lack a compression
    comps_missing[1] = {**comps_missing[1], "reasoning": "", "usable": False}  # q1: empty compression
    res = derive("truncated_to_match", traces, compressed=comps_missing, tokenizer=bytelevel())
    assert sorted(r["id"] for r in res.rows) == ["q0", "q2", "q3"]
    assert res.stats["missing_compressed"] == 3  # q1 (unusable), q4, q5
    assert res.stats["unusable_compressed"] == 1
    assert res.stats["missing_trace"] == 1  # ghost
    comp = derive("compressed", traces, compressed=comps_missing)
    assert sorted(r["id"] for r in comp.rows) == ["q0", "q2", "q3"]


def test_prefix_fraction() -> None:
    tok = bytelevel()
    traces, _ = make(50, ascii_only=True)
    res = derive("prefix_fraction", traces, tokenizer=tok, fraction=0.5)
    for row, t in zip(res.rows, traces, strict=True):
        raw = split_response(t["response"])
        cut = split_response(row["response"])
        assert raw is not None and cut is not None and cut.tail == TAIL
        n = batch_lengths(tok, [raw.reasoning])[0]
        assert row["target_tokens"] == -(-n // 2)
        assert abs(batch_lengths(tok, [cut.reasoning])[0] - row["target_tokens"]) <= 1
        assert raw.reasoning.startswith(cut.reasoning)
    whole = derive("prefix_fraction", traces, tokenizer=tok, fraction=1.0)
    assert [r["response"] for r in whole.rows] == [
        f"<think>{split_response(t['response']).reasoning}</think>{TAIL}" for t in traces]  # type: ignore[union-attr]
    assert cut_to_fraction(tok, ["one two three four"], 0.5)[1] == [-(-batch_lengths(tok, ["one two three four"])[0]
                                                                    // 2)]
    with pytest.raises(ValueError):
        derive("prefix_fraction", traces, tokenizer=tok)
    with pytest.raises(ValueError):
        cut_to_fraction(tok, ["a"], 0.0)


def test_unknown_kind_and_missing_tokenizer() -> None:
    with pytest.raises(ValueError, match="unknown"):
        derive("distilled", [])
    with pytest.raises(ValueError, match="tokenizer"):
        derive("truncated_to_match", [trace(0, "r")], compressed=[])


def test_backend_with_truncation_is_copied_not_mutated() -> None:
    tok = bytelevel()
    bt = tok.backend_tokenizer
    tok("some text here", truncation=True, max_length=2)  # leaves truncation configured on the backend
    if bt.truncation is not None:
        clean = backend(tok)
        assert clean.truncation is None and clean is not bt
    assert batch_lengths(tok, ["one two three four five six"])[0] > 2


def test_load_tokenizer_from_local_files(tmp_path: Any) -> None:
    from compress_distill.traces.tokenization import load_tokenizer

    tok = bytelevel()
    tok.save_pretrained(tmp_path / "tok")
    text = "the answer is 42"
    from_dir = load_tokenizer(tmp_path / "tok")
    from_json = load_tokenizer(tmp_path / "tok" / "tokenizer.json")
    assert batch_lengths(from_dir, [text]) == batch_lengths(from_json, [text]) == batch_lengths(tok, [text])
