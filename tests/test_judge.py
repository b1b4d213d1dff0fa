"""Faithfulness judge: schema/response_format, parsing with clear errors, retries, truncation, Table 10."""

from __future__ import annotations

import asyncio
import json

import pyarrow as pa
import pytest

from compress_distill.traces.judge import (
    FAILURE_MODES,
    JUDGE_SCHEMA,
    JudgeOutcome,
    JudgeParseError,
    JudgeVerdict,
    judge_messages,
    judge_with_retries,
    middle_truncate,
    parse_verdict,
    precheck,
    response_format,
    table10,
    verdict_row,
)

GOOD = {"faithfulness": 5, "coverage": 4, "clarity": 5, "verdict": "faithful", "answer_alignment": True,
        "failure_modes": [], "rationale": "Keeps every step."}


def test_failure_modes_are_the_papers() -> None:
    assert FAILURE_MODES == ("contradiction", "unsupported_claim", "omitted_key_step", "answer_mismatch",
                             "overcompression", "incoherent", "empty_original", "empty_compressed")


def test_response_format_is_strict_json_schema() -> None:
    rf = response_format()
    assert rf["type"] == "json_schema"
    js = rf["json_schema"]
    assert js["strict"] is True and js["name"] == "judge_verdict"
    schema = js["schema"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == set(schema["properties"]) == set(JudgeVerdict.model_fields)
    assert schema["properties"]["faithfulness"]["enum"] == [1, 2, 3, 4, 5]
    assert schema["properties"]["verdict"]["enum"] == ["faithful", "partially_faithful", "unfaithful"]
    assert schema["properties"]["failure_modes"]["items"]["enum"] == list(FAILURE_MODES)
    assert "$defs" not in schema and "default" not in json.dumps(schema)
    json.dumps(rf)  # serializable as a request body


def test_parse_valid_verdicts() -> None:
    v = parse_verdict(json.dumps(GOOD))
    assert v.faithfulness == 5 and v.verdict == "faithful" and v.failure_modes == []
    fenced = "```json\n" + json.dumps(GOOD) + "\n```"
    assert parse_verdict(fenced) == v
    assert parse_verdict("<think>let me judge</think>\n" + json.dumps(GOOD)) == v
    assert parse_verdict("Here is my verdict: " + json.dumps(GOOD) + " Thanks.") == v
    dup = parse_verdict(json.dumps({**GOOD, "failure_modes": ["incoherent", "incoherent"]}))
    assert dup.failure_modes == ["incoherent"]


@pytest.mark.parametrize(("text", "match"), [
    (None, "empty"),
    ("   ", "empty"),
    ('{"faithfulness": 5, "coverage": 4, "clar', "invalid JSON.*cut off"),
    ("not json at all", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({**GOOD, "faithfulness": 7}), "faithfulness"),
    (json.dumps({**GOOD, "faithfulness": 0}), "faithfulness"),
    (json.dumps({**GOOD, "verdict": "mostly"}), "verdict"),
    (json.dumps({**GOOD, "failure_modes": ["typo"]}), "failure_modes"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "rationale"}), "rationale"),
    (json.dumps({**GOOD, "extra": 1}), "extra"),
])
def test_invalid_verdicts_raise_clear_errors(text: str | None, match: str) -> None:
    with pytest.raises(JudgeParseError, match=match):
        parse_verdict(text)


def test_retries_are_bounded() -> None:
    replies = iter(["garbage", '{"faithfulness": 9}', json.dumps(GOOD)])

    async def complete(attempt: int) -> str:
        return next(replies)

    out = asyncio.run(judge_with_retries(complete, max_attempts=3))
    assert out.verdict is not None and out.attempts == 3 and len(out.errors) == 2

    calls = []

    async def always_bad(attempt: int) -> str:
        calls.append(attempt)
        return "nope"

    out = asyncio.run(judge_with_retries(always_bad, max_attempts=2))
    assert out.verdict is None and calls == [1, 2] and len(out.errors) == 2


def test_middle_truncation_keeps_both_ends() -> None:
    text = "HEAD-" + "x" * 100_000 + "-TAIL"
    cut = middle_truncate(text, 40_000)
    assert len(cut) <= 40_000 and cut.startswith("HEAD-") and cut.endswith("-TAIL")
    assert "characters omitted" in cut
    omitted = int(cut.split("[... ")[1].split(" characters")[0].replace(",", ""))
    kept = len(cut.split("\n[...")[0]) + len(cut.split("...]\n")[1])
    assert kept + omitted == len(text)
    assert middle_truncate("short", 100) == "short"


def test_judge_prompt_contains_both_traces_truncated() -> None:
    original = "ORIG-START " + "o" * 50_000 + " ORIG-END"
    compressed = "COMP-START " + "c" * 20_000 + " COMP-END"
    msgs = judge_messages("What is {x}?", "B", original, compressed)
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    for marker in ("ORIG-START", "ORIG-END", "COMP-START", "COMP-END", "What is {x}?", "Canonical answer: B"):
        assert marker in user
    assert len(user) < 40_000 + 12_000 + 3_000
    assert "unsupported" in user and "redundant exploration" in user


def test_precheck_handles_empty_inputs() -> None:
    assert precheck("some reasoning", "short") is None
    v = precheck("some reasoning", "  ")
    assert v is not None and v.failure_modes == ["empty_compressed"] and v.verdict == "unfaithful"
    both = precheck("", "")
    assert both is not None and both.failure_modes == ["empty_original", "empty_compressed"]


def test_table10_summary() -> None:
    def row(i: int, comp: str, dataset: str, domain: str, **over: object) -> dict[str, object]:
        v = JudgeVerdict.model_validate({**GOOD, **over})
        return verdict_row(f"{i}", JudgeOutcome(v, 1), compressor=comp, dataset=dataset, domain=domain)

    rows = [
        row(1, "llama", "gsm8k", "math"),
        row(2, "llama", "gsm8k", "math", faithfulness=3, verdict="partially_faithful",
            failure_modes=["omitted_key_step"]),
        row(3, "llama", "medqa", "medicine", answer_alignment=False, verdict="unfaithful", faithfulness=2,
            failure_modes=["answer_mismatch", "unsupported_claim"]),
        verdict_row("4", JudgeOutcome(None, 3, ["bad", "worse"]), compressor="llama", dataset="medqa",
                    domain="medicine"),
        row(5, "ministral", "gsm8k", "math"),
    ]
    pa.Table.from_pylist(rows, schema=JUDGE_SCHEMA)  # rows fit the table schema
    assert rows[3]["error"] == "worse" and rows[3]["verdict"] is None
    t = table10(rows)
    assert [(r["compressor"], r["dataset"]) for r in t] == [
        ("llama", "gsm8k"), ("llama", "medqa"), ("llama", "Overall"), ("ministral", "gsm8k"), ("ministral", "Overall")]
    g = t[0]
    assert g["n"] == 2 and g["mean_faithfulness"] == 4.0 and g["pct_faithful"] == 50.0 and g["pct_aligned"] == 100.0
    assert g["fm_omitted_key_step"] == 1
    m = t[1]
    assert m["n"] == 1 and m["n_failed"] == 1 and m["pct_aligned"] == 0.0 and m["fm_answer_mismatch"] == 1
    o = t[2]
    assert o["n"] == 3 and o["n_failed"] == 1 and o["mean_faithfulness"] == pytest.approx(10 / 3)
    assert o["pct_faithful"] == pytest.approx(100 / 3)
    assert sum(o[f"fm_{m}"] for m in FAILURE_MODES) == 3
