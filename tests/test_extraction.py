"""Hand-written table of answer-extraction and verification cases (issue 3, item 2)."""

from __future__ import annotations

import io
import json
import threading
from fractions import Fraction

import pytest

from compress_distill.traces import extraction
from compress_distill.traces.extraction import (
    answers_match,
    extract_answer,
    normalize_boolean,
    normalize_numeric,
    split_think,
    verify_batch,
    verify_response,
)
from compress_distill.traces.verify_cli import verify_jsonl

F = Fraction

# --------------------------------------------------------------------------- think block
# (response, expect_think, reasoning, answer_text, has_close, truncated)
SPLIT_CASES = [
    ("<think>step 1</think>The answer is 4.", False, "step 1", "The answer is 4.", True, False),
    ("<think>\nlong\n</think>\n\n42\n", False, "long", "42", True, False),
    ("reasoning only in prompt-opened block</think>B", False, "reasoning only in prompt-opened block", "B", True, False),
    ("<think>never closed, \\boxed{5}", False, "never closed, \\boxed{5}", "", False, True),
    ("plain answer 7", False, "", "plain answer 7", False, False),
    ("plain answer 7", True, "plain answer 7", "", False, True),
    ("", False, "", "", False, False),
    ("", True, "", "", False, True),
    ("<think></think>", False, "", "", True, False),
    ("<think>only thinking</think>", False, "only thinking", "", True, False),
    ("<think>a</think>draft</think>final 3", False, "a</think>draft", "final 3", True, False),
    ("<THINK>x</THINK>y", False, "x", "y", True, False),
    ("Sure. <think>x</think> 9", False, "x", "9", True, False),
]


@pytest.mark.parametrize("response,expect_think,reasoning,answer_text,has_close,truncated", SPLIT_CASES)
def test_split_think(
    response: str, expect_think: bool, reasoning: str, answer_text: str, has_close: bool, truncated: bool
) -> None:
    split = split_think(response, expect_think=expect_think)
    assert (split.reasoning, split.answer_text, split.has_close, split.truncated) == (
        reasoning,
        answer_text,
        has_close,
        truncated,
    )


# --------------------------------------------------------------------------- extraction
# (text after </think>, answer_type, choices, expected extracted string or None)
NUMERIC = [
    ("The answer is 42.", "42"),
    ("the answer is 1,000 apples.", "1,000"),
    ("Final answer: 1,234,567", "1,234,567"),
    ("So she has \\boxed{18} dollars.", "18"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\dfrac{3}{4}}", "\\dfrac{3}{4}"),
    ("\\boxed{x = 5}", "5"),
    ("\\boxed{5 \\text{ cm}^2}", "5"),
    ("\\boxed{\\$12.50}", "12.50"),
    ("\\boxed{1{,}000}", "1,000"),
    ("\\boxed 7", "7"),
    ("First \\boxed{3}, then corrected: \\boxed{4}", "4"),
    ("\\boxed{\\boxed{9}}", "9"),
    ("\\boxed{12 \\text{ apples}}", "12"),
    ("\\boxed{-3}", "-3"),
    ("\\boxed{\\text{no idea}} but the answer is 6", "6"),
    ("\\boxed{5} and later the answer is 6", "5"),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
    ("#### 1,000", "1,000"),
    ("#### 5\nsome trailing text 9", "5"),
    ("The answer is: 42", "42"),
    ("The answer is:\n\n42", "42"),
    ("**Final Answer:** 17", "17"),
    ("The final answer is $\\frac{7}{2}$.", "\\frac{7}{2}"),
    ("The answer is x = 8.", "8"),
    ("The answer is -7 degrees.", "-7"),
    ("The answer is 3.5.", "3.5"),
    ("The answer is 12% of the total.", "12"),
    ("The answer is $12.", "12"),
    ("The answer is 1.5e3 joules", "1.5e3"),
    ("The answer is 42. Check: 6*7=42.", "42"),
    ("The answer is 5 because 2+3=5 and 1+1=2.", "5"),
    ("Let me find the answer: the total is 5 + 3 = 8", "8"),
    ("The answer is approximately 3.14 m", "3.14"),
    ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs, making 9 * 2 = $<<9*2=18>>18.\n#### 18", "18"),
    ("The answer is $\\boxed{18}$.", "18"),
    ("\\boxed{2x = 10}", "10"),
    ("The answer is (-5).", "-5"),
    ("the answer is 5, wait no. The answer is 6.", "6"),
    ("The answer is 3/4.", "3/4"),
    ("answer = 11", "11"),
    ("So the total is 17 apples.", "17"),
    ("She had 5 apples and ate 2, leaving 3.", "3"),
    ("x = -5", "-5"),
    ("3-5", "5"),
    ("He pays $1,500 in total.", "1,500"),
    ("It costs 0.75 dollars.", "0.75"),
    ("about .5 of it", ".5"),
    ("Vitamin B12 levels", None),
    ("The result is −4.", "-4"),
    ("no numbers here", None),
    ("", None),
    ("   \n  ", None),
    ("The answer is twelve.", None),
]
LETTER = [
    ("The answer is B.", None, "B"),
    ("The answer is (C).", None, "C"),
    ("Answer: D", None, "D"),
    ("answer: d", None, "D"),
    ("**Answer:** B", None, "B"),
    ("The correct option is C.", None, "C"),
    ("The best choice is (e)", None, "E"),
    ("The answer is A because the others are wrong.", None, "A"),
    ("The answer is Option B.", None, "B"),
    ("The answer is B) Paris.", None, "B"),
    ("\\boxed{C}", None, "C"),
    ("\\boxed{\\text{(D)}}", None, "D"),
    ("\\boxed{B} ... on reflection \\boxed{C}", None, "C"),
    ("A patient presents with fever and rash.", None, None),
    ("A patient presents with fever and rash. The answer is B.", None, "B"),
    ("A 45-year-old man has chest pain.", None, None),
    ("I think the answer is C.", None, "C"),
    ("I think it is (C).", None, "C"),
    ("I think so.", None, None),
    ("Option A is tempting, but option C fits.", None, "C"),
    ("(A) is wrong. (B) is right.", None, "B"),
    ("B", None, "B"),
    ("**C**", None, "C"),
    ("C.", None, "C"),
    ("B) Paris", None, "B"),
    ("A) 5\nB) 6\nC) 7\nD) 8", None, None),
    ("It must be D.", None, "D"),
    ("D is correct.", None, "D"),
    ("Hepatitis B virus causes this.", None, None),
    ("Vitamin D deficiency.", None, None),
    ("Deficient in vitamin D.", None, "D"),  # a known limit of the last-resort fallback
    ("The answer is F.", 4, None),
    ("The answer is F.", 6, "F"),
    ("The answer is J.", None, "J"),
    ("The answer is K.", None, None),
    ("The answer is a bit unclear, maybe C.", None, "C"),
    ("Answer: (b) because it fits.", None, "B"),
    ("The answer is E. Option A would need more.", None, "E"),
    ("**Answer: C**", None, "C"),
    ("The correct answer is: **(B) Increased heart rate**", None, "B"),
    ("Therefore, the answer is B. A is incorrect because of X.", None, "B"),
    ("The answer is: A. Hypertension", None, "A"),
    ("Among the options, C and D are plausible, but D is best.", None, "D"),
    ("answer: I", None, "I"),
    ("", None, None),
]
BOOLEAN = [
    ("Yes", "yes"),
    ("no.", "no"),
    ("**True**", "yes"),
    ("False", "no"),
    ("The answer is yes.", "yes"),
    ("The answer is False.", "no"),
    ("Answer: No", "no"),
    ("\\boxed{\\text{Yes}}", "yes"),
    ("Yes, there is no doubt about it.", "yes"),
    ("No. It is true that x > 0 but not always.", "no"),
    ("After checking, I conclude: yes", "yes"),
    ("Initially yes.\nNo, on reflection.", "no"),
    ("maybe", None),
    ("The statement is true.", "yes"),
    ("", None),
]
LATEX = [
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
    ("\\boxed{\\dfrac{\\pi}{2}}", "\\dfrac{\\pi}{2}"),
    ("\\boxed{x^2 + \\frac{1}{x}}", "x^2 + \\frac{1}{x}"),
    ("\\boxed{\\left( 1, 2 \\right)}", "\\left( 1, 2 \\right)"),
    ("The answer is $2\\sqrt{2}$.", "2\\sqrt{2}"),
    ("The final answer is \\(\\pi^2\\)", "\\pi^2"),
    ("The answer is 1/2.", "1/2"),
    ("We get $x^2$ and finally $$2\\sqrt{2}$$", "2\\sqrt{2}"),
    ("so it is \\[\\frac{1}{3}\\]", "\\frac{1}{3}"),
    ("#### 3\\pi", "3\\pi"),
    ("no math, just 7", "7"),
    ("nothing", None),
]
EXTRACT_CASES = (
    [(text, "numeric", None, want) for text, want in NUMERIC]
    + [(text, "letter", choices, want) for text, choices, want in LETTER]
    + [(text, "boolean", None, want) for text, want in BOOLEAN]
    + [(text, "latex", None, want) for text, want in LATEX]
)


@pytest.mark.parametrize("text,answer_type,choices,expected", EXTRACT_CASES)
def test_extract_answer(text: str, answer_type: str, choices: int | None, expected: str | None) -> None:
    assert extract_answer(text, answer_type, choices) == expected


# --------------------------------------------------------------------------- numeric normalisation
NORMALIZE_CASES = [
    ("1,000", F(1000)),
    ("1000", F(1000)),
    ("0.5", F(1, 2)),
    ("1/2", F(1, 2)),
    ("\\frac{1}{2}", F(1, 2)),
    ("\\dfrac{3}{4}", F(3, 4)),
    ("\\tfrac12", F(1, 2)),
    ("-\\frac{1}{2}", F(-1, 2)),
    ("\\frac{-1}{2}", F(-1, 2)),
    ("$12", F(12)),
    ("\\$12", F(12)),
    ("12 dollars", F(12)),
    ("€7.50", F(15, 2)),
    ("12%", F(12)),
    ("12 apples", F(12)),
    ("5 km", F(5)),
    ("5 m^2", F(5)),
    ("-3", F(-3)),
    ("−3", F(-3)),
    ("-$5", F(-5)),
    ("1.5e3", F(1500)),
    ("2E-2", F(1, 50)),
    ("1.5 \\times 10^{3}", F(1500)),
    ("1 1/2", F(3, 2)),
    ("x = 5", F(5)),
    (".25", F(1, 4)),
    ("1,234.50", F(2469, 2)),
    ("1\\,000", F(1000)),
    ("1\\,000\\,000", F(1000000)),
    ("  42.  ", F(42)),
    ("12 and 13", None),
    ("1,5", None),
    ("3/0", None),
    ("\\frac{1}{0}", None),
    ("1e99999", None),
    ("abc", None),
    ("", None),
    (None, None),
    (7, F(7)),
    (0.1, F(1, 10)),
    (float("nan"), None),
    (True, None),
    ("9" * 2000, None),
]


@pytest.mark.parametrize("text,expected", NORMALIZE_CASES)
def test_normalize_numeric(text: object, expected: Fraction | None) -> None:
    assert normalize_numeric(text) == expected  # type: ignore[arg-type]


# --------------------------------------------------------------------------- matching
MATCH_CASES = [
    ("1,000", "1000", "numeric", True),
    ("0.5", "1/2", "numeric", True),
    ("\\frac{1}{2}", "0.5", "numeric", True),
    ("12", "12 dollars", "numeric", True),
    ("12.0", "12", "numeric", True),
    ("0.333", "1/3", "numeric", False),
    ("-5", "5", "numeric", False),
    ("42", "43", "numeric", False),
    (None, "42", "numeric", False),
    ("B", "B", "letter", True),
    ("b", "(B)", "letter", True),
    ("B", "C", "letter", False),
    ("A", "A", "letter", True),
    ("yes", "True", "boolean", True),
    ("no", "False", "boolean", True),
    ("no", "yes", "boolean", False),
    ("yes", "maybe", "boolean", False),
    ("\\dfrac{1}{2}", "\\frac12", "latex", True),
    ("2\\sqrt{2}", "\\sqrt{8}", "latex", True),
    ("\\frac{\\pi}{2}", "\\dfrac{\\pi}{2}", "latex", True),
    ("0.5", "\\frac{1}{2}", "latex", True),
    ("x + 1", "1 + x", "latex", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}", "latex", False),
    ("90^\\circ", "90", "latex", True),
]


@pytest.mark.parametrize("extracted,gold,answer_type,expected", MATCH_CASES)
def test_answers_match(extracted: str | None, gold: str, answer_type: str, expected: bool) -> None:
    assert answers_match(extracted, gold, answer_type) is expected


# Without Math-Verify (or off the main thread) the built-in evaluator still handles simple LaTeX.
FALLBACK_LATEX_CASES = [
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\frac{\\sqrt3}{2}", "\\frac{\\sqrt{3}}{2}", True),
    ("\\frac{\\pi}{2}", "\\dfrac{\\pi}{2}", True),
    ("\\pi/4", "\\frac{\\pi}{4}", True),
    ("2^{10}", "1024", True),
    ("\\sqrt[3]{27}", "3", True),
    ("\\frac{1}{3}", "0.333", False),
    ("x + 1", "x + 2", False),
    ("x + 1", "1 + x", True),
    ("(x+1)(x-1)", "x^2 - 1", True),
    ("2xy", "2 y \\cdot x", True),
    ("x^2", "x^3", False),
    ("x + 1", "y + 1", False),
    ("10^{10^{10}}", "1", False),
    ("\\frac{1}{0}", "1", False),
]


@pytest.mark.parametrize("pred,gold,expected", FALLBACK_LATEX_CASES)
def test_latex_fallback_without_math_verify(
    monkeypatch: pytest.MonkeyPatch, pred: str, gold: str, expected: bool
) -> None:
    monkeypatch.setattr(extraction, "_math_verify", None)
    assert answers_match(pred, gold, "latex") is expected


# --------------------------------------------------------------------------- full responses
# (response, gold, answer_type, choices, correct, truncated, reason)
VERIFY_CASES = [
    ("<think>6*7</think>The answer is \\boxed{42}.", "42", "numeric", None, True, False, "match"),
    ("<think>\\boxed{41}</think>The answer is 42.", "42", "numeric", None, True, False, "match"),
    ("<think>so 42</think>The answer is 41.", "42", "numeric", None, False, False, "mismatch"),
    ("<think>the answer is \\boxed{42}", "42", "numeric", None, False, True, "truncated"),
    ("<think>only thinking, 42</think>", "42", "numeric", None, False, False, "no_answer"),
    ("", "42", "numeric", None, False, False, "no_answer"),
    ("worked it out</think>\n#### 1,000", "1000", "numeric", None, True, False, "match"),
    ("The answer is 0.5", "1/2", "numeric", None, True, False, "match"),
    ("<think>A patient with X... option A?</think>The answer is (C).", "C", "letter", 4, True, False, "match"),
    ("<think>...</think>A patient like this needs surgery.", "A", "letter", 4, False, False, "no_answer"),
    ("<think>...</think>Answer: B", "b", "letter", 4, True, False, "match"),
    ("<think>...</think>The answer is E.", "E", "letter", 4, False, False, "no_answer"),
    ("<think>hmm</think>Yes.", "yes", "boolean", None, True, False, "match"),
    ("<think>hmm</think>The answer is False.", "no", "boolean", None, True, False, "match"),
    ("<think>hmm</think>The answer is \\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", "latex", None, True, False, "match"),
    ("<think>hmm</think>$\\boxed{2\\sqrt{2}}$", "\\sqrt{8}", "latex", None, True, False, "match"),
    ("<think>hmm</think>\\boxed{\\frac{\\pi}{3}}", "\\frac{\\pi}{2}", "latex", None, False, False, "mismatch"),
    ("<think>cut off mid-\\boxed{", "1", "latex", None, False, True, "truncated"),
    ("}{}\\boxed{{{{ garbage $$ \\frac{", "1", "latex", None, False, False, "no_answer"),
    ("\x00\x01 binary \ufffd junk", "1", "numeric", None, False, False, "no_answer"),
]


@pytest.mark.parametrize("response,gold,answer_type,choices,correct,truncated,reason", VERIFY_CASES)
def test_verify_response(
    response: str, gold: str, answer_type: str, choices: int | None, correct: bool, truncated: bool, reason: str
) -> None:
    verdict = verify_response(response, gold, answer_type, choices)
    assert (verdict.correct, verdict.truncated, verdict.reason) == (correct, truncated, reason)


def test_expect_think_marks_untagged_response_truncated() -> None:
    assert verify_response("The answer is 4", "4", "numeric").correct
    verdict = verify_response("The answer is 4", "4", "numeric", expect_think=True)
    assert verdict.truncated and not verdict.correct


def test_unknown_answer_type_raises() -> None:
    with pytest.raises(ValueError, match="unknown answer_type"):
        verify_response("42", "42", "integer")


def test_normalize_boolean() -> None:
    assert [normalize_boolean(s) for s in ("TRUE", "No", "**yes**", "nah")] == ["yes", "no", "yes", None]


def test_off_main_thread_does_not_raise() -> None:
    # Math-Verify's signal timeouts cannot run here; the built-in comparison takes over.
    results: list[bool] = []
    worker = threading.Thread(
        target=lambda: results.append(verify_response("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", "latex").correct)
    )
    worker.start()
    worker.join()
    assert results == [True]


def test_verify_batch_in_process_pool_keeps_order() -> None:
    records = [
        {"response": f"<think>x</think>\\boxed{{{i}}}", "answer": str(i if i % 3 else i + 1), "answer_type": "numeric"}
        for i in range(30)
    ] + [{"response": "\\boxed{\\frac{\\pi}{2}}", "answer": "\\dfrac{\\pi}{2}", "answer_type": "latex"}]
    verdicts = verify_batch(records, workers=2, chunksize=4)
    assert [v.correct for v in verdicts] == [bool(i % 3) for i in range(30)] + [True]
    assert verify_batch(records, workers=1) == verdicts


# --------------------------------------------------------------------------- verify_jsonl


def _run_cli(lines: list[str]) -> tuple[dict[str, int], list[dict[str, object]], str]:
    out, err = io.StringIO(), io.StringIO()
    counts = verify_jsonl(io.StringIO("".join(lines)), out, err)
    return counts, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def test_verify_jsonl_good_records() -> None:
    lines = [
        json.dumps({"id": "q1", "response": "<think>..</think>The answer is 1,000.", "answer": "1000", "answer_type": "numeric"}) + "\n",
        json.dumps({"response": "Answer: (b)", "answer": "B", "answer_type": "letter", "choices": ["x", "y", "z"]}) + "\n",
        "\n",
        json.dumps({"response": "<think>no end", "answer": 3, "answer_type": "numeric"}) + "\n",
        json.dumps({"response": "Yes.", "answer": True, "answer_type": "boolean"}),
    ]
    counts, records, err = _run_cli(lines)
    assert counts == {"records": 4, "correct": 3, "errors": 0, "truncated": 1, "no_answer": 0}
    assert err == ""
    assert records[0] == {
        "id": "q1",
        "response": "<think>..</think>The answer is 1,000.",
        "answer": "1000",
        "answer_type": "numeric",
        "extracted": "1,000",
        "correct": True,
        "truncated": False,
    }
    assert records[1]["extracted"] == "B" and records[1]["correct"] is True
    assert records[2]["extracted"] is None and records[2]["truncated"] is True
    assert records[3]["correct"] is True


def test_verify_jsonl_malformed_lines_are_reported_and_others_kept() -> None:
    good = {"response": "\\boxed{7}", "answer": "7", "answer_type": "numeric"}
    lines = [
        json.dumps(good) + "\n",
        '{"response": "oops", \n',
        json.dumps({"response": "x", "answer": "1"}) + "\n",
        json.dumps({**good, "answer_type": "integer"}) + "\n",
        json.dumps({**good, "response": None}) + "\n",
        json.dumps([1, 2]) + "\n",
        json.dumps({**good, "choices": 0}) + "\n",
        json.dumps({**good, "answer": ""}) + "\n",
        json.dumps(good) + "\n",
    ]
    counts, records, err = _run_cli(lines)
    assert counts["records"] == 2 and counts["correct"] == 2 and counts["errors"] == 7
    assert len(records) == 2
    messages = err.splitlines()
    assert [m.split(":", 1)[0] for m in messages] == [f"line {n}" for n in range(2, 9)]
    assert "invalid JSON" in messages[0]
    assert "missing field(s) 'answer_type'" in messages[1]
    assert "unknown answer_type 'integer'" in messages[2]
    assert "'response' must be a string" in messages[3]
    assert "expected a JSON object" in messages[4]
    assert "'choices'" in messages[5]
    assert "'answer'" in messages[6]


def test_verify_jsonl_bytes_input_with_bad_utf8() -> None:
    good = json.dumps({"response": "\\boxed{7}", "answer": "7", "answer_type": "numeric"}).encode()
    stream = [b"\xef\xbb\xbf" + good + b"\n", b'{"response": "\xff"}\n', good + b"\n"]
    out, err = io.StringIO(), io.StringIO()
    counts = verify_jsonl(stream, out, err)
    assert (counts["records"], counts["errors"]) == (2, 1)
    assert err.getvalue().startswith("line 2: not valid UTF-8")


def test_verify_jsonl_with_worker_pool_matches_in_process() -> None:
    lines = [
        json.dumps({"response": f"The answer is {i}", "answer": str(i % 4), "answer_type": "numeric"}) + "\n"
        for i in range(20)
    ]
    serial, pooled = io.StringIO(), io.StringIO()
    counts = verify_jsonl(io.StringIO("".join(lines)), serial, io.StringIO())
    assert verify_jsonl(io.StringIO("".join(lines)), pooled, io.StringIO(), workers=2, chunk_lines=7) == counts
    assert pooled.getvalue() == serial.getvalue()
    assert counts["correct"] == 4
