"""`compress-distill verify`: the user-facing audit command, end to end through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from .conftest import REPO


def test_verify_command_annotates_records_and_reports_bad_lines(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"response": "<think>x</think> The answer is \\boxed{1,000}.", "answer": "1000",
                    "answer_type": "numeric"}),
        "{not json",
        json.dumps({"response": "A patient presents with... The answer is (C).", "answer": "C",
                    "answer_type": "letter"}),
        json.dumps({"response": "<think>never closed", "answer": "yes", "answer_type": "boolean"}),
    ]
    src.write_text("\n".join(lines) + "\n")
    res = subprocess.run([sys.executable, "-m", "compress_distill.cli", "verify", str(src)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 1  # one malformed line
    assert "line 2: invalid JSON" in res.stderr
    out = [json.loads(x) for x in res.stdout.splitlines()]
    assert [r["correct"] for r in out] == [True, True, False]
    assert out[0]["extracted"] is not None and out[2]["truncated"] is True


def test_verify_command_clean_input_exits_zero(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"response": "Yes.", "answer": "yes", "answer_type": "boolean"}) + "\n")
    res = subprocess.run([sys.executable, "-m", "compress_distill.cli", "verify", str(src)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["correct"] is True


def test_verify_command_survives_hostile_lines_on_stdin() -> None:
    # The reproductions, between good lines, through `verify -`: a traceback used to end the run
    # and lose every good record after the first hostile line.
    good = json.dumps({"response": "The answer is 42", "answer": "42", "answer_type": "numeric"})
    hostile = [
        json.dumps({"response": "\\frac{" + "1" * 5000 + "}{2}", "answer": "1", "answer_type": "numeric"}),
        '{"response":"5 \\ud800","answer":"5","answer_type":"numeric"}',
        "[" * 100000,
        json.dumps({"response": "1 1/" + "7" * 5000, "answer": "1", "answer_type": "numeric"}),
    ]
    lines = [good]
    for line in hostile:
        lines += [line, good]
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "compress_distill.cli", "verify", "-"], input="\n".join(lines).encode(),
                         capture_output=True, cwd=REPO, timeout=120)
    assert time.monotonic() - t0 < 30  # start-up included; each record is bounded well below a second
    stderr = res.stderr.decode()
    assert res.returncode == 1 and "Traceback" not in stderr  # 1: a line without a verdict
    assert "line 6: invalid JSON (nested too deeply)" in stderr and "1 line(s) without a verdict" in stderr
    out = [json.loads(x) for x in res.stdout.decode("utf-8").splitlines()]  # strict UTF-8: valid output
    assert [r["correct"] for r in out] == [True, False, True, True, True, True, False, True]
    assert out[3]["response"] == "5 \ud800"  # escaped on the way out, the same string read back
