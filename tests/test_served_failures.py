"""Nothing lost silently: every served stage counts its failed requests, publishes them in
`failed_requests.json`, fails the node past `max_failed_fraction` (naming the ids), and a rerun
(the work dir survives) asks only the failed ids. Real HTTP against a scripted server."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from compress_distill.config import parse_config
from compress_distill.generation.fake_server import FakeServer, Reply, SeenRequest, completion
from compress_distill.generation.sharded import FAILED_FILE, TooManyFailedRequests, check_failures, unanswered
from compress_distill.generation.shards import ShardWriter, scan
from compress_distill.miniworld.recipes import resolve_model
from compress_distill.plan import build_plan
from compress_distill.stages import StageContext, StageResult
from compress_distill.stages.compress import run as compress_run
from compress_distill.stages.evaluate import run as evaluate_run
from compress_distill.stages.generate import run as generate_run
from compress_distill.store import write_parquet

from .conftest import CONFIGS

IDS = ["add-0", "add-1", "add-2", "add-3"]
BAD = "add-2"  # the id whose request the server refuses until it is "fixed"


def _question(i: int, qid: str) -> dict[str, Any]:
    return {"id": qid, "dataset": "add", "domain": "math", "question": f"What is {i} + 1?", "choices": None,
            "answer": str(i + 1), "answer_type": "numeric", "split": "train"}


def _ctx(tmp_path: Path, stage: str, edit: Callable[[dict[str, Any]], None] = lambda raw: None) -> StageContext:
    raw = yaml.safe_load((CONFIGS / "mini-ci.yaml").read_text())
    edit(raw)
    plan = build_plan(parse_config(raw, "<test>"))
    node = next(n for n in plan.nodes.values() if n.stage == stage)
    inputs: dict[str, Path] = {}
    for dep in node.deps:
        if dep.split("/", 1)[0] in ("prepare", "verify", "train"):
            inputs[dep] = tmp_path / dep.replace("/", "_")
            inputs[dep].mkdir(parents=True)
    questions = [_question(i, qid) for i, qid in enumerate(IDS)]
    for dep, path in inputs.items():
        if dep.startswith("prepare/"):
            write_parquet(questions, path / "questions.parquet")
        elif dep.startswith("verify/"):
            write_parquet([{**q, "response": f"<think>{q['question']} It is {q['answer']}.</think> "
                                             f"The answer is {q['answer']}."} for q in questions],
                          path / "traces.parquet")
        elif dep.startswith("train/"):  # a trained student: evaluate counts reasoning tokens with its tokenizer
            shutil.copytree(resolve_model("mini:student-tiny"), path / "model")
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir(exist_ok=True)
    return StageContext(plan.config, node, inputs, out, work)


def _rerun(ctx: StageContext) -> StageContext:
    """The runner's retry: a fresh out dir, the same work dir."""
    out = ctx.out.with_name(ctx.out.name + "-again")
    out.mkdir()
    return StageContext(ctx.config, ctx.node, ctx.inputs, out, ctx.work)


def _which(req: SeenRequest) -> str:
    text = json.dumps(req.body["messages"])
    return IDS[int(re.search(r"What is (\d+) \+ 1\?", text).group(1))]  # type: ignore[union-attr]


def _script(broken: set[str]) -> Callable[[SeenRequest], Reply]:
    def script(req: SeenRequest) -> Reply:
        qid = _which(req)
        if qid in broken:
            return Reply(400, '{"error": {"message": "unsupported content"}}')
        answer = IDS.index(qid) + 1
        return Reply(200, completion(f"<think>{answer - 1} plus 1 is {answer}.</think> The answer is {answer}."))
    return script


def _run(stage: Callable[[StageContext], StageResult], ctx: StageContext, srv: FakeServer,
         monkeypatch: pytest.MonkeyPatch) -> StageResult:
    monkeypatch.setenv("CD_SERVER_URL", srv.base_url)
    return stage(ctx)


# --- the accounting itself --------------------------------------------------------------------------------

def test_check_failures_publishes_counts_and_fails_past_the_fraction(tmp_path: Path) -> None:
    failures = [{"id": f"q{i}", "kind": "rejected" if i % 2 else "prompt_too_long", "error": "x"} for i in range(12)]
    assert check_failures("n", [], 10, max_fraction=0.0, config_key="k", out_dir=tmp_path) == \
        {"failed_requests": 0, "failed_by_kind": {}}
    assert json.loads((tmp_path / FAILED_FILE).read_text()) == []
    metrics = check_failures("n", failures[:2], 10, max_fraction=0.2, config_key="k", out_dir=tmp_path)
    assert metrics == {"failed_requests": 2, "failed_by_kind": {"prompt_too_long": 1, "rejected": 1}}
    with pytest.raises(TooManyFailedRequests) as ei:
        check_failures("compress/t.c", failures, 100, max_fraction=0.1, config_key="compressors.c.max_failed_fraction",
                       out_dir=tmp_path)
    msg = str(ei.value)
    assert msg.startswith("compress/t.c: 12 of 100 requests failed (12.0%")
    assert "q0, q1" in msg and "q9" in msg and "q10" not in msg and "(+2 more)" in msg  # ten ids named
    assert "max_failed_fraction=0.1" in msg and "`compressors.c.max_failed_fraction`" in msg
    assert len(json.loads((tmp_path / FAILED_FILE).read_text())) == 12  # the file has them all


def test_open_failures_latest_wins_and_a_later_success_closes_one(tmp_path: Path) -> None:
    with ShardWriter(tmp_path) as w:
        w.write_failure({"id": "a", "kind": "retries_exhausted", "error": "first"})
        w.write_failure({"id": "b", "kind": "rejected", "error": "b fails"})
    with ShardWriter(tmp_path) as w:
        w.write_failure({"id": "a", "kind": "rejected", "error": "second"})
        w.write({"id": "b", "response": "ok"})
    s = scan(tmp_path)
    assert {k: f["error"] for k, f in s.open_failures().items()} == {"a": "second"}
    assert unanswered(["a", "b", "c"], s) == [{"id": "a", "kind": "rejected", "error": "second"},
                                              {"id": "c", "kind": "missing", "error": "no result recorded"}]


# --- the stages ---------------------------------------------------------------------------------------------

def test_compress_fails_the_node_naming_the_id_and_a_rerun_asks_only_it(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.tiny_tokenizer import bytelevel

    tok = tmp_path / "tokenizer.json"
    bytelevel().backend_tokenizer.save(str(tok))
    ctx = _ctx(tmp_path, "compress", lambda raw: raw["compressors"]["mini-mild"].update(tokenizer=str(tok)))
    broken = {BAD}
    with FakeServer(_script(broken)) as srv:
        with pytest.raises(TooManyFailedRequests, match=rf"1 of 4 requests failed \(25.0%.*{BAD}.*"
                                                        r"`compressors\.mini-mild\.max_failed_fraction`"):
            _run(compress_run, ctx, srv, monkeypatch)
        first = len(srv.requests)
        broken.clear()
        again = _rerun(ctx)
        result = _run(compress_run, again, srv, monkeypatch)
        assert [_which(r) for r in srv.requests[first:]] == [BAD]
    assert result.metrics["failed_requests"] == 0 and result.metrics["clipped_requests"] == 0
    assert json.loads((again.out / FAILED_FILE).read_text()) == []
    assert pq.read_metadata(again.out / "compressed.parquet").num_rows == 4


def test_evaluate_keeps_a_record_for_every_question(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def allow(raw: dict[str, Any]) -> None:
        raw["evaluation"]["max_failed_fraction"] = 0.25

    ctx = _ctx(tmp_path, "evaluate", allow)
    with FakeServer(_script({BAD})) as srv:
        result = _run(evaluate_run, ctx, srv, monkeypatch)
    records = {r["id"]: r for r in pq.read_table(ctx.out / "records.parquet").to_pylist()}
    assert sorted(records) == sorted(IDS)
    bad = records[BAD]
    assert (bad["failed"], bad["correct"], bad["response"], bad["completion_tokens"]) == (True, False, "", 0)
    assert all(r["correct"] and not r["failed"] for k, r in records.items() if k != BAD)
    assert result.metrics["failed_requests"] == 1 and result.metrics["failed"] == 1
    assert result.metrics["n"] == 4 and result.metrics["accuracy"] == 0.75  # the failed one is scored wrong
    assert result.metrics["truncation_rate"] == 0.0  # over the answered three
    (failure,) = json.loads((ctx.out / FAILED_FILE).read_text())
    assert failure["id"] == BAD and failure["kind"] == "rejected" and "unsupported content" in failure["error"]
    metrics = json.loads((ctx.out / "metrics.json").read_text())
    assert metrics["failed"] == 1 and "acc:Math" in metrics


def test_evaluate_fails_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = _ctx(tmp_path, "evaluate")
    with FakeServer(_script({BAD})) as srv:
        with pytest.raises(TooManyFailedRequests, match=rf"{BAD}.*`evaluation\.max_failed_fraction`"):
            _run(evaluate_run, ctx, srv, monkeypatch)


def test_generate_counts_last_round_failures_and_a_rerun_asks_only_them(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = _ctx(tmp_path, "generate")
    broken = {BAD}
    with FakeServer(_script(broken)) as srv:
        with pytest.raises(TooManyFailedRequests, match=rf"1 of 4 requests failed.*{BAD}.*"
                                                        r"`teachers\.mini-teacher\.max_failed_fraction`"):
            _run(generate_run, ctx, srv, monkeypatch)
        rounds = [r.request_id for r in srv.requests]
        assert sorted(rounds) == sorted([f"r1/{i}" for i in IDS] + [f"r2/{BAD}"])  # failed in both rounds
        broken.clear()
        again = _rerun(ctx)
        result = _run(generate_run, again, srv, monkeypatch)
        assert [r.request_id for r in srv.requests[len(rounds):]] == [f"r2/{BAD}"]  # the last round reopened
    assert result.metrics["failed_requests"] == 0 and result.metrics["correct"] == 4
    assert json.loads((again.out / FAILED_FILE).read_text()) == []
