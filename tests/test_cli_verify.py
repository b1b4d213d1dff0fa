"""`compress-distill verify`: the user-facing audit command, end to end through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
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
