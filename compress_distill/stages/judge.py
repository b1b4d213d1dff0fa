"""Stage `judge` (optional, paper appendix G): a third model rates each compressed trace.

The verdict's JSON schema goes out as `response_format`; every answer is still validated
here, with up to `max_attempts` asks per trace, because some servers ignore the schema
and a verdict cut at max_tokens is invalid JSON. A trace without a valid verdict after
that is a counted failure row (null scores, the last parse error), never dropped.
Verdict rows go to append-only shards in the work dir, so a killed job resumes
without re-asking finished ids.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import pyarrow.parquet as pq

from ..compression import split_response
from ..datasets.schema import render_question
from ..generation.client import ChatClient, ChatRequest, ClientConfig, GenerationError, Sampling
from ..generation.shards import ShardWriter, scan
from ..judge import (
    JUDGE_SCHEMA,
    JudgeOutcome,
    judge_messages,
    judge_with_retries,
    precheck,
    response_format,
    table10,
    verdict_row,
)
from ..serving import api_key_env, model_endpoint
from ..store import write_parquet
from . import StageContext, StageResult

# Verdicts are short; many in flight keep a served judge busy without flooding it.
MAX_CONCURRENCY = 32


def run(ctx: StageContext) -> StageResult:
    spec = ctx.config.judge
    if spec is None:
        raise ValueError(f"{ctx.node.id}: the config has no `judge` section")
    teacher, comp = ctx.node.refs["teacher"], ctx.node.refs["compressor"]
    traces = {t["id"]: t for t in pq.read_table(ctx.input("verify") / "traces.parquet").to_pylist()}
    compressed = [r for r in pq.read_table(ctx.input("compress") / "compressed.parquet").to_pylist() if r["usable"]]
    shard_dir = ctx.work / "verdicts"
    todo = [r for r in compressed if r["id"] not in scan(shard_dir).records]
    if todo:
        with model_endpoint(spec.model, log_path=ctx.work / "server.log") as ep:
            cfg = ClientConfig(model=ep.model, base_url=ep.base_url, api_key_env=api_key_env(),
                               max_concurrency=MAX_CONCURRENCY)
            asyncio.run(_judge_all(cfg, todo, traces, ctx, meta={"teacher": teacher, "compressor": comp}))
    done = scan(shard_dir).records
    rows = [{k: done[r["id"]].get(k) for k in JUDGE_SCHEMA.names} for r in compressed]
    n = write_parquet(rows, ctx.out / "verdicts.parquet", schema=JUDGE_SCHEMA)
    summary = table10(rows)
    (ctx.out / "table10.json").write_text(json.dumps(summary, indent=1))
    overall = next((s for s in summary if s["dataset"] == "Overall"), {})
    return StageResult({"verdicts.parquet": n}, {
        "judged": overall.get("n", 0), "no_verdict": overall.get("n_failed", 0),
        "pct_faithful": overall.get("pct_faithful"), "mean_faithfulness": overall.get("mean_faithfulness")})


async def _judge_all(cfg: ClientConfig, todo: list[dict[str, Any]], traces: Mapping[str, Mapping[str, Any]],
                     ctx: StageContext, meta: dict[str, str]) -> None:
    spec = ctx.config.judge
    assert spec is not None
    sampling = Sampling(temperature=0.0, max_tokens=spec.max_tokens, extra={"response_format": response_format()})
    sem = asyncio.Semaphore(MAX_CONCURRENCY)
    async with ChatClient(cfg) as client:

        async def one(row: dict[str, Any]) -> dict[str, Any]:
            raw = traces.get(row["id"])
            original = (split_response(str(raw["response"])) if raw else None)
            original_text = original.reasoning if original else ""
            quick = precheck(original_text, row["reasoning"] or "")
            if quick is not None or raw is None:
                outcome = JudgeOutcome(quick, 0, [] if quick else ["no verified trace with this id"])
            else:
                messages = judge_messages(render_question(str(raw["question"]), raw.get("choices")),
                                          str(raw["answer"]), original_text, row["reasoning"],
                                          original_max_chars=spec.original_max_chars,
                                          compressed_max_chars=spec.compressed_max_chars)

                async def complete(attempt: int) -> str | None:
                    req = ChatRequest(f"{row['id']}#{attempt}", messages, sampling)
                    async with sem:
                        return (await client.complete(req)).content

                outcome = await judge_with_retries(complete, spec.max_attempts)
            return verdict_row(row["id"], outcome, dataset=row["dataset"], domain=row["domain"], **meta)

        async def guarded(row: dict[str, Any]) -> tuple[str, dict[str, Any] | GenerationError]:
            try:
                return row["id"], await one(row)
            except GenerationError as err:  # the server failed past the client's retries
                return row["id"], err

        failed = 0
        with ShardWriter(ctx.work / "verdicts") as shards:
            for fut in asyncio.as_completed([guarded(r) for r in todo]):
                rid, result = await fut
                if isinstance(result, GenerationError):
                    failed += 1
                    shards.write_failure({"id": rid, "error": str(result)})
                else:
                    shards.write(result)
        if failed:  # not done: a rerun (or the task's retry) asks only these again
            raise GenerationError(f"{ctx.node.id}: {failed} of {len(todo)} judge requests failed at the server; "
                                  f"rerun to retry only them")
