"""Reading a chat-format training set and counting the tokens a student is trained on.

The training Parquet has (at least) `id` and `messages`; `messages` is either a
list of `{role, content}` structs or a JSON string of that list (both shapes
occur upstream). Only `messages` reaches the trainer, as plain lists of dicts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

IGNORE_INDEX = -100  # the label value that the loss skips


def _as_messages(value: Any, row: int) -> list[dict[str, Any]]:
    msgs = json.loads(value) if isinstance(value, str) else value
    if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m for m in msgs):
        raise ValueError(f"row {row}: 'messages' must be a list of {{role, content}} dicts, got {type(msgs).__name__}")
    # Drop null struct fields that Arrow adds when rows differ in keys (e.g. reasoning_content).
    return [{k: v for k, v in m.items() if v is not None} for m in msgs]


def read_chats(path: Path) -> list[list[dict[str, Any]]]:
    """The `messages` of every row, in file order, each a list of role/content dicts."""
    names = pq.read_schema(path).names
    if not {"id", "messages"} <= set(names):
        raise ValueError(f"{path}: training set needs columns 'id' and 'messages'; has {names}")
    column = pq.read_table(path, columns=["messages"]).column("messages")
    chats = [_as_messages(v, i) for i, v in enumerate(column.to_pylist())]
    if not chats:
        raise ValueError(f"{path}: training set is empty")
    for i, msgs in enumerate(chats):
        if not any(m["role"] == "assistant" for m in msgs):
            raise ValueError(f"{path}: row {i} has no assistant turn, so nothing to train on")
    return chats


def count_label_tokens(labels: pa.ChunkedArray | pa.Array) -> int:
    """Tokens that contribute to the loss: labels that are not IGNORE_INDEX, over a column of lists."""
    flat = pc.list_flatten(labels)
    return int(pc.sum(pc.not_equal(flat, IGNORE_INDEX)).as_py() or 0)
