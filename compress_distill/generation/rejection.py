"""Rejection-sampled trace generation (paper 3.1): up to N rounds, correct answers leave the pool.

Each round submits every pending question in one batch (the client's
concurrency cap bounds what is in flight), verifies each response with an
injected `verify(response, answer, answer_type[, choices=...])` callable and
writes every attempt, right or wrong, to `OUT/round-NN/` shards keyed by id.
A round that finished gets a `_COMPLETE.json` marker with its statistics.

Resume is at (round, id) granularity: a restarted run skips closed rounds,
skips ids already recorded in the open round, and redoes only the rest (ids
whose request failed are redone too; they are in `failed-*.jsonl`, not lost).
A failed request in an early round falls to the next round like a wrong
answer; one in the last round has no next round, so `unanswered_after` counts
it and a rerun reopens the last round to re-ask only those ids.
`OUT/run.json` pins what makes the attempts comparable (model, sampling,
prompt); resuming with different values is an error, not a silent mix.

    python -m compress_distill.generation.rejection QUESTIONS.jsonl OUT --model M --base-url URL
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from compress_distill.generation.client import (
    ChatClient,
    ChatRequest,
    ClientConfig,
    Completion,
    Failure,
    GenerationError,
    Sampling,
)
from compress_distill.generation.sharded import unanswered
from compress_distill.generation.shards import ShardScan, ShardWriter, scan
from compress_distill.traces.extraction import UNVERIFIABLE

log = logging.getLogger(__name__)

Verifier = Callable[..., Any]  # verify(response, answer, answer_type[, choices=n_options]) -> bool | Verdict-like
REQUIRED_FIELDS = ("id", "question", "answer", "answer_type")
DEFAULT_VERIFIER = "compress_distill.traces.extraction:verify_response"


@dataclass(frozen=True)
class Outcome:
    correct: bool
    extracted: str | None
    truncated: bool
    reject_reason: str | None  # None when accepted


def build_messages(q: Mapping[str, Any], system_prompt: str | None = None) -> list[dict[str, str]]:
    """The teacher prompt: the question, then lettered choices if any."""
    text = str(q["question"])
    choices = q.get("choices")
    if isinstance(choices, Mapping):
        text += "\n\n" + "\n".join(f"{k}) {v}" for k, v in choices.items())
    elif choices:
        text += "\n\n" + "\n".join(f"{chr(65 + i)}) {c}" for i, c in enumerate(choices))
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*msgs, {"role": "user", "content": text}]


class Judge:
    """Adapts any verifier (bool-returning or Verdict-returning, with or without `choices`)."""

    def __init__(self, verify: Verifier, *, require_think: bool = True):
        self.verify = verify
        self.require_think = require_think
        try:
            inspect.signature(verify).bind("", "", "", choices=None)
            self._takes_choices = True
        except (TypeError, ValueError):
            self._takes_choices = False

    def __call__(self, c: Completion, q: Mapping[str, Any]) -> Outcome:
        truncated = c.finish_reason == "length" or c.think_closed is False
        if c.empty:
            return Outcome(False, None, truncated, "empty")
        if self._takes_choices:
            # extraction.verify_response wants the NUMBER of options (it limits the valid letters)
            opts = q.get("choices")
            n_opts = len(opts) if isinstance(opts, list | tuple | Mapping) else opts
            v = self.verify(c.response, str(q["answer"]), q["answer_type"], choices=n_opts)
        else:
            v = self.verify(c.response, str(q["answer"]), q["answer_type"])
        reason = detail = None
        if isinstance(v, bool):
            correct, extracted = v, None
        elif isinstance(v, Mapping):
            correct, extracted, truncated = bool(v["correct"]), v.get("extracted"), truncated or bool(v.get("truncated"))
            reason, detail = v.get("reason"), v.get("error")
        else:  # Verdict(extracted, correct, truncated, reason)
            correct, extracted = bool(v.correct), getattr(v, "extracted", None)
            truncated = truncated or bool(getattr(v, "truncated", False))
            reason, detail = getattr(v, "reason", None), getattr(v, "error", None)
        extracted_s = None if extracted is None else str(extracted)
        if self.require_think and c.think_closed is not True:
            # A distillation trace needs a closed think block, whatever the answer says.
            return Outcome(False, extracted_s, truncated, "unclosed_think" if c.think_closed is False else "no_think")
        if reason == UNVERIFIABLE:  # e.g. over the size limit: its own reject count, not "wrong"
            log.warning("%s: answer could not be verified (%s); rejected", q.get("id"), detail)
            return Outcome(False, extracted_s, truncated, UNVERIFIABLE)
        if not correct:
            return Outcome(False, extracted_s, truncated, "truncated" if truncated else "wrong")
        return Outcome(True, extracted_s, truncated, None)


@dataclass
class RoundStats:
    round: int
    submitted: int  # pending questions this round (including any recorded before a resume)
    requested: int  # requests made by this process
    correct: int
    rejected: dict[str, int]
    failed: int
    wall_s: float


def round_dir(out_dir: str | Path, rnd: int) -> Path:
    return Path(out_dir) / f"round-{rnd:02d}"


async def run_rejection(questions: Iterable[Mapping[str, Any]], verify: Verifier, out_dir: str | Path, *,
                        client: ChatClient, sampling: Sampling, rounds: int, system_prompt: str | None = None,
                        require_think: bool = True, fail_fast_after: int = 8) -> list[RoundStats]:
    """Run (or resume) rejection sampling into `out_dir`; return this call's per-round statistics."""
    qs = _index(questions)
    out = Path(out_dir)
    _pin_run(out, client.cfg.model, sampling, system_prompt, require_think)
    judge = Judge(verify, require_think=require_think)
    solved: set[str] = set()
    stats: list[RoundStats] = []
    for rnd in range(1, rounds + 1):
        pending = [qid for qid in qs if qid not in solved]
        if not pending:
            break
        rdir = round_dir(out, rnd)
        marker = rdir / "_COMPLETE.json"
        prior = scan(rdir)
        # A closed round's failures carried into the next round; the last round's have nowhere to go.
        reopen = rnd == rounds and any(qid not in prior.records for qid in pending)
        if marker.exists() and not reopen:
            solved |= _solved(prior, qs)
            continue
        t0 = time.monotonic()
        todo = [qid for qid in pending if qid not in prior.records]
        if len(todo) < len(pending):
            log.info("round %d: resuming, %d of %d pending already recorded", rnd, len(pending) - len(todo),
                     len(pending))
        reqs = (ChatRequest(qid, build_messages(qs[qid], system_prompt),
                            sampling.for_request(qid, rnd), request_id=f"r{rnd}/{qid}")
                for qid in todo)
        requested, n_ok, n_rejected = 0, 0, 0
        with ShardWriter(rdir) as writer:
            async for res in client.complete_many(reqs):
                requested += 1
                q = qs[res.key]
                if isinstance(res, Failure):
                    writer.write_failure({"id": res.key, "round": rnd, "dataset": q.get("dataset"), **res.to_record()})
                    n_rejected += res.kind == "rejected"
                    if n_rejected >= fail_fast_after and n_ok == 0:
                        raise GenerationError(f"round {rnd}: the first {n_rejected} requests were all rejected by "
                                              f"the server; last: {res.error}")
                    continue
                n_ok += 1
                writer.write(_attempt_record(res, q, rnd, judge(res, q)))
        done = scan(rdir)
        records = {k: r for k, r in done.records.items() if k in qs}
        newly = _solved(done, qs)
        solved |= newly
        rs = RoundStats(rnd, len(pending), requested, len(newly),
                        dict(Counter(r["reject_reason"] for r in records.values() if r["reject_reason"])),
                        len({f["id"] for f in done.failures if f["id"] not in records}),
                        round(time.monotonic() - t0, 3))
        _atomic_json(marker, asdict(rs))
        log.info("round %d: %d pending, %d correct, rejects %s, %d failed", rnd, rs.submitted, rs.correct,
                 rs.rejected, rs.failed)
        stats.append(rs)
    return stats


def unanswered_after(out_dir: str | Path, question_ids: Iterable[str], rounds: int) -> list[dict[str, Any]]:
    """Failure rows (id, kind, error) of the unsolved ids whose last-round request failed: the requests
    that rejection sampling lost, as opposed to answers it rejected."""
    ids = list(question_ids)
    qs = dict.fromkeys(ids)
    solved: set[str] = set()
    for rnd in range(1, rounds):
        solved |= _solved(scan(round_dir(out_dir, rnd)), qs)
    return unanswered([i for i in ids if i not in solved], scan(round_dir(out_dir, rounds)))


def _solved(scanned: ShardScan, qs: Mapping[str, Any]) -> set[str]:
    return {k for k, r in scanned.records.items() if r["correct"] and k in qs}


def _attempt_record(c: Completion, q: Mapping[str, Any], rnd: int, o: Outcome) -> dict[str, Any]:
    return {
        "id": c.key, "round": rnd, "dataset": q.get("dataset"), "domain": q.get("domain"),
        "answer": str(q["answer"]), "answer_type": q["answer_type"], "model": c.model,
        "response": c.response, "reasoning_chars": len(c.reasoning or ""), "think_closed": c.think_closed,
        "correct": o.correct, "extracted": o.extracted, "truncated": o.truncated, "reject_reason": o.reject_reason,
        "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
        "latency_s": c.latency_s, "attempts": c.attempts, "max_tokens_sent": c.max_tokens_sent,
        "reasoning_field": c.reasoning_field,
    }


def _index(questions: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    qs: dict[str, Mapping[str, Any]] = {}
    for q in questions:
        missing = [f for f in REQUIRED_FIELDS if q.get(f) is None]
        if missing:
            raise ValueError(f"question {q.get('id')!r} lacks {missing}")
        if str(q["id"]) in qs:
            raise ValueError(f"duplicate question id {q['id']!r}")
        qs[str(q["id"])] = q
    return qs


def _pin_run(out: Path, model: str, sampling: Sampling, system_prompt: str | None, require_think: bool) -> None:
    pin = {"model": model, "temperature": sampling.temperature, "top_p": sampling.top_p,
           "max_tokens": sampling.max_tokens, "seed": sampling.seed, "extra": dict(sampling.extra),
           "reasoning_effort": sampling.reasoning_effort, "system_prompt": system_prompt, "require_think": require_think}
    path = out / "run.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in pin if old.get(k) != pin[k])
        if diff:
            raise ValueError(f"{out} holds attempts made with different {diff}; use a new output directory")
        return
    out.mkdir(parents=True, exist_ok=True)
    _atomic_json(path, pin)


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def load_verifier(spec: str) -> Verifier:
    """'package.module:function' -> the function (imported only when asked for)."""
    mod, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"verifier must look like 'module:function', got {spec!r}")
    fn = getattr(importlib.import_module(mod), attr)
    if not callable(fn):
        raise TypeError(f"{spec} is not callable")
    return fn  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Rejection-sampled trace generation against an OpenAI-compatible server")
    ap.add_argument("questions", type=Path, help="JSONL: id, question, answer, answer_type[, choices, dataset, domain]")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--api-key-env", help="NAME of the environment variable holding the API key")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-attempts", type=int, default=5)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reasoning-effort", choices=("low", "medium", "high"), help="sent as the request field")
    ap.add_argument("--max-model-len", type=int, help="the served context: max_tokens is clipped to fit it")
    ap.add_argument("--system-prompt")
    ap.add_argument("--verifier", default=DEFAULT_VERIFIER, help="module:function")
    ap.add_argument("--no-require-think", action="store_true", help="accept correct answers without a think block")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    questions = [json.loads(line) for line in a.questions.read_text().splitlines() if line.strip()]
    cfg = ClientConfig(model=a.model, base_url=a.base_url, api_key_env=a.api_key_env,
                       max_concurrency=a.concurrency, max_attempts=a.max_attempts, max_model_len=a.max_model_len)
    sampling = Sampling(a.temperature, a.top_p, a.max_tokens, a.seed, reasoning_effort=a.reasoning_effort)

    async def go() -> None:
        async with ChatClient(cfg) as client:
            await run_rejection(questions, load_verifier(a.verifier), a.out_dir, client=client, sampling=sampling,
                                rounds=a.rounds, system_prompt=a.system_prompt,
                                require_think=not a.no_require_think)

    asyncio.run(go())
    from compress_distill.generation.yield_table import write_outputs

    write_outputs(a.out_dir, questions, generator=a.model)


if __name__ == "__main__":
    main()
