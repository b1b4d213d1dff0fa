"""The judge DAG stage against a real HTTP server: schema sent, answers validated, bounded retries,
failures counted (never dropped), server errors leave only the failed ids for a rerun."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from compress_distill.config import parse_config
from compress_distill.generation.fake_server import FakeServer, Reply, SeenRequest, completion
from compress_distill.generation.sharded import TooManyFailedRequests
from compress_distill.plan import build_plan
from compress_distill.stages import StageContext
from compress_distill.stages.judge import run as judge_run
from compress_distill.store import write_parquet
from compress_distill.traces.compression import COMPRESSED_SCHEMA

from .conftest import CONFIGS

GOOD = {"faithfulness": 5, "coverage": 4, "clarity": 5, "verdict": "faithful", "answer_alignment": True,
        "failure_modes": [], "rationale": "keeps every step"}
IDS = ["q-good", "q-fenced", "q-retry", "q-never", "q-empty"]


def _ctx(tmp_path: Path, max_attempts: int = 3, max_failed_fraction: float = 0.0) -> StageContext:
    raw = yaml.safe_load((CONFIGS / "mini-ci.yaml").read_text())
    raw["judge"] = {"enabled": True, "model": "fake-judge", "max_attempts": max_attempts,
                    "max_failed_fraction": max_failed_fraction, "reasoning_effort": "low",
                    "serve": {"tensor_parallel": 1, "data_parallel": 1, "max_model_len": 32768}}
    plan = build_plan(parse_config(raw, "<test>"))
    node = next(n for n in plan.nodes.values() if n.stage == "judge")
    verify, comp = tmp_path / "verify", tmp_path / "compress"
    verify.mkdir()
    comp.mkdir()
    traces, rows = [], []
    for i, qid in enumerate(IDS):
        response = f"<think>First {i} plus 1. Let me re-check: {i} plus 1 is {i + 1}.</think> The answer is {i + 1}."
        traces.append({"id": qid, "dataset": "add", "domain": "Math", "question": f"What is {i} + 1?",
                       "choices": None, "answer": str(i + 1), "answer_type": "numeric", "response": response})
        reasoning = "" if qid == "q-empty" else f"{i} + 1 = {i + 1}."
        rows.append({"id": qid, "dataset": "add", "domain": "Math", "teacher": "mini-teacher",
                     "compressor": "mini-mild", "reasoning": reasoning, "response": f"<think>{reasoning}</think>",
                     "raw_chars": 50, "compressed_chars": len(reasoning), "rho": len(reasoning) / 50,
                     "status": "ok", "usable": True, "finish_reason": "stop"})
    write_parquet(traces, verify / "traces.parquet")
    write_parquet(rows, comp / "compressed.parquet", schema=COMPRESSED_SCHEMA)
    inputs = {d: (verify if d.startswith("verify/") else comp) for d in node.deps
              if d.startswith(("verify/", "compress/"))}
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    return StageContext(plan.config, node, inputs, out, work)


def _question_of(req: SeenRequest) -> str:
    return re.search(r"What is (\d+) \+ 1\?", req.body["messages"][1]["content"]).group(1)  # type: ignore[union-attr]


def _script(req: SeenRequest) -> Reply:
    i = int(_question_of(req))
    if IDS[i] == "q-good":
        return Reply(200, completion(json.dumps(GOOD)))
    if IDS[i] == "q-fenced":  # a server that ignores response_format and wraps the JSON in a fence
        return Reply(200, completion("```json\n" + json.dumps({**GOOD, "verdict": "partially_faithful"}) + "\n```"))
    if IDS[i] == "q-retry":  # first a verdict cut at max_tokens, then a valid one
        seen = sum(_question_of(r) == str(i) for r in srv_requests)
        return Reply(200, completion('{"faithfulness": 5, "cov' if seen <= 1 else json.dumps(GOOD)))
    return Reply(200, completion('{"faithfulness": 9}'))  # q-never: always fails the schema


srv_requests: list[SeenRequest] = []


def test_judge_stage_validates_retries_and_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = _ctx(tmp_path, max_failed_fraction=0.2)  # q-never's invalid verdict is 1 of 5
    with FakeServer(_script) as srv:
        srv_requests[:] = []
        srv.script = lambda r: (srv_requests.append(r), _script(r))[1]
        monkeypatch.setenv("CD_SERVER_URL", srv.base_url)
        result = judge_run(ctx)
        sent = list(srv.requests)
    body = sent[0].body
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["properties"]["verdict"]
    assert body["temperature"] == 0.0 and body["reasoning_effort"] == "low"
    rows = {r["id"]: r for r in pq.read_table(ctx.out / "verdicts.parquet").to_pylist()}
    assert set(rows) == set(IDS)  # nothing dropped
    assert rows["q-good"]["verdict"] == "faithful" and rows["q-good"]["attempts"] == 1
    assert rows["q-fenced"]["verdict"] == "partially_faithful"
    assert rows["q-retry"]["verdict"] == "faithful" and rows["q-retry"]["attempts"] == 2
    assert rows["q-never"]["verdict"] is None and rows["q-never"]["attempts"] == 3
    assert "schema" in rows["q-never"]["error"]
    assert rows["q-empty"]["failure_modes"] == ["empty_compressed"]  # never sent to the judge
    assert not any("4 + 1" in r.body["messages"][1]["content"] for r in sent)
    assert len(sent) == 1 + 1 + 2 + 3
    assert result.metrics["no_verdict"] == 1 and result.metrics["judged"] == 4
    assert result.metrics["failed_requests"] == 1 and result.metrics["failed_by_kind"] == {"invalid_verdict": 1}
    (failure,) = json.loads((ctx.out / "failed_requests.json").read_text())
    assert failure["id"] == "q-never" and failure["kind"] == "invalid_verdict" and "schema" in failure["error"]
    table = json.loads((ctx.out / "table10.json").read_text())
    overall = next(t for t in table if t["dataset"] == "Overall")
    assert overall["n"] == 4 and overall["n_failed"] == 1


def test_server_errors_fail_the_stage_and_a_rerun_asks_only_those(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = _ctx(tmp_path, max_attempts=1)

    def flaky(req: SeenRequest) -> Reply:
        return Reply(500, '{"error": "loading"}') if _question_of(req) == "0" else Reply(200, completion(json.dumps(GOOD)))

    with FakeServer(flaky) as srv:
        monkeypatch.setenv("CD_SERVER_URL", srv.base_url)
        with pytest.raises(TooManyFailedRequests, match=r"1 of 5 requests failed \(20.0%.*q-good.*judge\.max_failed"):
            judge_run(ctx)
        first = len(srv.requests)
        srv.script = lambda r: Reply(200, completion(json.dumps(GOOD)))
        judge_run(ctx)
        again = srv.requests[first:]
    assert {_question_of(r) for r in again} == {"0"}  # only the failed id is asked again
    rows = pq.read_table(ctx.out / "verdicts.parquet").to_pylist()
    assert len(rows) == len(IDS) and all(r["verdict"] for r in rows)


def test_invalid_verdicts_fail_the_node_by_default_and_stay_final(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = _ctx(tmp_path)
    with FakeServer(_script) as srv:
        srv_requests[:] = []
        srv.script = lambda r: (srv_requests.append(r), _script(r))[1]
        monkeypatch.setenv("CD_SERVER_URL", srv.base_url)
        with pytest.raises(TooManyFailedRequests, match=r"1 of 5 requests failed.*invalid_verdict.*q-never"):
            judge_run(ctx)
        first = len(srv.requests)
        with pytest.raises(TooManyFailedRequests, match="q-never"):
            judge_run(ctx)
        assert len(srv.requests) == first  # an invalid verdict is final: a rerun does not ask again
