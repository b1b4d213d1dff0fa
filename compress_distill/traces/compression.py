"""Compression stage helpers (paper 3.2, appendix B): prompts, assembly, rho, Table 5 token counts.

Pure functions; the stage drives the generation client with them.

- `compression_prompt`: the compressor's user turn. `{question}` and `{trace}` are filled in
  ONE pass, so braces or a literal "{trace}" inside a question or trace are left alone.
  A per-domain prompt (`CompressorSpec.domain_prompts`) overrides the generic one.
- `assemble`: the compressor output becomes the new reasoning; the raw response's text after
  `</think>` (the verified final answer) is re-attached byte-for-byte:
  `<think>{compressed}</think>{tail}`.
- rho = len(compressed reasoning) / len(raw reasoning), in characters.

Edge cases (decided here, counted in the stats, `report.metrics.compression_stats`):
- empty compressor output -> status `empty`, `usable=False`, rho 0.0. It is kept in the table
  (the judge rates it `empty_compressed`) but derive/trainset skip it: an empty think block
  would turn the example into an answer-only one.
- output longer than the raw reasoning -> status `longer` (rho > 1), kept and usable: the paper
  keeps every compression.
- compressor stopped by its token cap (`finish_reason == "length"`) -> status `truncated`, kept.
- empty raw reasoning -> status `empty_original`, rho null (undefined), not usable.
- the compressor echoing think tags: text after its last `</think>` is used and stray tags
  removed, so the assembled response has exactly one think block.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..config import CompressorSpec
from .tokenization import batch_lengths

_SLOT = re.compile(r"\{(question|trace)\}")
_OPEN = re.compile(r"<think\s*>", re.I)
_CLOSE = re.compile(r"</think\s*>", re.I)

STATUSES = ("ok", "longer", "truncated", "empty", "empty_original")

COMPRESSED_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("dataset", pa.string()),
    pa.field("domain", pa.string()),
    pa.field("teacher", pa.string()),
    pa.field("compressor", pa.string()),
    pa.field("reasoning", pa.string()),     # the compressed reasoning (cleaned compressor output)
    pa.field("response", pa.string()),      # <think>{reasoning}</think>{raw tail}: the training target
    pa.field("raw_chars", pa.int64()),
    pa.field("compressed_chars", pa.int64()),
    pa.field("rho", pa.float64()),          # null when the raw reasoning is empty
    pa.field("status", pa.string()),        # one of STATUSES
    pa.field("usable", pa.bool_()),
    pa.field("finish_reason", pa.string()),
    # Token lengths of the raw and the compressed reasoning, by the compressor's tokenizer (Table 5's
    # token column, Fig. 2 in tokens); filled by `with_compressed_tokens` on usable rows, else null.
    pa.field("raw_tokens", pa.int64()),
    pa.field("compressed_tokens", pa.int64()),
])


@dataclass(frozen=True)
class SplitResponse:
    reasoning: str  # stripped text inside the (last) think block
    tail: str       # verbatim text after the last </think> (the final answer part)


def split_response(response: str) -> SplitResponse | None:
    """Reasoning and verbatim tail of a `<think>...</think>answer` response; None without `</think>`."""
    closes = list(_CLOSE.finditer(response))
    if not closes:
        return None
    last = closes[-1]
    opened = _OPEN.search(response)
    start = opened.end() if opened and opened.start() < last.start() else 0
    return SplitResponse(response[start:last.start()].strip(), response[last.end():])


def join_response(reasoning: str, tail: str) -> str:
    return f"<think>{reasoning}</think>{tail}"


def prompt_template(spec: CompressorSpec, domain: str | None) -> str:
    return spec.domain_prompts.get(domain, spec.prompt) if domain else spec.prompt


def render_prompt(template: str, question: str, trace: str) -> str:
    values = {"question": question, "trace": trace}
    return _SLOT.sub(lambda m: values[m.group(1)], template)


def compression_prompt(spec: CompressorSpec, question: str, trace: str, domain: str | None = None) -> str:
    """The compressor's user message for one raw reasoning trace (`question` already rendered)."""
    return render_prompt(prompt_template(spec, domain), question, trace)


def compression_inputs(spec: CompressorSpec, traces: Iterable[Mapping[str, Any]],
                       questions: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """`{id, domain, prompt}` per verified trace (question rendered with its choices, the raw
    reasoning as `{trace}`, the trace's domain picking the prompt). Traces without a question or
    without `</think>` are counted, not sent."""
    from ..datasets.schema import render_question  # local: keeps this module free of the registry

    by_id = {str(q["id"]): q for q in questions}
    stats = {"traces": 0, "requests": 0, "missing_question": 0, "no_think": 0}
    out = []
    for t in traces:
        stats["traces"] += 1
        q = by_id.get(str(t["id"]))
        parts = split_response(str(t.get("response") or ""))
        if q is None:
            stats["missing_question"] += 1
        elif parts is None:
            stats["no_think"] += 1
        else:
            domain = t.get("domain") or q.get("domain")
            question = render_question(str(q["question"]), q.get("choices"))
            out.append({"id": str(t["id"]), "domain": domain,
                        "prompt": compression_prompt(spec, question, parts.reasoning, domain)})
    stats["requests"] = len(out)
    return out, stats


def clean_output(text: str | None) -> str:
    """The compressor output as reasoning: after its last `</think>`, no stray think tags, stripped."""
    if not text:
        return ""
    closes = list(_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end():]
    return _CLOSE.sub("", _OPEN.sub("", text)).strip()


def char_ratio(compressed: str, raw: str) -> float | None:
    """rho; None when the raw reasoning is empty (the ratio is undefined)."""
    return len(compressed) / len(raw) if raw else None


def assemble(record_id: str, raw_response: str, output: str | None, *, finish_reason: str | None = None,
             canonical_answer: str | None = None, **meta: Any) -> dict[str, Any]:
    """One COMPRESSED_SCHEMA row from a verified raw response and the compressor's output.

    `meta` fills the dataset/domain/teacher/compressor columns. A raw response without
    `</think>` cannot be compressed (it never passed verification): ValueError.
    """
    parts = split_response(raw_response)
    if parts is None:
        raise ValueError(f"{record_id}: raw response has no </think>; only verified traces are compressed")
    tail = parts.tail
    if not tail.strip() and canonical_answer is not None:
        tail = f"\n\nThe answer is {canonical_answer}."  # only when the raw tail is empty
    reasoning = clean_output(output)
    rho = char_ratio(reasoning, parts.reasoning)
    if not parts.reasoning:
        status = "empty_original"
    elif not reasoning:
        status = "empty"
    elif finish_reason == "length":
        status = "truncated"
    elif rho is not None and rho > 1:
        status = "longer"
    else:
        status = "ok"
    row = {name: meta.get(name) for name in ("dataset", "domain", "teacher", "compressor")}
    row.update(id=record_id, reasoning=reasoning, response=join_response(reasoning, tail),
               raw_chars=len(parts.reasoning), compressed_chars=len(reasoning), rho=rho, status=status,
               usable=status not in ("empty", "empty_original"), finish_reason=finish_reason,
               raw_tokens=None, compressed_tokens=None)
    return row


# --------------------------------------------------------------------------- Table 5

def with_compressed_tokens(rows: Iterable[Mapping[str, Any]], tokenizer: Any,
                           raw_reasoning: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The rows with `compressed_tokens` (the compressor tokenizer's length of the compressed
    reasoning) on usable ones, for `report.metrics.compression_stats` (Table 5's token column);
    with `raw_reasoning` (id -> the raw trace's reasoning), `raw_tokens` too, by the same tokenizer."""
    out = [dict(r) for r in rows]
    usable = [r for r in out if r.get("usable")]
    for r, n in zip(usable, batch_lengths(tokenizer, [str(r["reasoning"]) for r in usable]), strict=True):
        r["compressed_tokens"] = n
    if raw_reasoning is not None:
        known = [r for r in usable if r["id"] in raw_reasoning]
        for r, n in zip(known, batch_lengths(tokenizer, [raw_reasoning[r["id"]] for r in known]), strict=True):
            r["raw_tokens"] = n
    return out
