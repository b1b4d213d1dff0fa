"""Rejection sampling, shards and resume: scripted servers for the logic, a real server + kill -9 for resume."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from compress_distill.generation.client import (
    ChatClient,
    ClientConfig,
    Completion,
    GenerationError,
    RequestRejected,
    Sampling,
    normalize_message,
)
from compress_distill.generation.fake_server import FakeServer, Reply, SeenRequest, completion
from compress_distill.generation.rejection import Judge, round_dir, run_rejection, unanswered_after
from compress_distill.generation.shards import ShardWriter, compact_to_parquet, done_ids, scan
from compress_distill.generation.testing import session_server
from compress_distill.generation.yield_table import write_outputs

log = logging.getLogger(__name__)
FAST = dict(backoff_base_s=0.01, backoff_max_s=0.02)


def q(qid: str, answer: str, dataset: str, domain: str, choices: list[str] | None = None) -> dict[str, Any]:
    return {"id": qid, "question": f"Question {qid}?", "answer": answer, "answer_type": "numeric",
            "choices": choices, "dataset": dataset, "domain": domain}


def verify(response: str, answer: str, answer_type: str) -> bool:
    return response.endswith(f"The answer is {answer}.")


def _round_and_id(req: SeenRequest) -> tuple[int, str]:
    rnd, qid = (req.request_id or "").split("/", 1)
    return int(rnd[1:]), qid


def staged(need: dict[str, int]) -> Any:
    """Question `qid` is answered correctly from round need[qid] on; wrong before."""
    def script(req: SeenRequest) -> Reply:
        rnd, qid = _round_and_id(req)
        ans = "7" if rnd >= need[qid] else "0"
        return Reply(200, completion(f"<think>{'r' * 10 * rnd}</think>The answer is {ans}.",
                                     completion_tokens=100 * rnd))
    return script


def run(srv: FakeServer, questions: list[dict], out: Path, *, rounds: int, verifier: Any = verify,
        temperature: float = 0.7, require_think: bool = True, max_attempts: int = 3) -> list:
    async def go() -> list:
        cfg = ClientConfig(model="teacher", base_url=srv.base_url, max_concurrency=4, max_attempts=max_attempts, **FAST)
        async with ChatClient(cfg) as client:
            return await run_rejection(questions, verifier, out, client=client, rounds=rounds,
                                       sampling=Sampling(temperature=temperature, max_tokens=64, seed=1),
                                       require_think=require_think)
    return asyncio.run(go())


NEED = {"a1": 1, "a2": 1, "a3": 2, "b1": 2, "b2": 3, "b3": 99}
QS = [q(k, "7", "dsA" if k[0] == "a" else "dsB", "Math" if k[0] == "a" else "Science") for k in NEED]


def test_rounds_remove_solved_questions_and_fill_table4(tmp_path: Path) -> None:
    with FakeServer(staged(NEED)) as srv:
        stats = run(srv, QS, tmp_path, rounds=3)
        seen = [_round_and_id(r) for r in srv.requests]
    assert [(s.round, s.submitted, s.correct) for s in stats] == [(1, 6, 2), (2, 4, 2), (3, 2, 1)]
    assert sorted(seen) == sorted([(1, k) for k in NEED] + [(2, k) for k in ("a3", "b1", "b2", "b3")]
                                  + [(3, "b2"), (3, "b3")])
    assert stats[2].rejected == {"wrong": 1}
    rows = {r["dataset"]: r for r in write_outputs(tmp_path, QS, generator="teacher")}
    a, b, tot = rows["dsA"], rows["dsB"], rows["Total"]
    assert (a["domain"], a["total"], a["correct_per_round"], a["cumulative_yield"]) == \
        ("Math", 3, [2, 1, 0], [0.6667, 1.0, 1.0])
    assert (b["correct_per_round"], b["cumulative_yield"], b["yield"]) == ([0, 1, 1], [0.0, 0.3333, 0.6667], 0.6667)
    assert (tot["total"], tot["correct"], tot["attempts"]) == (6, 5, 12)
    assert a["avg_reasoning_chars"] == pytest.approx((10 + 10 + 20) / 3, abs=0.1)
    assert b["avg_total_tokens"] == pytest.approx((200 + 300) / 2)
    traces = pq.read_table(tmp_path / "traces.parquet").to_pylist()
    assert [(t["id"], t["round"]) for t in traces] == [("a1", 1), ("a2", 1), ("a3", 2), ("b1", 2), ("b2", 3)]
    assert pq.read_table(tmp_path / "attempts.parquet").num_rows == 12
    assert pq.ParquetFile(tmp_path / "attempts.parquet").metadata.row_group(0).column(0).compression == "ZSTD"
    assert "| Teacher |" not in (tmp_path / "yield.md").read_text() and "dsA" in (tmp_path / "yield.md").read_text()


def test_resume_skips_closed_rounds_and_extending_rounds_only_asks_the_unsolved(tmp_path: Path) -> None:
    with FakeServer(staged(NEED)) as srv:
        run(srv, QS, tmp_path, rounds=3)
        n = len(srv.requests)
        assert run(srv, QS, tmp_path, rounds=3) == [] and len(srv.requests) == n
        run(srv, QS, tmp_path, rounds=4)
        assert [_round_and_id(r) for r in srv.requests[n:]] == [(4, "b3")]
        with pytest.raises(ValueError, match="different.*temperature"):
            run(srv, QS, tmp_path, rounds=4, temperature=1.0)


def test_last_round_failures_are_counted_and_a_rerun_asks_only_them(tmp_path: Path) -> None:
    down = {(1, "a1"), (2, "b3")}  # (round, id) whose request fails at the server
    answer = staged(NEED)

    def script(req: SeenRequest) -> Reply:
        return Reply(500, "overloaded") if _round_and_id(req) in down else answer(req)

    ids = [x["id"] for x in QS]
    with FakeServer(script) as srv:
        stats = run(srv, QS, tmp_path, rounds=2, max_attempts=2)
        assert [s.failed for s in stats] == [1, 1]
        # a1 failed in round 1 but fell to round 2 (and was solved there): only b3's request is lost
        lost = unanswered_after(tmp_path, ids, rounds=2)
        assert [(f["id"], f["kind"]) for f in lost] == [("b3", "retries_exhausted")] and "500" in lost[0]["error"]
        n = len(srv.requests)
        down.clear()
        run(srv, QS, tmp_path, rounds=2)  # the closed last round reopens for its failed ids alone
        assert [_round_and_id(r) for r in srv.requests[n:]] == [(2, "b3")]
        assert unanswered_after(tmp_path, ids, rounds=2) == []
        n = len(srv.requests)
        assert run(srv, QS, tmp_path, rounds=2) == [] and len(srv.requests) == n


def test_torn_last_line_is_skipped_counted_and_redone(tmp_path: Path) -> None:
    with FakeServer(staged(NEED)) as srv:
        run(srv, QS, tmp_path, rounds=1)
        rdir = round_dir(tmp_path, 1)
        # simulate a crash mid-write: round not closed, the last line cut in half
        (rdir / "_COMPLETE.json").unlink()
        (part,) = rdir.glob("part-*.jsonl")
        data = part.read_bytes()
        last_start = data.rstrip(b"\n").rfind(b"\n") + 1
        torn_id = json.loads(data[last_start:])["id"]
        part.write_bytes(data[: last_start + (len(data) - last_start) // 2])
        s = scan(rdir)
        assert (s.torn, len(s.records)) == (1, 5) and torn_id not in s.records
        n = len(srv.requests)
        run(srv, QS, tmp_path, rounds=1)
        assert [_round_and_id(r) for r in srv.requests[n:]] == [(1, torn_id)]
    assert len(done_ids(rdir)) == 6 and scan(rdir).duplicates == 0


@dataclass(frozen=True)
class Verdict:
    extracted: str | None
    correct: bool
    truncated: bool
    reason: str | None


def verify_response(response: str, gold: str, answer_type: str, choices: int | None = None) -> Verdict:
    """Shaped like compress_distill.traces.extraction.verify_response, which takes the number of options."""
    assert choices == 2
    truncated = "</think>" not in response
    tail = response.rsplit("The answer is ", 1)
    extracted = tail[1].rstrip(".") if len(tail) == 2 else None
    return Verdict(extracted, extracted == gold and not truncated, truncated, None)


def test_malformed_outputs_are_counted_rejects_or_failures_and_nothing_is_lost(tmp_path: Path) -> None:
    answers = {
        "good": Reply(200, completion("<think>ok</think>The answer is 7.")),
        "split": Reply(200, completion("The answer is 7.", reasoning="ok")),
        "nothink": Reply(200, completion("<think>still thinking and thinking", finish_reason="length")),
        "empty": Reply(200, completion("")),
        "plain": Reply(200, completion("The answer is 7.")),
        "e500": Reply(500, '{"error": "worker crashed"}'),
    }
    qs = [q(k, "7", "ds", "Math", choices=["x", "y"]) for k in answers]
    with FakeServer(lambda r: answers[_round_and_id(r)[1]]) as srv:
        stats = run(srv, qs, tmp_path, rounds=2, verifier=verify_response, max_attempts=2)
    assert [(s.round, s.submitted, s.correct, s.failed) for s in stats] == [(1, 6, 2, 1), (2, 4, 0, 1)]
    assert stats[0].rejected == {"unclosed_think": 1, "empty": 1, "no_think": 1}
    r1 = scan(round_dir(tmp_path, 1))
    recs = r1.records
    assert recs["nothink"]["truncated"] and recs["nothink"]["finish_reason"] == "length"
    assert recs["plain"]["extracted"] == "7" and not recs["plain"]["correct"]
    assert recs["good"]["extracted"] == "7" and recs["split"]["response"] == "<think>ok</think>The answer is 7."
    # nothing lost: every question is a record or a failure with its error, in every round it was pending
    assert set(recs) | {f["id"] for f in r1.failures} == set(answers)
    (fail,) = r1.failures
    assert (fail["id"], fail["kind"], fail["attempts"]) == ("e500", "retries_exhausted", 2)
    assert "HTTP 500" in fail["error"] and "worker crashed" in fail["error"]
    rows = {r["dataset"]: r for r in write_outputs(tmp_path, qs, generator="t")}
    # truncated: "nothink" (cut by length) and "plain" (the verifier counts a missing </think>), in both rounds
    assert (rows["ds"]["correct"], rows["ds"]["failed_requests_unsolved"], rows["ds"]["truncated_attempts"]) == \
        (2, 1, 4)


def test_judge_works_with_the_real_extraction_cascade() -> None:
    extraction = pytest.importorskip("compress_distill.traces.extraction")
    def comp(message: dict, finish: str = "stop") -> Completion:
        response, reasoning, content, closed = normalize_message(message, finish)
        return Completion("x", "m", response, reasoning, content, closed, finish, 1, 1, 0.1, 1)

    judge = Judge(extraction.verify_response)
    mc = q("x", "B", "ds", "Science", choices=["cat", "dog", "eel"])
    mc["answer_type"] = "letter"
    num = q("x", "1000", "ds", "Math")
    ok = judge(comp({"content": "<think>A patient... so B</think>The answer is B."}), mc)
    assert (ok.correct, ok.extracted, ok.reject_reason) == (True, "B", None)
    assert judge(comp({"content": "4", "reasoning_content": "sum"}), num).reject_reason == "wrong"
    assert judge(comp({"content": "The answer is 1,000", "reasoning_content": "sum"}), num).correct
    cut = judge(comp({"content": None, "reasoning_content": "still going"}, "length"), num)
    assert (cut.correct, cut.truncated, cut.reject_reason) == (False, True, "unclosed_think")


def test_server_rejecting_everything_fails_fast_and_leaves_the_round_open(tmp_path: Path) -> None:
    qs = [q(f"q{i}", "7", "ds", "Math") for i in range(20)]
    with FakeServer(lambda r: Reply(400, '{"error": "unknown parameter top_p"}')) as srv:
        with pytest.raises(GenerationError, match="all rejected.*unknown parameter"):
            run(srv, qs, tmp_path / "a", rounds=2)
    assert not (round_dir(tmp_path / "a", 1) / "_COMPLETE.json").exists()
    assert len(scan(round_dir(tmp_path / "a", 1)).failures) >= 8
    with FakeServer(lambda r: Reply(404, '{"error": "model teacher does not exist"}')) as srv:
        with pytest.raises(RequestRejected, match="404"):
            run(srv, qs, tmp_path / "b", rounds=2)


def test_shard_reader_counts_corrupt_and_duplicate_lines_and_compacts(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, fsync_every=2) as w:
        w.write({"id": "a", "x": 1})
        w.write({"id": "b", "x": 2})
        w.write_failure({"id": "c", "error": "boom"})
    with ShardWriter(tmp_path) as w:
        w.write({"id": "a", "x": 99})
    (tmp_path / "part-0-0.jsonl").write_text('{"id": "d", "x": 4}\nnot json\n{"id": "e", "x": 5}\n')
    s = scan(tmp_path)
    assert (sorted(s.records), s.duplicates, s.corrupt, s.torn, s.files) == (["a", "b", "d", "e"], 1, 1, 0, 3)
    assert "c" not in done_ids(tmp_path) and [f["id"] for f in s.failures] == ["c"]
    assert compact_to_parquet(tmp_path, tmp_path / "out.parquet") == 4
    assert pq.read_table(tmp_path / "out.parquet").column("id").to_pylist() == ["a", "b", "d", "e"]
    assert done_ids(tmp_path / "missing") == set()


# --- kill -9 mid-run against a real server process ----------------------------------------------------------

KILL_VERIFIER = '''
import hashlib

def verify(response, answer, answer_type):
    return int(hashlib.sha256(response.encode()).hexdigest(), 16) % 2 == 0
'''


@pytest.fixture(scope="module")
def real_server(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    pytest.importorskip("torch", reason="the local server needs the `local` extra")
    pytest.importorskip("transformers", reason="the local server needs the `local` extra")
    s = session_server(pytestconfig, tmp_path_factory.getbasetemp())
    return s.base_url, s.model, s.request_log


def _part_lines(d: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in d.glob("part-*.jsonl")) if d.is_dir() else 0


def _log(req_log: Path) -> list[dict]:
    return [json.loads(line) for line in req_log.read_text().splitlines()] if req_log.exists() else []


def test_kill_9_mid_run_then_resume_makes_no_duplicate_requests(real_server, tmp_path: Path) -> None:  # noqa: ANN001
    url, model, req_log = real_server
    n = 32
    qs = [{"id": f"k{i:03d}", "question": f"What is {i} plus 1?", "answer": str(i + 1), "answer_type": "numeric",
           "choices": None, "dataset": "kill", "domain": "Math"} for i in range(n)]
    qpath = tmp_path / "questions.jsonl"
    qpath.write_text("".join(json.dumps(x) + "\n" for x in qs))
    (tmp_path / "kill_verifier.py").write_text(KILL_VERIFIER)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "compress_distill.generation.rejection", str(qpath), str(out), "--model", model,
           "--base-url", url, "--rounds", "2", "--concurrency", "4", "--max-tokens", "32", "--temperature", "1.0",
           "--seed", "3", "--verifier", "kill_verifier:verify", "--no-require-think"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    r1 = round_dir(out, 1)

    with open(tmp_path / "run1.log", "wb") as logf:
        proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while _part_lines(r1) < 8:
            assert proc.poll() is None, (tmp_path / "run1.log").read_text()
            assert time.monotonic() < deadline, "generation made no progress"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    assert not (r1 / "_COMPLETE.json").exists(), "killed too late: round 1 had already finished"
    finished = {(1, i) for i in done_ids(r1)} | {(2, i) for i in done_ids(round_dir(out, 2))}
    assert 8 <= len(finished) < n

    # let the requests the dead client left in flight finish on the server, then restart
    size, stable_since = -1, time.monotonic()
    while time.monotonic() - stable_since < 0.5:
        if len(_log(req_log)) != size:
            size, stable_since = len(_log(req_log)), time.monotonic()
        time.sleep(0.05)
    t_restart = time.time()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr

    def key(e: dict) -> tuple[int, str]:
        rnd, qid = e["request_id"].split("/", 1)
        return int(rnd[1:]), qid

    entries = [e for e in _log(req_log) if e["request_id"].split("/")[-1].startswith("k")]
    after = [key(e) for e in entries if e["t_start"] >= t_restart]
    assert after, "the resumed run made no requests"
    assert not set(after) & finished, "a finished (round, id) was requested again"
    assert len(after) == len(set(after))
    # the only (round, id) asked twice were unrecorded at the kill: in flight (<= the concurrency cap of 4),
    # or answered while the dying client had not written them yet
    before = [key(e) for e in entries if e["t_start"] < t_restart]
    redone = set(before) & set(after)
    assert len(redone) <= 2 * 4
    log.info("kill test: %d (round, id) finished before kill -9, %d requested after restart, %d of them redone "
             "(unrecorded at the kill)", len(finished), len(after), len(redone))
    # every id is done exactly once in every round it was pending
    s1, s2 = scan(r1), scan(round_dir(out, 2))
    assert sorted(s1.records) == [x["id"] for x in qs] and s1.duplicates == 0
    solved1 = {k for k, r in s1.records.items() if r["correct"]}
    assert set(s2.records) == {x["id"] for x in qs} - solved1 and s2.duplicates == 0
    total = json.loads((out / "yield.json").read_text())[-1]
    assert (total["dataset"], total["total"], total["attempts"]) == ("Total", n, n + len(s2.records))
