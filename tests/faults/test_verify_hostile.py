"""Hostile model output (issue D3): every record gets a verdict or a per-record error, in
bounded time and memory, and the good records of the same batch are still verified: in
`extraction`, in `compress-distill verify` (verify_jsonl) and in the pipeline (verify and
evaluate stages, the rejection-sampling loop)."""

from __future__ import annotations

import io
import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from compress_distill.config import parse_config
from compress_distill.generation.fake_server import FakeServer, Reply, SeenRequest, completion
from compress_distill.plan import build_plan
from compress_distill.stages import StageContext
from compress_distill.stages.evaluate import run as evaluate_run
from compress_distill.stages.verify import run as verify_run
from compress_distill.store import write_parquet
from compress_distill.traces import extraction
from compress_distill.traces.extraction import (
    MAX_RESPONSE_CHARS,
    UNVERIFIABLE,
    answers_match,
    normalize_numeric,
    verify_batch,
    verify_response,
)
from compress_distill.traces.verify_cli import MAX_LINE_BYTES, verify_jsonl

from ..conftest import CONFIGS
from ..test_rejection import q as rejection_question
from ..test_rejection import run as run_rejection_rounds
from ..test_served_failures import IDS, _ctx, _run, _which

BOUND_S = 5.0  # generous: a correctness check that no input can take unbounded time, not a benchmark
FRAC_5000 = "\\frac{" + "1" * 5000 + "}{2}"  # over Python's 4,300-digit int-str limit
MIXED_5000 = "1 1/" + "7" * 5000
TOO_LONG = "<think>r</think>The answer is 7. " + "x" * MAX_RESPONSE_CHARS

# (name, response, gold, answer_type, correct, reason)
HOSTILE = [
    ("frac with 5000 digits", FRAC_5000, "1", "numeric", False, "mismatch"),
    ("mixed number, 5000-digit denominator", MIXED_5000, "1", "numeric", False, "mismatch"),
    ("boxed mixed number, 5000 digits", "\\boxed{" + MIXED_5000 + "}", "1", "numeric", False, "mismatch"),
    ("lone surrogate", "5 \ud800", "5", "numeric", True, "match"),
    ("NUL bytes", "\x00" * 1000 + "The answer is 7\x00", "7", "numeric", True, "match"),
    ("100k unclosed boxes", "\\boxed{" * 100_000, "7", "numeric", False, "no_answer"),
    ("50k nested boxes", "\\boxed{" * 50_000 + "7" + "}" * 50_000, "7", "latex", True, "match"),
    ("100k brackets", "[" * 100_000, "1", "numeric", False, "no_answer"),
    ("5000 nested parentheses", "$" + "(" * 5000 + "x" + ")" * 5000 + "$", "x", "latex", False, "mismatch"),
    # Each of these made a regex backtrack polynomially: seconds to minutes before the fix.
    ("minus then 1000 spaces", "The answer is -" + " " * 1000 + "x", "7", "numeric", False, "no_answer"),
    ("option then 50k spaces", "option" + " " * 50_000 + "1", "A", "letter", False, "no_answer"),
    ("exponent then 20k spaces", "1\\times 10^" + " " * 20_000 + "x", "7", "numeric", False, "mismatch"),
    ("10 MB response", "x" * 10_000_000 + " 7", "7", "numeric", False, UNVERIFIABLE),
    ("10 MB gold", "7", "7" * 10_000_000, "numeric", False, UNVERIFIABLE),
]


@pytest.mark.parametrize("name,response,gold,answer_type,correct,reason", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_response_gets_a_verdict_in_bounded_time(name: str, response: str, gold: str, answer_type: str,
                                                         correct: bool, reason: str) -> None:
    t0 = time.perf_counter()
    verdict = verify_response(response, gold, answer_type)
    assert time.perf_counter() - t0 < BOUND_S, name
    assert (verdict.correct, verdict.reason) == (correct, reason), verdict.error
    assert (verdict.error is not None) == (reason == UNVERIFIABLE)


def test_over_the_limit_is_unverifiable_with_the_reason() -> None:
    verdict = verify_response(TOO_LONG, "7", "numeric")
    assert (verdict.correct, verdict.extracted, verdict.reason) == (False, None, UNVERIFIABLE)
    assert verdict.error == f"response is {len(TOO_LONG):,} characters, over the {MAX_RESPONSE_CHARS:,} limit"
    assert verify_response(TOO_LONG[:MAX_RESPONSE_CHARS], "7", "numeric").correct  # at the limit: judged


def test_huge_literals_are_text_not_numbers() -> None:
    huge = "9" * 500
    assert normalize_numeric(huge) is None and normalize_numeric(f"\\frac{{{huge}}}{{2}}") is None
    assert answers_match(huge, huge, "numeric") and not answers_match(huge, "9", "numeric")
    # The huge final number is the answer: not skipped in favour of the small one before it.
    assert verify_response(f"It is 1. No: {huge}", "1", "numeric").extracted == huge
    assert normalize_numeric("9" * 400) == int("9" * 400)  # at the limit: a number


def test_normal_nesting_still_evaluates() -> None:
    assert answers_match("\\frac{\\frac{1}{2}}{\\frac{1}{4}}", "2", "latex")
    assert answers_match("((((x+1))))", "1+x", "latex")


def test_an_unexpected_error_costs_one_record(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: Any) -> None:
        raise RuntimeError("a bug on odd text")

    monkeypatch.setattr(extraction, "extract_answer", boom)
    verdict = verify_response("The answer is 7", "7", "numeric")
    assert (verdict.correct, verdict.reason, verdict.error) == (False, UNVERIFIABLE, "RuntimeError: a bug on odd text")


def test_nested_boxes_use_bounded_memory() -> None:
    text = "\\boxed{" * 5000 + "7" + "}" * 5000  # slicing every box: ~90 MB; the last 64 only: little
    tracemalloc.start()
    try:
        verdict = verify_response(text, "7", "numeric")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert verdict.correct and peak < 16 * 2**20


def test_verify_batch_in_a_pool_keeps_the_good_records() -> None:
    records = [{"response": "\\boxed{7}", "answer": "7", "answer_type": "numeric"},
               {"response": TOO_LONG, "answer": "7", "answer_type": "numeric"},
               {"response": FRAC_5000, "answer": "1", "answer_type": "numeric"},
               {"response": "\\boxed{8}", "answer": "8", "answer_type": "numeric"}]
    verdicts = verify_batch(records, workers=2, chunksize=1)
    assert [v.reason for v in verdicts] == ["match", UNVERIFIABLE, "mismatch", "match"]
    assert verify_batch(records, workers=1) == verdicts


# --------------------------------------------------------------------------- verify_jsonl

GOOD = json.dumps({"response": "<think>x</think>The answer is 7", "answer": "7", "answer_type": "numeric"}).encode()


def _line(response: str, answer: str = "7", answer_type: str = "numeric") -> bytes:
    return json.dumps({"response": response, "answer": answer, "answer_type": answer_type}).encode()


# (name, line, expected): ("record", correct) or ("error", start of the message after "line 2: ")
LINES: list[tuple[str, bytes, tuple[str, Any]]] = [
    ("frac with 5000 digits", _line(FRAC_5000, "1"), ("record", False)),
    ("mixed number, 5000 digits", _line(MIXED_5000, "1"), ("record", False)),
    ("lone surrogate", b'{"response": "5 \\ud800", "answer": "5", "answer_type": "numeric"}', ("record", True)),
    ("100k brackets", b"[" * 100_000, ("error", "invalid JSON (nested too deeply)")),
    ("10 MB response", _line("x" * 10_000_000 + " 7"), ("error", "cannot verify: response is 10,000,002 characters")),
    ("line over the limit", _line("x" * MAX_LINE_BYTES), ("error", "line longer than the 16 MiB limit")),
    ("raw NUL", b'{"response": "7\x00", "answer": "7", "answer_type": "numeric"}',
     ("error", "invalid JSON (Invalid control character at column 16)")),
    ("escaped NUL", _line("\x00 7 \x00"), ("record", True)),
    ("invalid UTF-8", b'{"response": "\xff\xfe 7", "answer": "7", "answer_type": "numeric"}',
     ("error", "not valid UTF-8")),
    ("5000-digit JSON integer", b'{"response": "7", "answer": ' + b"1" * 5000 + b', "answer_type": "numeric"}',
     ("error", "invalid JSON (an integer over 4300 digits)")),
    ("deep answer", b'{"response": "7", "answer": ' + b"[" * 500 + b"]" * 500 + b', "answer_type": "numeric"}',
     ("error", "'answer' must be a non-empty string or number, got [[[[[[[...]]]]]]]")),
    ("50k nested boxes", _line("\\boxed{" * 50_000 + "7" + "}" * 50_000, answer_type="latex"), ("record", True)),
]


def _verify_bytes(data: bytes, errors: str = "strict") -> tuple[dict[str, int], bytes, list[str]]:
    """verify_jsonl over a byte stream into a UTF-8 text stream, as the CLI runs it."""
    raw_out, err = io.BytesIO(), io.StringIO()
    out = io.TextIOWrapper(raw_out, encoding="utf-8", errors=errors, write_through=True)
    counts = verify_jsonl(io.BytesIO(data), out, err)
    out.flush()
    return counts, raw_out.getvalue(), err.getvalue().splitlines()


@pytest.mark.parametrize("name,line,expected", LINES, ids=[c[0] for c in LINES])
def test_hostile_line_gets_a_verdict_or_an_error_and_the_rest_is_verified(name: str, line: bytes,
                                                                           expected: tuple[str, Any]) -> None:
    t0 = time.perf_counter()
    counts, out, errors = _verify_bytes(b"\n".join([GOOD, line, GOOD]) + b"\n")
    assert time.perf_counter() - t0 < BOUND_S, name
    records = [json.loads(r) for r in out.decode("utf-8").splitlines()]  # strict: the output is valid UTF-8
    kind, value = expected
    if kind == "record":
        assert [r["correct"] for r in records] == [True, value, True] and errors == []
        assert counts["errors"] == 0
    else:
        assert [r["correct"] for r in records] == [True, True] and counts["errors"] == 1
        assert len(errors) == 1 and errors[0].startswith(f"line 2: {value}"), errors


def test_lone_surrogates_are_escaped_and_read_back() -> None:
    # errors="surrogateescape" is stdout under UTF-8 mode: it would write \udcff as a raw 0xff byte
    lines = [b'{"response": "5 \\ud800", "answer": "5", "answer_type": "numeric", "note": "\\udcff caf\\u00e9"}',
             GOOD.replace(b"x</think>", "caf\u00e9</think>".encode())]
    counts, out, errors = _verify_bytes(b"\n".join(lines), errors="surrogateescape")
    first, second = out.decode("utf-8").splitlines()
    assert first.isascii() and json.loads(first)["response"] == "5 \ud800" and json.loads(first)["note"] == "\udcff caf\u00e9"
    assert "caf\u00e9" in second  # records without surrogates keep their UTF-8 text
    assert counts["records"] == 2 and errors == []


def test_errors_come_in_line_order_and_line_numbers_survive_a_skipped_line() -> None:
    lines = [GOOD, _line("x" * MAX_LINE_BYTES), GOOD, TOO_LONG.join(['{"response": "', '", "answer": "7", '
                                                                     '"answer_type": "numeric"}']).encode(),
             b"{oops", GOOD]
    counts, out, errors = _verify_bytes(b"\n".join(lines) + b"\n")
    assert [e.split(":", 1)[0] for e in errors] == ["line 2", "line 4", "line 5"]
    assert "cannot verify" in errors[1] and "invalid JSON" in errors[2]
    assert counts["records"] == 3 and counts["correct"] == 3 and counts["errors"] == 3


# --------------------------------------------------------------------------- the pipeline

def _verify_stage_ctx(tmp_path: Path, responses: dict[str, str]) -> StageContext:
    plan = build_plan(parse_config(yaml.safe_load((CONFIGS / "mini-ci.yaml").read_text()), "<test>"))
    node = next(n for n in plan.nodes.values() if n.stage == "verify")
    inputs = {dep: tmp_path / dep.replace("/", "_") for dep in node.deps}
    for path in inputs.values():
        path.mkdir(parents=True)
    questions = [{"id": qid, "dataset": "add", "domain": "math", "question": f"{qid}?", "choices": None,
                  "answer": "7", "answer_type": "numeric", "split": "train"} for qid in responses]
    traces = [{"id": qid, "response": r, "round": 1, "completion_tokens": 10} for qid, r in responses.items()]
    for dep, path in inputs.items():
        if dep.startswith("prepare/"):
            write_parquet(questions, path / "questions.parquet")
        else:
            write_parquet(traces, path / "traces.parquet")
            (path / "yield.json").write_text(json.dumps([{"generator": "t", "dataset": "Total", "total": 4}]))
    (tmp_path / "out").mkdir()
    return StageContext(plan.config, node, inputs, tmp_path / "out", tmp_path / "work")


def test_verify_stage_quarantines_what_it_cannot_judge_and_keeps_the_rest(tmp_path: Path) -> None:
    ok = "<think>3 + 4</think>The answer is 7."
    ctx = _verify_stage_ctx(tmp_path, {"a": ok, "frac": f"<think>x</think>{FRAC_5000}", "long": TOO_LONG, "b": ok})
    result = verify_run(ctx)
    assert [r["id"] for r in pq.read_table(ctx.out / "traces.parquet").to_pylist()] == ["a", "b"]
    quarantined = {r["id"]: r for r in pq.read_table(ctx.out / "quarantine.parquet").to_pylist()}
    assert (quarantined["frac"]["reason"], quarantined["frac"]["detail"]) == ("mismatch", None)
    assert quarantined["long"]["reason"] == UNVERIFIABLE and "over the 1,000,000 limit" in quarantined["long"]["detail"]
    assert result.metrics["verified"] == 2 and result.metrics["quarantined"] == 2
    assert result.metrics["unverifiable"] == 1


def test_evaluate_scores_what_it_cannot_judge_wrong_and_keeps_every_record(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    hostile = {IDS[1]: f"<think>x</think>{FRAC_5000}", IDS[2]: TOO_LONG}

    def script(req: SeenRequest) -> Reply:
        qid = _which(req)
        answer = IDS.index(qid) + 1
        return Reply(200, completion(hostile.get(qid, f"<think>{answer - 1} + 1</think> The answer is {answer}.")))

    ctx = _ctx(tmp_path, "evaluate")
    with FakeServer(script) as srv:
        result = _run(evaluate_run, ctx, srv, monkeypatch)
    records = {r["id"]: r for r in pq.read_table(ctx.out / "records.parquet").to_pylist()}
    assert [records[i]["correct"] for i in IDS] == [True, False, False, True]
    assert [records[i]["verify_error"] is None for i in IDS] == [True, True, False, True]
    assert "over the 1,000,000 limit" in records[IDS[2]]["verify_error"]
    assert result.metrics["unverifiable"] == 1 and result.metrics["n"] == 4


def test_rejection_rounds_reject_what_they_cannot_judge_and_go_on(tmp_path: Path) -> None:
    questions = [rejection_question(qid, "7", "ds", "Math") for qid in ("good", "frac", "long", "also")]
    replies = {"frac": f"<think>x</think>{FRAC_5000}", "long": TOO_LONG}

    def script(req: SeenRequest) -> Reply:
        qid = (req.request_id or "").split("/", 1)[1]
        return Reply(200, completion(replies.get(qid, "<think>3 + 4</think>The answer is 7.")))

    with FakeServer(script) as srv:
        (stats,) = run_rejection_rounds(srv, questions, tmp_path, rounds=1, verifier=verify_response)
    assert stats.correct == 2 and stats.rejected == {"wrong": 1, UNVERIFIABLE: 1}
