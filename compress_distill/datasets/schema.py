"""The one normalized question schema, stable ids, canonical answers, and row validation.

Every benchmark row (HF, local file or synthetic) becomes:

| column      | type           | meaning                                                        |
|-------------|----------------|----------------------------------------------------------------|
| id          | string         | `{dataset}/{split}/{16 hex of sha256(question, choices, answer)}` |
| dataset     | string         | config name of the dataset (e.g. `gsm8k`, `mmlu-stem`)          |
| domain      | string         | the paper's group (math, science, medicine, ...)               |
| question    | string         | question text (passage/context included), choices NOT rendered |
| choices     | list<string>?  | option texts in letter order A, B, ...; null when not multiple choice |
| answer      | string         | canonical: `42`, `0.5`, `B`, `yes`/`no`, or LaTeX              |
| answer_type | string         | numeric, letter, boolean, latex                                 |
| split       | string         | the source split name (train, test, validation, dev, ...)      |

Ids are content hashes, not row indices: they survive reordering, re-downloads and
library upgrades, and an exact duplicate question in one split gets the same id (and is
quarantined as `duplicate_id`, which is what we want: it would be trained on twice).

`validate_rows` never drops silently: each rejected row comes back with a reason code
and a detail, and the caller writes them to `quarantine.parquet`.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections import Counter
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

import pyarrow as pa

ANSWER_TYPES = ("numeric", "letter", "boolean", "latex")
LETTERS = string.ascii_uppercase
ID_HEX = 16  # 64 bits: collision odds ~1e-9 at the paper's ~300k questions
# A normalizer that cannot build a row sets this key to a reason code (and REJECT_DETAIL_KEY
# to a message); validate_rows turns such rows into quarantine records.
REJECT_KEY = "_reject"
REJECT_DETAIL_KEY = "_reject_detail"

QUESTION_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("domain", pa.string(), nullable=False),
    pa.field("question", pa.string(), nullable=False),
    pa.field("choices", pa.list_(pa.string()), nullable=True),
    pa.field("answer", pa.string(), nullable=False),
    pa.field("answer_type", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
])

QUARANTINE_SCHEMA = pa.schema([
    pa.field("dataset", pa.string()),
    pa.field("split", pa.string()),
    pa.field("id", pa.string()),  # null when the row never got one
    pa.field("reason", pa.string()),  # a code from REASONS
    pa.field("detail", pa.string()),
    pa.field("row", pa.string()),  # the offending row as JSON, for auditing
])

REASONS = (
    "malformed_row",        # the native row lacks a field the normalizer needs
    "unlabeled",            # the source has no gold answer for this row (e.g. a hidden test split)
    "missing_answer",
    "invalid_answer",       # not a number / yes-no / letter for its answer type
    "empty_question",
    "empty_choice",
    "wrong_choice_count",
    "answer_out_of_range",  # letter beyond the number of choices
    "duplicate_id",
    "bad_answer_type",
    "contaminated",         # matches an evaluation question (datasets.contamination); training pool only
)


class RowError(ValueError):
    """A native row that cannot be normalized. `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def make_id(dataset: str, split: str, question: str, choices: list[str] | None, answer: str) -> str:
    """Stable content id. json.dumps of a list of str is byte-identical across Python versions."""
    payload = json.dumps([question, choices, answer], ensure_ascii=False, separators=(",", ":"))
    return f"{dataset}/{split}/{hashlib.sha256(payload.encode()).hexdigest()[:ID_HEX]}"


def canonical_numeric(value: Any) -> str:
    """`1,000` -> `1000`, `8.0` -> `8`, `0.50` -> `0.5`, `$12` -> `12`, `3/6` -> `1/2`."""
    if isinstance(value, bool):
        raise RowError("invalid_answer", f"boolean {value!r} for a numeric answer")
    text = str(value).strip().replace(",", "").replace("$", "").replace(" ", "")
    if not text:
        raise RowError("missing_answer", "empty numeric answer")
    if "/" in text:
        try:
            frac = Fraction(text)
        except (ValueError, ZeroDivisionError):
            raise RowError("invalid_answer", f"not a number: {value!r}") from None
        return str(frac.numerator) if frac.denominator == 1 else f"{frac.numerator}/{frac.denominator}"
    try:
        dec = Decimal(text)
    except InvalidOperation:
        raise RowError("invalid_answer", f"not a number: {value!r}") from None
    if not dec.is_finite():
        raise RowError("invalid_answer", f"not a finite number: {value!r}")
    if dec == dec.to_integral_value():
        return str(int(dec))
    return format(dec.normalize(), "f")  # "f": never scientific notation


def canonical_boolean(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value).strip().lower()
    if text in ("yes", "true", "1"):
        return "yes"
    if text in ("no", "false", "0"):
        return "no"
    raise RowError("invalid_answer", f"not a yes/no answer: {value!r}")


def canonical_answer(value: Any, answer_type: str) -> str:
    """The canonical answer string for one answer type (raises RowError)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowError("missing_answer", "no gold answer")
    if answer_type == "numeric":
        return canonical_numeric(value)
    if answer_type == "boolean":
        return canonical_boolean(value)
    if answer_type == "letter":
        text = str(value).strip().upper().strip("().")
        if len(text) != 1 or text not in LETTERS:
            raise RowError("invalid_answer", f"not an option letter: {value!r}")
        return text
    if answer_type == "latex":
        return str(value).strip()
    raise RowError("bad_answer_type", f"unknown answer_type {answer_type!r}")


def render_question(question: str, choices: list[str] | None) -> str:
    """The user-facing text: the question, then `A) ...` lines. Same rendering as the teacher prompt
    (generation.rejection.build_messages), so students are trained and evaluated on what the teacher saw."""
    if not choices:
        return question
    return question + "\n\n" + "\n".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(choices))


def _reject(row: Mapping[str, Any], reason: str, detail: str) -> dict[str, Any]:
    payload = {k: v for k, v in row.items() if k not in (REJECT_KEY, REJECT_DETAIL_KEY)}
    return {
        "dataset": row.get("dataset"), "split": row.get("split"), "id": row.get("id") or None,
        "reason": reason, "detail": detail,
        "row": json.dumps(payload, ensure_ascii=False, default=str, sort_keys=True),
    }


def _problem(row: Mapping[str, Any], choice_range: tuple[int, int] | None) -> tuple[str, str] | None:
    if row.get(REJECT_KEY):
        return str(row[REJECT_KEY]), str(row.get(REJECT_DETAIL_KEY) or "")
    for col in ("id", "dataset", "domain", "split"):
        if not isinstance(row.get(col), str) or not row[col]:
            return "malformed_row", f"missing {col}"
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        return "empty_question", "question is empty"
    answer_type = row.get("answer_type")
    if answer_type not in ANSWER_TYPES:
        return "bad_answer_type", f"answer_type {answer_type!r} not in {ANSWER_TYPES}"
    answer = row.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        return "missing_answer", "answer is empty"
    try:
        if canonical_answer(answer, answer_type) != answer:
            return "invalid_answer", f"answer {answer!r} is not canonical for {answer_type}"
    except RowError as err:
        return err.reason, err.detail
    choices = row.get("choices")
    if choices is not None:
        if not isinstance(choices, list | tuple) or any(not isinstance(c, str) for c in choices):
            return "malformed_row", "choices must be a list of strings"
        if any(not c.strip() for c in choices):
            return "empty_choice", f"an empty option among {len(choices)}"
    n = len(choices) if choices else 0
    if answer_type == "letter":
        lo, hi = choice_range or (2, len(LETTERS))
        if not lo <= n <= hi:
            return "wrong_choice_count", f"{n} choices, expected {lo}..{hi}"
        if LETTERS.index(answer) >= n:
            return "answer_out_of_range", f"answer {answer} but only {n} choices"
    elif choice_range is not None and not choice_range[0] <= n <= choice_range[1]:
        return "wrong_choice_count", f"{n} choices, expected {choice_range[0]}..{choice_range[1]}"
    return None


def validate_rows(
    rows: Iterable[Mapping[str, Any]],
    choice_counts: Mapping[str, tuple[int, int]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split rows into (good schema rows, quarantine records with `reason`/`detail`).

    `choice_counts` maps a dataset name to its allowed (min, max) number of choices; without
    an entry a letter question needs 2..26 choices. The first row with an id wins; later ones
    are quarantined as `duplicate_id`.
    """
    good: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    seen: set[str] = set()
    counts = choice_counts or {}
    for row in rows:
        problem = _problem(row, counts.get(str(row.get("dataset"))))
        if problem is None and row["id"] in seen:
            problem = ("duplicate_id", "an earlier row has the same id (identical question, choices and answer)")
        if problem is not None:
            bad.append(_reject(row, *problem))
            continue
        seen.add(row["id"])
        good.append({name: (list(row["choices"]) if name == "choices" and row["choices"] is not None
                            else row.get(name)) for name in QUESTION_SCHEMA.names})
    return good, bad


def reason_counts(bad: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(str(b["reason"]) for b in bad).items()))
