"""Stage `compress`: a compressor rewrites every verified trace (T=0.3 in the paper).

The compressor output becomes the new reasoning; the raw trace's final answer
is re-attached unchanged. Requests are sharded in the node's work dir, so a
killed job resumes without re-asking finished ids. Failed requests are counted
(`failed_requests`, `failed_requests.json`) and past the compressor's
`max_failed_fraction` fail the node; a rerun re-asks only them.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from ..generation.client import ChatRequest, ClientConfig, Sampling
from ..generation.sharded import check_failures, clipped_count, complete_into_shards, unanswered
from ..generation.shards import scan
from ..report.metrics import OVERALL, compression_stats
from ..serving import api_key_env, model_endpoint, tokenizer_ref
from ..store import write_parquet
from ..traces.compression import (
    COMPRESSED_SCHEMA,
    assemble,
    compression_inputs,
    split_response,
    with_compressed_tokens,
)
from ..traces.tokenization import load_tokenizer
from . import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    teacher, comp_name = ctx.node.refs["teacher"], ctx.node.refs["compressor"]
    spec = ctx.config.compressors[comp_name]
    traces = pq.read_table(ctx.input("verify") / "traces.parquet").to_pylist()
    requests, req_stats = compression_inputs(spec, traces, traces)  # trace rows carry their question fields
    shard_dir = ctx.work / "requests"
    todo = [r for r in requests if r["id"] not in scan(shard_dir).records]
    if todo:
        with model_endpoint(spec.model, log_path=ctx.work / "server.log") as ep:
            cfg = ClientConfig(model=ep.model, base_url=ep.base_url, api_key_env=api_key_env(),
                               max_concurrency=spec.sampling.batch_size, max_model_len=spec.serve.max_model_len)
            sampling = Sampling.from_spec(spec.sampling)
            # each request seeded from its trace id (one round): reproducible whatever the batching
            complete_into_shards(cfg, (ChatRequest(r["id"], [{"role": "user", "content": r["prompt"]}],
                                                   sampling.for_request(r["id"])) for r in todo), shard_dir)
    scanned = scan(shard_dir)
    failed = check_failures(ctx.node.id, unanswered([r["id"] for r in requests], scanned), len(requests),
                            max_fraction=spec.max_failed_fraction,
                            config_key=f"compressors.{comp_name}.max_failed_fraction", out_dir=ctx.out)
    done = scanned.records
    by_id = {t["id"]: t for t in traces}
    rows = []
    for r in requests:
        rec = done.get(r["id"])
        if rec is None:  # a failed request: in failed_requests.json, counted above
            continue
        t = by_id[r["id"]]
        rows.append(assemble(r["id"], t["response"], rec.get("content") or rec.get("response"),
                             finish_reason=rec.get("finish_reason"), canonical_answer=t["answer"],
                             dataset=t["dataset"], domain=t["domain"], teacher=teacher, compressor=comp_name))
    # Token lengths kept in the artifact (the report's Table 5 and Fig. 2 read them from it).
    tok = load_tokenizer(tokenizer_ref(spec.tokenizer or spec.model))
    raw = {r["id"]: parts.reasoning for r in rows if (parts := split_response(by_id[r["id"]]["response"]))}
    rows = with_compressed_tokens(rows, tok, raw)
    n = write_parquet(rows, ctx.out / "compressed.parquet", schema=COMPRESSED_SCHEMA)
    stats = [s.to_row() for s in compression_stats(rows)]
    (ctx.out / "stats.json").write_text(json.dumps(stats, indent=1))
    overall = next((s for s in stats if s["dataset"] == OVERALL), {})
    return StageResult({"compressed.parquet": n}, {**req_stats, **failed,
                                                   "clipped_requests": clipped_count(done.values()),
                                                   "mean_rho": overall.get("mean_rho"),
                                                   "ratio_of_means": overall.get("ratio_of_means")})

