"""Derived training targets from verified traces (paper 3.3 and the truncation ablation, appendix E).

Every source maps verified teacher responses (`id`, `response` = `<think>R</think>tail`) to an
assistant target per id; the verified final-answer `tail` is always kept byte-for-byte:

- `raw`: the response as generated.
- `compressed`: the compression stage's assembled response (`compression.assemble`).
- `answer_only`: the think block removed, only the final answer text left.
- `truncated_to_match`: R cut to as many tokens of the COMPRESSOR's tokenizer as that
  compressor's reasoning for the same id has (cut by character offsets, see
  `tokenization.cut_to_tokens`; after re-encoding the cut text the count may differ by one).
- `prefix_fraction`: R cut to its first ceil(p * n) tokens ("Distilling the Essence").

Ids present on one side only (a trace without a usable compression, a compression without
a verified trace) and traces without `</think>` are counted in `stats` and logged, never
silently lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from .compression import join_response, split_response
from .tokenization import backend, batch_lengths, cut_to_fraction, truncate_to_tokens

log = logging.getLogger(__name__)

KINDS = ("raw", "compressed", "answer_only", "truncated_to_match", "prefix_fraction")

DERIVED_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("dataset", pa.string()),
    pa.field("response", pa.string(), nullable=False),  # the assistant target
    pa.field("target_tokens", pa.int64()),  # truncation kinds: the token budget of the reasoning; else null
])


@dataclass
class DeriveResult:
    kind: str
    rows: list[dict[str, Any]]
    stats: dict[str, int] = field(default_factory=dict)


def answer_only(response: str) -> str:
    """The response with its whole think block removed: only the final answer text."""
    parts = split_response(response)
    if parts is None:
        raise ValueError("response has no </think>: cannot separate the final answer")
    return parts.tail.strip()


def _traces(traces: Iterable[Mapping[str, Any]], stats: dict[str, int]) -> list[tuple[Mapping[str, Any], Any]]:
    """(trace, SplitResponse) for traces with a closed think block; the others are counted."""
    out = []
    for t in traces:
        stats["traces"] += 1
        parts = split_response(str(t.get("response") or ""))
        if parts is None:
            stats["no_think"] += 1
            continue
        out.append((t, parts))
    return out


def _row(t: Mapping[str, Any], response: str, target_tokens: int | None = None) -> dict[str, Any]:
    return {"id": t["id"], "dataset": t.get("dataset"), "response": response, "target_tokens": target_tokens}


def _match(pairs: list[tuple[Mapping[str, Any], Any]], compressed: Iterable[Mapping[str, Any]],
           stats: dict[str, int]) -> list[tuple[Mapping[str, Any], Any, Mapping[str, Any]]]:
    """Join traces with usable compressions by id, counting what is on one side only."""
    by_id: dict[str, Mapping[str, Any]] = {}
    for c in compressed:
        if c.get("usable", True) and (c.get("reasoning") or "").strip():
            by_id[str(c["id"])] = c
        else:
            stats["unusable_compressed"] += 1
    trace_ids = {str(t["id"]) for t, _ in pairs}
    stats["missing_trace"] += sum(1 for cid in by_id if cid not in trace_ids)
    out = []
    for t, parts in pairs:
        match = by_id.get(str(t["id"]))
        if match is None:
            stats["missing_compressed"] += 1
        else:
            out.append((t, parts, match))
    return out


def derive(kind: str, traces: Iterable[Mapping[str, Any]], *, compressed: Iterable[Mapping[str, Any]] | None = None,
           tokenizer: Any = None, fraction: float | None = None) -> DeriveResult:
    """Targets of one data-source kind. `compressed` (COMPRESSED_SCHEMA rows of one compressor) is
    needed by `compressed` and `truncated_to_match`; `tokenizer` (the compressor's, for
    truncated_to_match) by both truncation kinds; `fraction` by `prefix_fraction`."""
    if kind not in KINDS:
        raise ValueError(f"unknown data-source kind {kind!r}; known: {', '.join(KINDS)}")
    stats = dict.fromkeys(("traces", "no_think", "missing_compressed", "missing_trace", "unusable_compressed",
                           "not_cut", "rows"), 0)
    pairs = _traces(traces, stats)
    rows: list[dict[str, Any]] = []
    if kind == "raw":
        rows = [_row(t, str(t["response"])) for t, _ in pairs]
    elif kind == "answer_only":
        rows = [_row(t, p.tail.strip()) for t, p in pairs]
    elif kind in ("compressed", "truncated_to_match"):
        if compressed is None:
            raise ValueError(f"kind {kind!r} needs the compressor's compressed rows")
        matched = _match(pairs, compressed, stats)
        if kind == "compressed":
            rows = [_row(t, str(c["response"])) for t, _, c in matched]
        else:
            rows = _truncate_to_match(matched, _need(tokenizer, kind), stats)
    else:
        if fraction is None:
            raise ValueError("kind 'prefix_fraction' needs 'fraction'")
        rows = _prefix(pairs, _need(tokenizer, kind), fraction, stats)
    stats["rows"] = len(rows)
    lost = {k: v for k, v in stats.items() if k in ("no_think", "missing_compressed", "missing_trace",
                                                     "unusable_compressed") and v}
    if lost:
        log.warning("derive %s: %d rows from %d traces; not derived: %s", kind, len(rows), stats["traces"], lost)
    return DeriveResult(kind, rows, stats)


def _need(tokenizer: Any, kind: str) -> Any:
    if tokenizer is None:
        raise ValueError(f"kind {kind!r} needs a tokenizer")
    return backend(tokenizer)  # resolved once: the helpers below each take it as is


def _truncate_to_match(matched: Sequence[tuple[Mapping[str, Any], Any, Mapping[str, Any]]], tokenizer: Any,
                       stats: dict[str, int]) -> list[dict[str, Any]]:
    comp = [str(c["reasoning"]) for _, _, c in matched]
    budgets = batch_lengths(tokenizer, comp)
    total_tokens = sum(budgets)
    cpt = sum(map(len, comp)) / total_tokens if total_tokens else None  # sizes the first encode window
    raw = [p.reasoning for _, p, _ in matched]
    cut, _ = truncate_to_tokens(tokenizer, raw, budgets, chars_per_token=cpt)
    rows = []
    for (t, p, _), text, budget in zip(matched, cut, budgets, strict=True):
        stats["not_cut"] += text == p.reasoning  # the compression was not shorter in tokens
        rows.append(_row(t, join_response(text, p.tail), budget))
    return rows


def _prefix(pairs: Sequence[tuple[Mapping[str, Any], Any]], tokenizer: Any, fraction: float,
            stats: dict[str, int]) -> list[dict[str, Any]]:
    cut, kept = cut_to_fraction(tokenizer, [p.reasoning for _, p in pairs], fraction)
    rows = []
    for (t, p), text, k in zip(pairs, cut, kept, strict=True):
        stats["not_cut"] += text == p.reasoning
        rows.append(_row(t, join_response(text, p.tail), k))
    return rows
