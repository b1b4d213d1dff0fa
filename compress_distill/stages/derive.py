"""Stage `derive`: one teacher's training set for one data source.

raw / compressed / answer-only / length-matched truncation (the raw trace cut
to the compressor tokenizer's length of that compressor's compressed trace) /
prefix fraction, then chat-format records (`train.parquet` + `train.jsonl`,
the shapes TRL and Axolotl read). Trainable tokens are counted with the
student-independent compressor/teacher tokenizer where one is known.
"""

from __future__ import annotations

import pyarrow.parquet as pq

from ..serving import tokenizer_ref
from ..traces.derive import derive
from ..traces.tokenization import load_tokenizer
from ..traces.trainset import build_records, keep_think, trainable_tokens, write_trainset
from . import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    source = ctx.config.data_sources[ctx.node.refs["source"]]
    traces = pq.read_table(ctx.input("verify") / "traces.parquet").to_pylist()
    compressed = None
    tokenizer = None
    if source.compressor:
        compressed = pq.read_table(ctx.input("compress") / "compressed.parquet").to_pylist()
        tokenizer = load_tokenizer(tokenizer_ref(ctx.node.params["compressor_tokenizer"]))
    elif source.kind == "prefix_fraction":
        tokenizer = load_tokenizer(tokenizer_ref(ctx.config.teachers[ctx.node.refs["teacher"]].model))
    result = derive(source.kind, traces, compressed=compressed, tokenizer=tokenizer, fraction=source.fraction)
    records, build_stats = build_records(traces, result.rows, keep_think=keep_think(source.kind))
    training = ctx.config.training
    files = write_trainset(records, ctx.out, val_fraction=training.val_set_size, seed=training.seed)
    counts = trainable_tokens(records, tokenizer) if tokenizer is not None else None
    return StageResult({"train.parquet": files["train"], "val.parquet": files["val"]},
                       {"derive": result.stats, "build": build_stats,
                        "trainable_tokens": counts["trainable_tokens"] if counts else None})

