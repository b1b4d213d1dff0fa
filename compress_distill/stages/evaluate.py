"""Stage `evaluate`: greedy decoding of one checkpoint on the eval suites, through the served path.

Records (one per question) and the paper's metrics (per-group accuracy with
SE, overall accuracy, completion tokens, truncation rate, median reasoning
length, Acc/1k tokens) are published. A question whose request failed is a
record too (`failed: true`, scored wrong, empty response), never dropped: past
`evaluation.max_failed_fraction` the node fails instead, and a rerun re-asks
only the failed ids. A response extraction cannot judge (e.g. over its size
limit) is scored wrong with the cause in `verify_error`, and counted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..generation.client import ChatRequest, ClientConfig, Sampling
from ..generation.rejection import build_messages
from ..generation.sharded import check_failures, clipped_count, complete_into_shards, unanswered
from ..generation.shards import scan
from ..report.metrics import eval_metrics
from ..serving import api_key_env, model_endpoint
from ..store import write_parquet
from ..traces.extraction import UNVERIFIABLE, split_think, verify_batch
from ..traces.tokenization import batch_lengths, load_tokenizer
from . import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    ev = ctx.config.evaluation
    group_of = {d: g for g, ds in ev.groups.items() for d in ds}
    questions = [q for q in pq.read_table(ctx.input("prepare", "eval-suite") / "questions.parquet").to_pylist()
                 if q["dataset"] in group_of]
    shard_dir = ctx.work / "requests"
    todo = [q for q in questions if q["id"] not in scan(shard_dir).records]
    if todo:
        model_dir = ctx.input("train") / "model"
        with model_endpoint(str(model_dir), log_path=ctx.work / "server.log") as ep:
            cfg = ClientConfig(model=ep.model, base_url=ep.base_url, api_key_env=api_key_env(),
                               max_concurrency=ev.batch_size, max_model_len=ev.serve.max_model_len)
            # the run's seed (the node's: its key holds it) and the question id seed each request
            sampling = Sampling(temperature=ev.temperature, max_tokens=ev.max_tokens, seed=ctx.node.params["seed"])
            complete_into_shards(cfg, (ChatRequest(q["id"], build_messages(q), sampling.for_request(q["id"]))
                                       for q in todo), shard_dir)
    scanned = scan(shard_dir)
    failed = check_failures(ctx.node.id, unanswered([q["id"] for q in questions], scanned), len(questions),
                            max_fraction=ev.max_failed_fraction, config_key="evaluation.max_failed_fraction",
                            out_dir=ctx.out)
    done = scanned.records
    answered = [q for q in questions if q["id"] in done]
    verdicts = verify_batch([{**q, "response": done[q["id"]]["response"]} for q in answered], workers=1)
    scored = {q["id"]: _record(q, group_of[q["dataset"]], done[q["id"]], v)
              for q, v in zip(answered, verdicts, strict=True)}
    records = [scored.get(q["id"]) or _failed_record(q, group_of[q["dataset"]]) for q in questions]
    _count_reasoning_tokens(records, ctx.input("train") / "model")
    n = write_parquet(records, ctx.out / "records.parquet")
    metrics = eval_metrics(records, list(ev.groups)).to_row()
    Path(ctx.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    unverifiable = sum(v.reason == UNVERIFIABLE for v in verdicts)
    return StageResult({"records.parquet": n}, {**metrics, **failed, "unverifiable": unverifiable,
                                                "clipped_requests": clipped_count(done.values())})


def _record(q: Mapping[str, Any], group: str, c: Mapping[str, Any], v: Any) -> dict[str, Any]:
    split = split_think(c["response"])
    cut = c.get("finish_reason") == "length" or v.truncated
    return {"id": q["id"], "dataset": q["dataset"], "group": group, "correct": bool(v.correct),
            "truncated": bool(cut), "extracted": v.extracted, "completion_tokens": int(c.get("completion_tokens") or 0),
            "reasoning_chars": len(split.reasoning), "response": c["response"], "failed": False,
            "verify_error": v.error}


def _count_reasoning_tokens(records: list[dict[str, Any]], model_dir: Path) -> None:
    """`reasoning_tokens`: the student tokenizer's length of each record's reasoning (the paper's
    median reasoning tokens, Table 9 and Fig. 4); a failed record has none to count (0)."""
    tok = load_tokenizer(model_dir)
    answered = [r for r in records if not r["failed"]]
    texts = [split_think(r["response"]).reasoning for r in answered]
    for r, n in zip(answered, batch_lengths(tok, texts), strict=True):
        r["reasoning_tokens"] = n
    for r in records:
        r.setdefault("reasoning_tokens", 0)


def _failed_record(q: Mapping[str, Any], group: str) -> dict[str, Any]:
    """A question whose request failed: scored wrong, with nothing to measure."""
    return {"id": q["id"], "dataset": q["dataset"], "group": group, "correct": False, "truncated": False,
            "extracted": None, "completion_tokens": 0, "reasoning_chars": 0, "response": "", "failed": True,
            "verify_error": None}
