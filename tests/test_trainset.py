"""Training-set builder: chat records, think kept/stripped, validation split, files, trainable tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from compress_distill.traces.derive import derive
from compress_distill.traces.trainset import (
    TRAIN_SCHEMA,
    build_records,
    in_validation,
    keep_think,
    split_validation,
    token_table,
    trainable_tokens,
    write_trainset,
)
from tests.tiny_tokenizer import bytelevel

QUESTIONS = [
    {"id": f"mmlu/test/{i}", "dataset": "mmlu", "domain": "science", "question": f"Question {i}?",
     "choices": ["alpha", "beta", "gamma", "delta"], "answer": "B", "answer_type": "letter", "split": "test"}
    for i in range(200)
] + [{"id": "gsm/1", "dataset": "gsm8k", "domain": "math", "question": "What is 2+2?", "choices": None,
      "answer": "4", "answer_type": "numeric", "split": "train"}]


def targets(ids: list[str]) -> list[dict[str, Any]]:
    return [{"id": i, "response": "<think>\nreason about it\n</think>\n\nThe answer is B."} for i in ids]


def test_records_have_the_axolotl_trl_shape() -> None:
    recs, stats = build_records(QUESTIONS, targets(["mmlu/test/0", "gsm/1"]))
    assert stats == {"targets": 2, "records": 2, "missing_question": 0, "duplicate_id": 0}
    r = recs[0]
    assert set(r) == {"id", "messages"}
    assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
    assert r["messages"][0]["content"] == "Question 0?\n\nA) alpha\nB) beta\nC) gamma\nD) delta"
    assert r["messages"][1]["content"] == "<think>\nreason about it\n</think>\n\nThe answer is B."
    assert recs[1]["messages"][0]["content"] == "What is 2+2?"


def test_think_block_stripped_for_answer_only() -> None:
    assert keep_think("raw") and keep_think("truncated_to_match") and not keep_think("answer_only")
    recs, _ = build_records(QUESTIONS, targets(["gsm/1"]), keep_think=False)
    assert recs[0]["messages"][1]["content"] == "The answer is B."
    derived = derive("answer_only", [{"id": "gsm/1", "response": "<think>x</think> The answer is 4."}])
    recs, _ = build_records(QUESTIONS, derived.rows, keep_think=False)
    assert recs[0]["messages"][1]["content"] == "The answer is 4."


def test_missing_questions_and_duplicates_are_counted() -> None:
    recs, stats = build_records(QUESTIONS, targets(["gsm/1", "gsm/1", "nope"]))
    assert len(recs) == 1 and stats["missing_question"] == 1 and stats["duplicate_id"] == 1


def test_validation_split_is_seeded_stable_and_about_the_fraction() -> None:
    ids = [f"id-{i}" for i in range(4000)]
    recs = [{"id": i, "messages": []} for i in ids]
    train, val = split_validation(recs, 0.05, seed=42)
    assert len(train) + len(val) == 4000 and 150 < len(val) < 250
    again_train, again_val = split_validation(list(reversed(recs)), 0.05, seed=42)
    assert {r["id"] for r in again_val} == {r["id"] for r in val}  # by id, not position
    _, other = split_validation(recs, 0.05, seed=7)
    assert {r["id"] for r in other} != {r["id"] for r in val}
    assert split_validation(recs, 0.0)[1] == []
    assert in_validation("id-1", 0.05, 42) == in_validation("id-1", 0.05, 42)
    with pytest.raises(ValueError):
        split_validation(recs, 1.0)


def test_write_trainset_parquet_and_jsonl(tmp_path: Path) -> None:
    recs, _ = build_records(QUESTIONS, targets([q["id"] for q in QUESTIONS]))
    out = write_trainset(recs, tmp_path, val_fraction=0.05, seed=42)
    assert out["train"] + out["val"] == len(recs) and out["val"] > 0
    table = pq.read_table(tmp_path / "train.parquet")
    assert table.schema.equals(TRAIN_SCHEMA) and table.num_rows == out["train"]
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    assert len(lines) == out["train"]
    first = json.loads(lines[0])
    assert first == table.slice(0, 1).to_pylist()[0]
    assert len((tmp_path / "val.jsonl").read_text().splitlines()) == out["val"]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files
    write_trainset(recs[:3], tmp_path / "noval")
    assert not (tmp_path / "noval" / "val.jsonl").exists()


def test_trainable_tokens_count_assistant_content_plus_eot() -> None:
    tok = bytelevel()
    recs, _ = build_records(QUESTIONS, targets(["mmlu/test/0", "mmlu/test/1"]))
    content = recs[0]["messages"][1]["content"]
    per = len(tok(content, add_special_tokens=False)["input_ids"])
    counts = trainable_tokens(recs, tok)
    assert counts["trainable_tokens"] == 2 * (per + 1) and counts["records"] == 2
    assert trainable_tokens(recs, tok, eot_tokens=0)["trainable_tokens"] == 2 * per
    short, _ = build_records(QUESTIONS, targets(["mmlu/test/0"]), keep_think=False)
    table = token_table({"raw": recs, "answer_only": short}, tok)
    assert [r["source"] for r in table] == ["raw", "answer_only"]
    assert table[1]["trainable_tokens"] < table[0]["trainable_tokens"] / 2
    assert table[0]["trainable_tokens_m"] == table[0]["trainable_tokens"] / 1e6


def test_trainable_tokens_from_the_chat_template_mask() -> None:
    tok = bytelevel()
    tok.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
        "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}"
        "{% else %}{{ m['content'] + '<|im_end|>' }}{% endif %}{{ '\\n' }}{% endfor %}"
    )
    recs, _ = build_records(QUESTIONS, targets(["mmlu/test/0"]))
    exact = trainable_tokens(recs, tok, method="template")["trainable_tokens"]
    approx = trainable_tokens(recs, tok)["trainable_tokens"]
    assert abs(exact - approx) <= 2
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="generation"):
        trainable_tokens(recs, tok, method="template")
