"""`compress-distill verify IN.jsonl`: audit answer extraction on your own data.

Each input line is a JSON object ``{"response", "answer", "answer_type"}`` with an
optional ``"choices"`` (a count, or the list of options). Each good record is written
back unchanged plus ``extracted``, ``correct`` and ``truncated``. A bad line (invalid
JSON or UTF-8, a missing or mistyped field, an unknown answer_type) is reported with
its line number and skipped; the other records are still written. The caller exits
non-zero when ``errors > 0``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from concurrent.futures import Executor
from contextlib import ExitStack
from itertools import islice
from typing import Any, TextIO

from compress_distill.extraction import ANSWER_TYPES, verification_pool, verify_batch

REQUIRED = ("response", "answer", "answer_type")


class RecordError(ValueError):
    pass


def parse_record(line: str | bytes) -> dict[str, Any]:
    """One JSONL line -> a record dict, or RecordError saying what is wrong with it."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecordError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    line = line.lstrip("\ufeff")  # a BOM from Windows editors
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RecordError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        raise RecordError(f"missing field(s) {', '.join(map(repr, missing))}")
    if not isinstance(record["response"], str):
        raise RecordError(f"'response' must be a string, got {type(record['response']).__name__}")
    answer = record["answer"]
    if not isinstance(answer, str | int | float) or answer == "":
        raise RecordError(f"'answer' must be a non-empty string or number, got {answer!r}")
    if record["answer_type"] not in ANSWER_TYPES:
        raise RecordError(
            f"unknown answer_type {record['answer_type']!r} (expected one of {', '.join(ANSWER_TYPES)})"
        )
    choices = record.get("choices")
    if isinstance(choices, list):
        choices = len(choices)
    if choices is not None and (isinstance(choices, bool) or not isinstance(choices, int) or choices < 1):
        raise RecordError(f"'choices' must be a positive count or a list of options, got {record['choices']!r}")
    return record


def verify_jsonl(
    in_stream: Iterable[str | bytes],
    out_stream: TextIO,
    err_stream: TextIO | None = None,
    *,
    workers: int = 1,
    expect_think: bool = False,
    chunk_lines: int = 2048,
) -> dict[str, int]:
    """Verify a JSONL stream; returns counts {records, correct, errors, truncated, no_answer}.

    ``records`` counts good records written; each bad line is one ``errors`` and one
    message "line N: ..." on ``err_stream`` (default stderr). Lines are handled in
    chunks so big files stream; ``workers > 1`` verifies each chunk in a process pool.
    """
    err = err_stream if err_stream is not None else sys.stderr
    counts = {"records": 0, "correct": 0, "errors": 0, "truncated": 0, "no_answer": 0}
    lines = enumerate(in_stream, start=1)
    with ExitStack() as stack:
        pool: Executor | None = None
        if workers > 1:
            pool = stack.enter_context(verification_pool(workers))
        while chunk := list(islice(lines, chunk_lines)):
            good: list[dict[str, Any]] = []
            for lineno, raw in chunk:
                if not raw.strip():
                    continue  # blank lines (e.g. a trailing newline) are not records
                try:
                    good.append(parse_record(raw))
                except RecordError as exc:
                    counts["errors"] += 1
                    print(f"line {lineno}: {exc}", file=err)
            # JSON true/false gold becomes "True"/"False", which boolean matching reads as yes/no.
            verdicts = verify_batch(good, workers=1, expect_think=expect_think, executor=pool)
            for record, verdict in zip(good, verdicts, strict=True):
                record.update(extracted=verdict.extracted, correct=verdict.correct, truncated=verdict.truncated)
                out_stream.write(json.dumps(record, ensure_ascii=False) + "\n")
                counts["records"] += 1
                counts["correct"] += verdict.correct
                counts["truncated"] += verdict.truncated
                counts["no_answer"] += verdict.reason == "no_answer"
    return counts
