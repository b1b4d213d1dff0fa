"""Stage `judge` (optional, paper appendix G): a third model rates each compressed trace.

The verdict's JSON schema goes out as `response_format`; every answer is still validated
here, with up to `max_attempts` asks per trace, because some servers ignore the schema
and a verdict cut at max_tokens is invalid JSON. A trace without a valid verdict after
that is a counted failure row (null scores, the last parse error), never dropped, and
final: a rerun does not ask again. A request that fails at the server (retries exhausted,
rejected, prompt too long) is a failure too, but not final: a rerun asks only those ids.
Both kinds count in `failed_requests` (and `failed_requests.json`); past
`judge.max_failed_fraction` they fail the node. Verdict rows go to append-only shards in
the work dir, so a killed job resumes without re-asking finished ids.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import pyarrow.parquet as pq

from ..datasets.schema import render_question
from ..generation.client import ChatClient, ChatRequest, ClientConfig, Failure, GenerationError, Sampling
from ..generation.sharded import check_failures, unanswered
from ..generation.shards import ShardWriter, scan
from ..serving import api_key_env, model_endpoint
from ..store import write_parquet
from ..traces.compression import split_response
from ..traces.judge import (
    JUDGE_SCHEMA,
    JudgeOutcome,
    judge_messages,
    judge_with_retries,
    precheck,
    response_format,
    table10,
    verdict_row,
)
from . import StageContext, StageResult

# Verdicts are short; many in flight keep a served judge busy without flooding it.
MAX_CONCURRENCY = 32
SERVER_FAILURE_HINT = ("a rerun re-asks the requests that failed at the server; invalid verdicts (after max_attempts "
                       "asks) are final")


def run(ctx: StageContext) -> StageResult:
    spec = ctx.config.judge
    if spec is None:
        raise ValueError(f"{ctx.node.id}: the config has no `judge` section")
    teacher, comp = ctx.node.refs["teacher"], ctx.node.refs["compressor"]
    meta = {"teacher": teacher, "compressor": comp}
    traces = {t["id"]: t for t in pq.read_table(ctx.input("verify") / "traces.parquet").to_pylist()}
    compressed = [r for r in pq.read_table(ctx.input("compress") / "compressed.parquet").to_pylist() if r["usable"]]
    shard_dir = ctx.work / "verdicts"
    todo = [r for r in compressed if r["id"] not in scan(shard_dir).records]
    if todo:
        with model_endpoint(spec.model, log_path=ctx.work / "server.log") as ep:
            cfg = ClientConfig(model=ep.model, base_url=ep.base_url, api_key_env=api_key_env(),
                               max_concurrency=MAX_CONCURRENCY, max_model_len=spec.serve.max_model_len)
            asyncio.run(_judge_all(cfg, todo, traces, ctx, meta))
    scanned = scan(shard_dir)
    server_failed = unanswered([r["id"] for r in compressed], scanned)
    open_failures = scanned.open_failures()
    rows = [_row(r, scanned.records.get(r["id"]), open_failures.get(r["id"]), meta) for r in compressed]
    failed = check_failures(ctx.node.id, server_failed + _invalid(compressed, scanned.records), len(compressed),
                            max_fraction=spec.max_failed_fraction, config_key="judge.max_failed_fraction",
                            out_dir=ctx.out, hint=SERVER_FAILURE_HINT)
    n = write_parquet(rows, ctx.out / "verdicts.parquet", schema=JUDGE_SCHEMA)
    summary = table10(rows)
    (ctx.out / "table10.json").write_text(json.dumps(summary, indent=1))
    overall = next((s for s in summary if s["dataset"] == "Overall"), {})
    return StageResult({"verdicts.parquet": n}, {
        "judged": overall.get("n", 0), "no_verdict": overall.get("n_failed", 0), **failed,
        "pct_faithful": overall.get("pct_faithful"), "mean_faithfulness": overall.get("mean_faithfulness")})


def _row(comp_row: Mapping[str, Any], done: Mapping[str, Any] | None, failure: Mapping[str, Any] | None,
         meta: Mapping[str, str]) -> dict[str, Any]:
    """The published verdict row: the recorded one, or a null verdict carrying the server error."""
    if done is None:
        error = str(failure.get("error")) if failure else "no result recorded"
        asks = int(failure.get("judge_attempt") or 0) if failure else 0
        done = verdict_row(comp_row["id"], JudgeOutcome(None, asks, [error]), dataset=comp_row["dataset"],
                           domain=comp_row["domain"], **meta)
    return {k: done.get(k) for k in JUDGE_SCHEMA.names}


def _invalid(compressed: list[dict[str, Any]], records: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Failure rows of recorded traces without a verdict: the judge never gave a valid one, or
    (no ask made) there was no verified trace to judge."""
    recorded = [records[r["id"]] for r in compressed if r["id"] in records]
    return [{"id": r["id"], "kind": "invalid_verdict" if r["attempts"] else "no_trace", "error": r["error"]}
            for r in recorded if r["verdict"] is None]


async def _judge_all(cfg: ClientConfig, todo: list[dict[str, Any]], traces: Mapping[str, Mapping[str, Any]],
                     ctx: StageContext, meta: dict[str, str]) -> None:
    spec = ctx.config.judge
    assert spec is not None
    sampling = Sampling(temperature=0.0, max_tokens=spec.max_tokens, reasoning_effort=spec.reasoning_effort,
                        extra={"response_format": response_format()})
    sem = asyncio.Semaphore(MAX_CONCURRENCY)
    async with ChatClient(cfg) as client:

        async def one(row: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
            """(True, verdict row) or (False, failure record) for a server failure."""
            raw = traces.get(row["id"])
            original = (split_response(str(raw["response"])) if raw else None)
            original_text = original.reasoning if original else ""
            quick = precheck(original_text, row["reasoning"] or "")
            asked = 0
            if quick is not None or raw is None:
                outcome = JudgeOutcome(quick, 0, [] if quick else ["no verified trace with this id"])
            else:
                messages = judge_messages(render_question(str(raw["question"]), raw.get("choices")),
                                          str(raw["answer"]), original_text, row["reasoning"],
                                          original_max_chars=spec.original_max_chars,
                                          compressed_max_chars=spec.compressed_max_chars)

                async def complete(attempt: int) -> str | None:
                    nonlocal asked
                    asked = attempt
                    req = ChatRequest(f"{row['id']}#{attempt}", messages, sampling)
                    async with sem:
                        return (await client.complete(req)).content

                try:
                    outcome = await judge_with_retries(complete, spec.max_attempts)
                except GenerationError as err:  # the server failed past the client's retries
                    return False, {"id": row["id"], "judge_attempt": asked,
                                   **Failure.from_error(row["id"], err).to_record()}
            return True, verdict_row(row["id"], outcome, dataset=row["dataset"], domain=row["domain"], **meta)

        with ShardWriter(ctx.work / "verdicts") as shards:
            for fut in asyncio.as_completed([one(r) for r in todo]):
                ok, record = await fut
                (shards.write if ok else shards.write_failure)(record)
