"""Stand-ins for every stage (tests only), through the package's stage hook:
COMPRESS_DISTILL_STAGES=tests.support.skeleton_stages (`tests.support.SKELETON_ENV` also puts
the repo root on PYTHONPATH, so that the jobs' processes import this module too).

They write small tables so that the DAG, the store, caching and resume can be
exercised in seconds, and they mark their manifests `placeholder: true`: no
model is run, so serving jobs start no server (`SERVE_WITH`).
COMPRESS_DISTILL_SKELETON_DELAY_S makes each stand-in sleep (the kill/resume
test uses it to catch a run mid-stage).
"""

from __future__ import annotations

import json
import os
import random
import time

import pyarrow.parquet as pq

from compress_distill.stages import StageContext, StageResult
from compress_distill.store import write_parquet

SERVE_WITH = "stage"  # jobs start no model server: these stages serve none


def _delay() -> None:
    time.sleep(float(os.environ.get("COMPRESS_DISTILL_SKELETON_DELAY_S", "0")))


def _synthetic(domain: str, n: int, rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if domain == "add":
            out.append((f"What is ({a % 10} + {b % 10}) mod 10?", str((a % 10 + b % 10) % 10)))
        elif domain == "cmp":
            out.append((f"Which is larger, {a} or {b}?", str(max(a, b))))
        else:
            out.append((f"Is {a * 10 + b} even?", "yes" if (a * 10 + b) % 2 == 0 else "no"))
    return out


def build(ctx: StageContext) -> StageResult:
    _delay()
    (ctx.out / "model.json").write_text(json.dumps({"ref": ctx.node.params["ref"], "skeleton": True}))
    return StageResult({}, placeholder=True)


def prepare(ctx: StageContext) -> StageResult:
    _delay()
    rows = []
    split = "train" if ctx.node.name == "train-pool" else "test"
    for name, ds in sorted(ctx.node.params["datasets"].items()):
        if not ds["source"].startswith("synthetic:"):
            raise NotImplementedError(f"dataset {name}: loading {ds['source']!r} needs the dataset registry "
                                      "(issue 3); the skeleton only builds synthetic: sources")
        rng = random.Random(f"{name}-{split}")
        for i, (q, a) in enumerate(_synthetic(ds["source"].split(":", 1)[1], min(ds["limit"] or 50, 50), rng)):
            rows.append({"id": f"{name}-{split}-{i}", "dataset": name, "domain": ds["domain"], "question": q,
                         "choices": None, "answer": a, "answer_type": ds["answer_type"], "split": split})
    return StageResult({"questions.parquet": write_parquet(rows, ctx.out / "questions.parquet")}, placeholder=True)


def _questions(ctx: StageContext) -> list[dict]:
    return pq.read_table(ctx.input("prepare", "train-pool") / "questions.parquet").to_pylist()


def generate(ctx: StageContext) -> StageResult:
    _delay()
    rows = [{"id": q["id"], "round": 1, "response": f"<think>The question asks: {q['question']} "
             f"Let me check it twice. It is {q['answer']}.</think> The answer is {q['answer']}.",
             "finish_reason": "stop"} for q in _questions(ctx)]
    return StageResult({"attempts.parquet": write_parquet(rows, ctx.out / "attempts.parquet")}, placeholder=True)


def verify(ctx: StageContext) -> StageResult:
    _delay()
    attempts = {r["id"]: r for r in pq.read_table(ctx.input("generate") / "attempts.parquet").to_pylist()}
    rows = [{**q, "response": attempts[q["id"]]["response"]} for q in _questions(ctx) if q["id"] in attempts]
    return StageResult({"traces.parquet": write_parquet(rows, ctx.out / "traces.parquet")}, placeholder=True)


def compress(ctx: StageContext) -> StageResult:
    _delay()
    rows = []
    for t in pq.read_table(ctx.input("verify") / "traces.parquet").to_pylist():
        think = t["response"].split("</think>")[0].removeprefix("<think>")
        short = think.split(". ")[-1]
        rows.append({"id": t["id"], "compressed": short, "rho": len(short) / max(len(think), 1)})
    return StageResult({"compressed.parquet": write_parquet(rows, ctx.out / "compressed.parquet")}, placeholder=True)


def judge(ctx: StageContext) -> StageResult:
    _delay()
    return StageResult({}, placeholder=True)


def derive(ctx: StageContext) -> StageResult:
    _delay()
    kind = ctx.node.params["source"]["kind"]
    traces = pq.read_table(ctx.input("verify") / "traces.parquet").to_pylist()
    rows = []
    for t in traces:
        think, _, final = t["response"].partition("</think>")
        if kind == "answer_only":
            target = final.strip()
        else:
            target = t["response"]
        rows.append({"id": t["id"], "messages": json.dumps([{"role": "user", "content": t["question"]},
                                                             {"role": "assistant", "content": target}])})
    return StageResult({"train.parquet": write_parquet(rows, ctx.out / "train.parquet")}, placeholder=True)


def train(ctx: StageContext) -> StageResult:
    _delay()
    n = pq.read_metadata(ctx.input("derive") / "train.parquet").num_rows
    (ctx.out / "checkpoint").mkdir()
    (ctx.out / "checkpoint" / "README").write_text("skeleton checkpoint: no weights\n")
    loss = [{"step": s, "loss": 2.0 / (s + 1)} for s in range(5)]
    write_parquet(loss, ctx.out / "loss.parquet")
    return StageResult({"loss.parquet": len(loss)}, {"examples": n}, placeholder=True)


def evaluate(ctx: StageContext) -> StageResult:
    _delay()
    qs = pq.read_table(ctx.input("prepare", "eval-suite") / "questions.parquet").to_pylist()
    rows = [{"id": q["id"], "dataset": q["dataset"], "correct": False, "completion_tokens": 0,
             "truncated": False} for q in qs]
    return StageResult({"records.parquet": write_parquet(rows, ctx.out / "records.parquet")}, placeholder=True)


def report(ctx: StageContext) -> StageResult:
    _delay()
    cells = sorted(nid.split("/", 1)[1] for nid in ctx.inputs if nid.startswith("evaluate/"))
    lines = ["# Report (skeleton)", "", "Stages are placeholders; no model was run.", "", "| cell |", "|---|"]
    lines += [f"| {c} |" for c in cells]
    (ctx.out / "report.md").write_text("\n".join(lines) + "\n")
    return StageResult({}, {"cells": len(cells)}, placeholder=True)
