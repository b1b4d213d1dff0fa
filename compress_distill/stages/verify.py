"""Stage `verify`: re-check every accepted teacher trace and publish the verified-trace table.

Generation already verifies inside its rounds (to decide what to resample);
this CPU step re-verifies in a process pool, where Math-Verify's signal-based
timeouts work, joins the question fields, and quarantines anything that no
longer checks out (with its reason) instead of dropping it. A trace extraction
cannot judge (reason `unverifiable`, e.g. a response over the size limit) is
quarantined like the others, with the cause in `detail`, and counted.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from ..store import write_parquet
from ..traces.extraction import UNVERIFIABLE, split_think, verify_batch
from . import StageContext, StageResult

TRACE_COLUMNS = ("id", "dataset", "domain", "question", "choices", "answer", "answer_type")
TRACES_SCHEMA = pa.schema([
    ("id", pa.string()), ("dataset", pa.string()), ("domain", pa.string()), ("question", pa.string()),
    ("choices", pa.list_(pa.string())), ("answer", pa.string()), ("answer_type", pa.string()),
    ("response", pa.string()), ("reasoning", pa.string()), ("final", pa.string()),
    ("reasoning_chars", pa.int64()), ("round", pa.int32()), ("completion_tokens", pa.int64()),
    ("extracted", pa.string()),
])
QUARANTINE_SCHEMA = TRACES_SCHEMA.append(pa.field("reason", pa.string())).append(pa.field("detail", pa.string()))


def run(ctx: StageContext) -> StageResult:
    questions = {q["id"]: q for q in
                 pq.read_table(ctx.input("prepare", "train-pool") / "questions.parquet").to_pylist()}
    gen_dir = ctx.input("generate")
    accepted = pq.read_table(gen_dir / "traces.parquet").to_pylist()
    verdicts = verify_batch([{**questions[a["id"]], "response": a["response"]} for a in accepted], workers=1,
                            expect_think=True)
    traces, quarantined = [], []
    for a, v in zip(accepted, verdicts, strict=True):
        q = questions[a["id"]]
        split = split_think(a["response"], expect_think=True)
        row = {**{k: q.get(k) for k in TRACE_COLUMNS}, "response": a["response"], "reasoning": split.reasoning,
               "final": split.answer_text, "reasoning_chars": len(split.reasoning), "round": a["round"],
               "completion_tokens": a.get("completion_tokens"), "extracted": v.extracted}
        if v.correct and split.has_close:
            traces.append(row)
        else:
            quarantined.append({**row, "reason": v.reason, "detail": v.error})
    rows = {"traces.parquet": write_parquet(traces, ctx.out / "traces.parquet", schema=TRACES_SCHEMA),
            "quarantine.parquet": write_parquet(quarantined, ctx.out / "quarantine.parquet",
                                                schema=QUARANTINE_SCHEMA)}
    yield_rows = json.loads((gen_dir / "yield.json").read_text())
    rows["yield.parquet"] = write_parquet(pa.Table.from_pylist(yield_rows), ctx.out / "yield.parquet")
    return StageResult(rows, {"verified": len(traces), "quarantined": len(quarantined),
                              "unverifiable": sum(v.reason == UNVERIFIABLE for v in verdicts),
                              "questions": len(questions)})

