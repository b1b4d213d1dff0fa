"""The faithfulness judge (paper appendix G): verdict model, response_format, prompt, parsing, Table 10.

The judge sees the question, the canonical answer, the raw reasoning and the compressed
reasoning (middle-truncated to 40k / 12k characters, so both ends stay visible) and returns a
`JudgeVerdict`. Its JSON schema goes out as an OpenAI `response_format` (strict), but every
response is still validated here, because some servers ignore the schema and a response cut
at max_tokens is invalid JSON: `parse_verdict` raises `JudgeParseError`, the caller retries
up to `JudgeSpec.max_attempts` times (`judge_with_retries`) and records a failure after that.

Empty inputs never reach the model: `precheck` returns the verdict for an empty original or
empty compression (failure modes `empty_original` / `empty_compressed`).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Score = Annotated[int, Field(ge=1, le=5)]
VerdictLabel = Literal["faithful", "partially_faithful", "unfaithful"]
FailureMode = Literal["contradiction", "unsupported_claim", "omitted_key_step", "answer_mismatch",
                      "overcompression", "incoherent", "empty_original", "empty_compressed"]
FAILURE_MODES: tuple[str, ...] = get_args(FailureMode)
ORIGINAL_MAX_CHARS = 40_000
COMPRESSED_MAX_CHARS = 12_000


class JudgeVerdict(BaseModel):
    """One structured verdict. Field order is the order the judge is asked to write them in."""

    model_config = ConfigDict(extra="forbid", strict=False)

    faithfulness: Score = Field(description="1-5: every claim, calculation and conclusion of the compressed "
                                            "reasoning is supported by or consistent with the original")
    coverage: Score = Field(description="1-5: the reasoning steps essential to the answer are preserved")
    clarity: Score = Field(description="1-5: the compressed reasoning is coherent and usable as a deliberation")
    verdict: VerdictLabel
    answer_alignment: bool = Field(description="the compressed reasoning, read on its own, supports the "
                                               "canonical answer")
    failure_modes: list[FailureMode] = Field(description="zero or more failure modes that apply")
    rationale: str = Field(description="a short justification")

    @field_validator("failure_modes")
    @classmethod
    def _dedupe(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


class JudgeParseError(ValueError):
    """A judge response that is not a valid verdict (bad JSON or a schema violation)."""


def verdict_schema() -> dict[str, Any]:
    """JudgeVerdict's JSON schema in OpenAI strict form (all fields required, no extra keys)."""
    schema = copy.deepcopy(JudgeVerdict.model_json_schema())
    for prop in schema["properties"].values():
        if prop.get("type") == "integer" and "minimum" in prop and "maximum" in prop:
            prop["enum"] = list(range(int(prop.pop("minimum")), int(prop.pop("maximum")) + 1))
    schema["required"] = list(schema["properties"])
    schema["additionalProperties"] = False
    return schema


def response_format(name: str = "judge_verdict") -> dict[str, Any]:
    """The OpenAI-compatible `response_format` for chat completions (vLLM honours it too)."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": verdict_schema(), "strict": True}}


# --------------------------------------------------------------------------- prompt

def middle_truncate(text: str, max_chars: int) -> str:
    """`text` if it fits, else its head and tail around a marker saying how much was cut (<= max_chars)."""
    if len(text) <= max_chars:
        return text
    cut = len(text)
    while True:
        marker = f"\n[... {cut:,} characters omitted ...]\n"
        keep = max_chars - len(marker)
        if keep < 2:
            return text[:max_chars]
        new_cut = len(text) - keep
        if new_cut == cut:
            break
        cut = new_cut
    head = (keep + 1) // 2
    return text[:head] + marker + text[len(text) - (keep - head):]


SYSTEM_PROMPT = (
    "You audit compressed reasoning traces used as training data. You compare a compressed "
    "reasoning trace against the original trace it was produced from and return a JSON verdict."
)

USER_TEMPLATE = """Question:
{question}

Canonical answer: {answer}

Original reasoning:
<original>
{original}
</original>

Compressed reasoning:
<compressed>
{compressed}
</compressed>

Judge the compressed reasoning against the original.
- faithfulness (1-5): is every claim, calculation and conclusion in the compressed reasoning supported by or consistent with the original? Omitting redundant exploration, false starts, re-checks and verbosity is acceptable and must not be penalized; adding claims, numbers or steps the original does not support is not acceptable.
- coverage (1-5): are the reasoning steps essential to reach the canonical answer preserved?
- clarity (1-5): is the compressed reasoning coherent and usable as a deliberation on its own?
- verdict: "faithful", "partially_faithful" or "unfaithful".
- answer_alignment: true if the compressed reasoning, read on its own, supports the canonical answer.
- failure_modes: any of contradiction, unsupported_claim, omitted_key_step, answer_mismatch, overcompression, incoherent, empty_original, empty_compressed (an empty list if none apply).
- rationale: one or two sentences.
Long traces are shown with their middle omitted; judge what is shown, and do not penalize the omission marker.
Answer with the JSON object only."""


def judge_messages(question: str, answer: str, original: str, compressed: str, *,
                   original_max_chars: int = ORIGINAL_MAX_CHARS,
                   compressed_max_chars: int = COMPRESSED_MAX_CHARS) -> list[dict[str, str]]:
    """Chat messages for one (question, answer, original, compressed) quadruple."""
    values = {"question": question, "answer": answer,
              "original": middle_truncate(original, original_max_chars),
              "compressed": middle_truncate(compressed, compressed_max_chars)}
    user = re.sub(r"\{(question|answer|original|compressed)\}", lambda m: values[m.group(1)], USER_TEMPLATE)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def precheck(original: str, compressed: str) -> JudgeVerdict | None:
    """The verdict for empty inputs, without asking the judge; None when the judge is needed."""
    modes: list[FailureMode] = []
    if not original.strip():
        modes.append("empty_original")
    if not compressed.strip():
        modes.append("empty_compressed")
    if not modes:
        return None
    return JudgeVerdict(faithfulness=1, coverage=1, clarity=1, verdict="unfaithful", answer_alignment=False,
                        failure_modes=modes, rationale="empty input; not sent to the judge")


# --------------------------------------------------------------------------- parsing

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S | re.I)
_THINK_CLOSE = re.compile(r"</think\s*>", re.I)


def parse_verdict(text: str | None) -> JudgeVerdict:
    """Validate one judge response; raises JudgeParseError naming what is wrong."""
    if text is None or not text.strip():
        raise JudgeParseError("empty judge response")
    body = text.strip()
    closes = list(_THINK_CLOSE.finditer(body))
    if closes:  # reasoning left in the content by a server without a reasoning parser
        body = body[closes[-1].end():].strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as err:
        start, end = body.find("{"), body.rfind("}")
        data = None
        if 0 <= start < end:  # prose around the object, from a server that ignored the schema
            try:
                data = json.loads(body[start:end + 1])
            except json.JSONDecodeError:
                pass
        if data is None:
            cut_off = body.startswith("{") and not body.endswith("}")
            hint = " (the object is cut off: was max_tokens reached?)" if cut_off else ""
            raise JudgeParseError(f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}{hint}") from None
    if not isinstance(data, dict):
        raise JudgeParseError(f"expected a JSON object, got {type(data).__name__}")
    try:
        return JudgeVerdict.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(object)'}: {e['msg']}" for e in err.errors())
        raise JudgeParseError(f"verdict fails the schema: {problems}") from None


@dataclass
class JudgeOutcome:
    verdict: JudgeVerdict | None
    attempts: int
    errors: list[str] = field(default_factory=list)


async def judge_with_retries(complete: Callable[[int], Awaitable[str | None]], max_attempts: int = 3) -> JudgeOutcome:
    """Call `complete(attempt)` until its text parses, at most `max_attempts` times."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    errors: list[str] = []
    for attempt in range(1, max_attempts + 1):
        try:
            return JudgeOutcome(parse_verdict(await complete(attempt)), attempt, errors)
        except JudgeParseError as err:
            errors.append(str(err))
    return JudgeOutcome(None, max_attempts, errors)


# --------------------------------------------------------------------------- tables

JUDGE_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("teacher", pa.string()),
    pa.field("compressor", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("domain", pa.string()),
    pa.field("faithfulness", pa.int8()),      # null when no valid verdict after all attempts
    pa.field("coverage", pa.int8()),
    pa.field("clarity", pa.int8()),
    pa.field("verdict", pa.string()),
    pa.field("answer_alignment", pa.bool_()),
    pa.field("failure_modes", pa.list_(pa.string())),
    pa.field("rationale", pa.string()),
    pa.field("attempts", pa.int32()),
    pa.field("error", pa.string()),           # the last parse error when the verdict is null
])


def verdict_row(record_id: str, outcome: JudgeOutcome, **meta: Any) -> dict[str, Any]:
    """One JUDGE_SCHEMA row (`meta`: teacher, compressor, dataset, domain)."""
    row: dict[str, Any] = {name: meta.get(name) for name in ("teacher", "compressor", "dataset", "domain")}
    row.update(id=record_id, attempts=outcome.attempts, error=outcome.errors[-1] if outcome.verdict is None
               and outcome.errors else None)
    v = outcome.verdict
    row.update(v.model_dump() if v is not None else dict.fromkeys(
        ("faithfulness", "coverage", "clarity", "verdict", "answer_alignment", "failure_modes", "rationale")))
    return row


def _pct(k: int, n: int) -> float | None:
    return 100.0 * k / n if n else None


def table10(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (compressor, domain, dataset), then `Overall` per compressor: N, mean faithfulness,
    % faithful verdicts, % aligned, failure-mode counts. Rows without a verdict are counted as
    `n_failed` and left out of the means."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        comp = str(r.get("compressor"))
        groups[(comp, str(r.get("domain")), str(r.get("dataset")))].append(r)
        groups[(comp, "Overall", "Overall")].append(r)
    out = []
    for (comp, domain, dataset), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] == "Overall",
                                                                              kv[0][1], kv[0][2])):
        ok = [r for r in rs if r.get("verdict") is not None]
        modes = Counter(m for r in ok for m in (r.get("failure_modes") or []))
        out.append({
            "compressor": comp, "domain": domain, "dataset": dataset, "n": len(ok), "n_failed": len(rs) - len(ok),
            "mean_faithfulness": math.fsum(r["faithfulness"] for r in ok) / len(ok) if ok else None,
            "pct_faithful": _pct(sum(r["verdict"] == "faithful" for r in ok), len(ok)),
            "pct_aligned": _pct(sum(bool(r["answer_alignment"]) for r in ok), len(ok)),
            **{f"fm_{m}": modes.get(m, 0) for m in FAILURE_MODES},
        })
    return out
