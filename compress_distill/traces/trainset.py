"""Training-set builder: chat records both Axolotl and TRL read, validation split, trainable tokens.

A record is `{"id", "messages": [{"role": "user", "content": Q}, {"role": "assistant", "content": A}]}`:
- Q is the question rendered with lettered choices (`schema.render_question`, the teacher's prompt);
- A is the derived target: `<think>...</think>` + final answer, or the final answer alone for
  sources without a trace (answer-only).
Axolotl reads it as `type: chat_template, field_messages: messages, roles_to_train: [assistant]`
(the JSONL file); TRL's SFTTrainer reads the `messages` column with `assistant_only_loss=True`.

The validation split is by a seeded hash of the id, so the same questions are held out for
every data source of a teacher (raw, compressed, truncated... stay comparable).

Trainable tokens (Table 6, right half) count what assistant-only loss trains on: the
assistant content's tokens plus `eot_tokens` per turn (`train_on_eot: turn`). With
`method="template"` the count comes from the chat template's assistant mask instead (exact
for the template, needs `{% generation %}` markers, one call per record).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from ..datasets.schema import render_question
from .compression import split_response
from .tokenization import batch_lengths

log = logging.getLogger(__name__)

MESSAGE_TYPE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])
TRAIN_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("messages", pa.list_(MESSAGE_TYPE), nullable=False),
])


def keep_think(kind: str) -> bool:
    """Whether a data-source kind trains on the think block (everything but answer-only)."""
    return kind != "answer_only"


def build_records(questions: Iterable[Mapping[str, Any]], targets: Iterable[Mapping[str, Any]], *,
                  keep_think: bool = True) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Chat records for targets (`id`, `response`) joined with their questions by id.

    With `keep_think=False` a think block in the target is stripped. Targets without a
    question and repeated target ids are counted (`missing_question`, `duplicate_id`), not kept.
    """
    by_id = {str(q["id"]): q for q in questions}
    stats = {"targets": 0, "records": 0, "missing_question": 0, "duplicate_id": 0}
    seen: set[str] = set()
    records = []
    for t in targets:
        stats["targets"] += 1
        tid = str(t["id"])
        q = by_id.get(tid)
        if q is None:
            stats["missing_question"] += 1
            continue
        if tid in seen:
            stats["duplicate_id"] += 1
            continue
        seen.add(tid)
        answer = str(t["response"])
        if not keep_think:
            parts = split_response(answer)
            answer = parts.tail.strip() if parts is not None else answer.strip()
        records.append({"id": tid, "messages": [
            {"role": "user", "content": render_question(str(q["question"]), q.get("choices"))},
            {"role": "assistant", "content": answer},
        ]})
    stats["records"] = len(records)
    if stats["missing_question"] or stats["duplicate_id"]:
        log.warning("trainset: %s", stats)
    return records, stats


def in_validation(record_id: str, fraction: float, seed: int) -> bool:
    """Seeded, stable membership: the first 8 bytes of sha256(seed, id) as a uniform in [0, 1)."""
    digest = hashlib.sha256(f"{seed}\x1f{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_validation(records: Sequence[dict[str, Any]], fraction: float,
                     seed: int = 42) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    train: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    for r in records:
        (val if fraction and in_validation(r["id"], fraction, seed) else train).append(r)
    return train, val


def _assistant_texts(records: Iterable[Mapping[str, Any]]) -> list[str]:
    return [m["content"] for r in records for m in r["messages"] if m["role"] == "assistant"]


def trainable_tokens(records: Sequence[Mapping[str, Any]], tokenizer: Any, *, eot_tokens: int = 1,
                     method: Literal["content", "template"] = "content") -> dict[str, Any]:
    """Assistant-only trainable tokens of a set of records (see module docstring)."""
    if method == "template":
        total = 0
        for r in records:
            enc = tokenizer.apply_chat_template(list(r["messages"]), tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
            mask = enc["assistant_masks"]
            if not any(mask):
                raise ValueError("the chat template marks no assistant tokens (no {% generation %} block); "
                                 "use method='content'")
            total += int(sum(mask))
        turns = len(_assistant_texts(records))
    else:
        texts = _assistant_texts(records)
        turns = len(texts)
        total = sum(batch_lengths(tokenizer, texts)) + eot_tokens * turns
    return {"records": len(records), "assistant_turns": turns, "trainable_tokens": total,
            "mean_tokens": total / len(records) if records else None}


def token_table(per_source: Mapping[str, Sequence[Mapping[str, Any]]], tokenizer: Any, *,
                eot_tokens: int = 1) -> list[dict[str, Any]]:
    """Table 6 (right half) for one student tokenizer: trainable tokens per data source, in millions."""
    rows = []
    for source, records in per_source.items():
        counts = trainable_tokens(records, tokenizer, eot_tokens=eot_tokens)
        rows.append({"source": source, **counts, "trainable_tokens_m": counts["trainable_tokens"] / 1e6})
    return rows


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_jsonl(records: Iterable[Mapping[str, Any]], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({"id": r["id"], "messages": r["messages"]}, ensure_ascii=False) + "\n")


def write_split(records: Sequence[Mapping[str, Any]], out_dir: Path, name: str) -> dict[str, str]:
    """`{name}.parquet` (zstd) and `{name}.jsonl`, each written to a temp name and renamed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{"id": r["id"], "messages": r["messages"]} for r in records], schema=TRAIN_SCHEMA)
    pq_path, jsonl_path = out_dir / f"{name}.parquet", out_dir / f"{name}.jsonl"
    _atomic(pq_path, lambda p: pq.write_table(table, p, compression="zstd"))
    _atomic(jsonl_path, lambda p: _write_jsonl(records, p))
    return {"parquet": str(pq_path), "jsonl": str(jsonl_path)}


def write_trainset(records: Sequence[dict[str, Any]], out_dir: str | Path, *, val_fraction: float = 0.0,
                   seed: int = 42) -> dict[str, Any]:
    """Write `train.{parquet,jsonl}` and, when `val_fraction` > 0, `val.{parquet,jsonl}`."""
    out = Path(out_dir)
    train, val = split_validation(records, val_fraction, seed)
    files = {"train": write_split(train, out, "train")}
    if val_fraction:
        files["val"] = write_split(val, out, "val")
    return {"train": len(train), "val": len(val), "files": files}
