"""Stage `generate`: the teacher answers the training pool, with rejection-sampling rounds.

All rounds run inside one serving job (a vLLM load takes ~30 min on the
cluster, so it must not restart per round). Request shards live in the
node's work dir, so a killed job resumes without re-asking finished ids.
Requests that failed in the last round are counted (`failed_requests`,
`failed_requests.json`) and past the teacher's `max_failed_fraction` fail the
node; a rerun re-asks only them.
"""

from __future__ import annotations

import asyncio
import json
import shutil

import pyarrow.parquet as pq

from ..generation.client import ChatClient, ClientConfig, Sampling
from ..generation.rejection import run_rejection, unanswered_after
from ..generation.sharded import check_failures, clipped_count
from ..generation.yield_table import load_attempts, write_outputs
from ..serving import api_key_env, model_endpoint
from ..traces.extraction import verify_response
from . import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    name = ctx.node.refs["teacher"]
    teacher = ctx.config.teachers[name]
    questions = pq.read_table(ctx.input("prepare", "train-pool") / "questions.parquet").to_pylist()
    with model_endpoint(teacher.model, log_path=ctx.work / "server.log") as ep:
        cfg = ClientConfig(model=ep.model, base_url=ep.base_url, api_key_env=api_key_env(),
                           max_concurrency=teacher.sampling.batch_size, max_model_len=teacher.serve.max_model_len)
        asyncio.run(_generate(cfg, questions, ctx, Sampling.from_spec(teacher.sampling)))
    failed = check_failures(ctx.node.id, unanswered_after(ctx.work, [str(q["id"]) for q in questions],
                                                          teacher.rejection_rounds),
                            len(questions), max_fraction=teacher.max_failed_fraction,
                            config_key=f"teachers.{name}.max_failed_fraction", out_dir=ctx.out)
    table = write_outputs(ctx.work, questions, teacher.label)
    for table_name in ("attempts.parquet", "traces.parquet"):
        shutil.copy2(ctx.work / table_name, ctx.out / table_name)
    (ctx.out / "yield.json").write_text(json.dumps(table, indent=1))
    rows = {n: pq.read_metadata(ctx.out / n).num_rows for n in ("attempts.parquet", "traces.parquet")}
    total = table[-1] if table else {}
    return StageResult(rows, {"questions": len(questions), "correct": total.get("correct"),
                              "yield": total.get("yield"), **failed,
                              "clipped_requests": clipped_count(load_attempts(ctx.work)[0])})


async def _generate(cfg: ClientConfig, questions: list[dict], ctx: StageContext, sampling: Sampling) -> None:
    teacher = ctx.config.teachers[ctx.node.refs["teacher"]]
    async with ChatClient(cfg) as client:
        await run_rejection(questions, verify_response, ctx.work, client=client, sampling=sampling,
                            rounds=teacher.rejection_rounds, system_prompt=teacher.system_prompt)
