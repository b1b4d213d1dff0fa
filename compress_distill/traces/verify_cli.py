"""`compress-distill verify IN.jsonl`: audit answer extraction on your own data.

Each input line is a JSON object ``{"response", "answer", "answer_type"}`` with an
optional ``"choices"`` (a count, or the list of options). Each good record is written
back unchanged plus ``extracted``, ``correct`` and ``truncated``. A line that gets no
verdict is reported as ``line N: reason`` on the error stream and skipped; the other
records are still written. That is a bad line (invalid JSON or UTF-8, JSON nested too
deeply, a line over ``MAX_LINE_BYTES``, a missing or mistyped field, an unknown
answer_type) or a record extraction cannot judge (a response or answer over
``extraction.MAX_RESPONSE_CHARS``). The caller exits non-zero when ``errors > 0``.

Memory stays bounded whatever the input: an over-long line is skipped in pieces, never
held whole, and a chunk of lines is verified once it reaches ``chunk_lines`` lines or
``CHUNK_BYTES``. A record holding lone surrogates (``"\\ud800"`` escapes in its JSON)
is written with ``\\u`` escapes, the only way to keep it in valid UTF-8.
"""

from __future__ import annotations

import json
import re
import reprlib
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor
from contextlib import ExitStack
from typing import Any, TextIO

from compress_distill.traces.extraction import ANSWER_TYPES, UNVERIFIABLE, verification_pool, verify_batch

REQUIRED = ("response", "answer", "answer_type")
# A record holds at most extraction.MAX_RESPONSE_CHARS of response, up to 6 bytes a character once
# JSON-escaped, plus its other fields: 16 MiB leaves room and still bounds one line.
MAX_LINE_BYTES = 16 * 2**20
CHUNK_BYTES = 64 * 2**20  # a chunk of lines in memory at once, whatever chunk_lines says
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_short_repr = reprlib.Repr()  # field values in messages: short, and safe on deep nesting
_short_repr.maxstring = _short_repr.maxother = 60


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
        # removesuffix: one message ("Invalid control character at") already ends in "at"
        raise RecordError(f"invalid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})") from None
    except RecursionError:  # the decoder recurses per [ or {
        raise RecordError("invalid JSON (nested too deeply)") from None
    except ValueError:  # Python refuses int literals over sys.get_int_max_str_digits()
        raise RecordError(f"invalid JSON (an integer over {sys.get_int_max_str_digits()} digits)") from None
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        raise RecordError(f"missing field(s) {', '.join(map(repr, missing))}")
    if not isinstance(record["response"], str):
        raise RecordError(f"'response' must be a string, got {type(record['response']).__name__}")
    answer = record["answer"]
    if not isinstance(answer, str | int | float) or answer == "":
        raise RecordError(f"'answer' must be a non-empty string or number, got {_short_repr.repr(answer)}")
    if record["answer_type"] not in ANSWER_TYPES:
        raise RecordError(
            f"unknown answer_type {_short_repr.repr(record['answer_type'])} "
            f"(expected one of {', '.join(ANSWER_TYPES)})"
        )
    choices = record.get("choices")
    if isinstance(choices, list):
        choices = len(choices)
    if choices is not None and (isinstance(choices, bool) or not isinstance(choices, int) or choices < 1):
        raise RecordError(
            f"'choices' must be a positive count or a list of options, got {_short_repr.repr(record['choices'])}"
        )
    return record


def _bounded_lines(stream: Iterable[str | bytes], max_len: int) -> Iterator[str | bytes | None]:
    """The stream's lines, None standing for one longer than ``max_len``. A file is read
    with readline(limit), so an over-long line is skipped in pieces and never held whole."""
    readline = getattr(stream, "readline", None)
    if readline is None:  # an in-memory iterable (a list): the same limit, nothing to save
        for line in stream:
            yield None if len(line) > max_len else line
        return
    while line := readline(max_len + 1):
        if len(line) > max_len:
            while line[-1:] not in ("\n", b"\n") and (line := readline(max_len)):
                pass  # the rest of the over-long line
            yield None
        else:
            yield line


def _chunks(lines: Iterator[str | bytes | None], max_lines: int) -> Iterator[list[tuple[int, str | bytes | None]]]:
    """Numbered lines in chunks of at most ``max_lines`` lines or about CHUNK_BYTES."""
    chunk: list[tuple[int, str | bytes | None]] = []
    size = 0
    for lineno, line in enumerate(lines, start=1):
        chunk.append((lineno, line))
        size += len(line or "")
        if len(chunk) >= max_lines or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _jsonl(record: dict[str, Any]) -> str:
    """One output line: UTF-8 text as is, except in a record with lone surrogates, which
    UTF-8 cannot encode: that one gets \\u escapes (valid JSON, read back unchanged)."""
    line = json.dumps(record, ensure_ascii=False)
    return json.dumps(record) if _SURROGATE.search(line) else line


def _emit(out: TextIO, line: str, record: dict[str, Any]) -> None:
    try:
        out.write(line + "\n")
    except UnicodeEncodeError:  # an output encoding narrower than UTF-8 (e.g. a C-locale pipe)
        out.write(json.dumps(record) + "\n")  # all ASCII; the failed write wrote nothing


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

    ``records`` counts good records written; each line without a verdict is one
    ``errors`` and one message "line N: ..." on ``err_stream`` (default stderr). Lines
    are handled in chunks so big files stream; ``workers > 1`` verifies each chunk in a
    process pool.
    """
    err = err_stream if err_stream is not None else sys.stderr
    counts = {"records": 0, "correct": 0, "errors": 0, "truncated": 0, "no_answer": 0}
    with ExitStack() as stack:
        pool: Executor | None = None
        if workers > 1:
            pool = stack.enter_context(verification_pool(workers))
        for chunk in _chunks(_bounded_lines(in_stream, MAX_LINE_BYTES), chunk_lines):
            errors: list[tuple[int, str]] = []
            _verify_chunk(chunk, out_stream, errors, counts, expect_think, pool)
            for lineno, message in sorted(errors):  # in line order, whichever step found them
                print(f"line {lineno}: {message}", file=err)
            counts["errors"] += len(errors)
    return counts


def _verify_chunk(chunk: list[tuple[int, str | bytes | None]], out_stream: TextIO, errors: list[tuple[int, str]],
                  counts: dict[str, int], expect_think: bool, pool: Executor | None) -> None:
    """Write the chunk's verified records in order; append (line, reason) for the others."""
    good: list[tuple[int, dict[str, Any]]] = []
    for lineno, raw in chunk:
        if raw is None:
            errors.append((lineno, f"line longer than the {MAX_LINE_BYTES // 2**20} MiB limit"))
        elif raw.strip():  # blank lines (e.g. a trailing newline) are not records
            try:
                good.append((lineno, parse_record(raw)))
            except RecordError as exc:
                errors.append((lineno, str(exc)))
    # JSON true/false gold becomes "True"/"False", which boolean matching reads as yes/no.
    verdicts = verify_batch([r for _, r in good], workers=1, expect_think=expect_think, executor=pool)
    for (lineno, record), verdict in zip(good, verdicts, strict=True):
        if verdict.reason == UNVERIFIABLE:  # e.g. a response over extraction.MAX_RESPONSE_CHARS
            errors.append((lineno, f"cannot verify: {verdict.error}"))
            continue
        record.update(extracted=verdict.extracted, correct=verdict.correct, truncated=verdict.truncated)
        try:
            line = _jsonl(record)
        except (ValueError, RecursionError) as exc:  # nesting that json.loads took but dumps does not
            errors.append((lineno, f"cannot write the record back ({type(exc).__name__})"))
            continue
        _emit(out_stream, line, record)
        counts["records"] += 1
        counts["correct"] += verdict.correct
        counts["truncated"] += verdict.truncated
        counts["no_answer"] += verdict.reason == "no_answer"
