"""Quick in-process sampling loops that measure the mini models (not the pipeline's served path).

- teacher accuracy (greedy or sampled) per domain;
- the per-round yield of a rejection-sampling loop (what the pipeline's generation
  stage will see at T=0.7);
- compressor answer-kept rate and character ratio rho = compressed / verbose.

`python -m compress_distill.miniworld.measure` runs all three on the built models.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from compress_distill.miniworld.recipes import DEFAULT_ROOT, resolve_model
from compress_distill.miniworld.traces import verbose_trace
from compress_distill.miniworld.world import (
    DOMAINS,
    Question,
    chat_prompt,
    compress_turn,
    generate_questions,
    parse_answer,
    prompt_text,
    think_of,
    user_turn,
)

log = logging.getLogger(__name__)


@torch.no_grad()
def generate(model, tok, prompts: list[str], temperature: float | None = None, max_new: int = 200,
             batch: int = 64, seed: int = 0) -> list[str]:
    """Completions (special tokens dropped, think markers kept), in prompt order. Left-padded batches."""
    torch.manual_seed(seed)
    side, tok.padding_side = tok.padding_side, "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [""] * len(prompts)
    sample = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature else \
        {"do_sample": False}
    try:
        for k in range(0, len(order), batch):
            idx = order[k:k + batch]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            gen = model.generate(**enc, max_new_tokens=max_new, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id, **sample)
            for r, i in enumerate(idx):
                row = gen[r, enc["input_ids"].shape[1]:].tolist()
                if tok.eos_token_id in row:
                    row = row[:row.index(tok.eos_token_id)]
                out[i] = tok.decode(row, skip_special_tokens=True)
    finally:
        tok.padding_side = side
    return out


def _per_domain(questions: list[Question], hits: list[bool]) -> dict[str, float]:
    by: dict[str, list[bool]] = {}
    for q, h in zip(questions, hits, strict=True):
        by.setdefault(q["dataset"], []).append(h)
    return {d: round(sum(v) / len(v), 3) for d, v in sorted(by.items())}


def teacher_accuracy(model, tok, questions: list[Question], style: str = "plain",
                     temperature: float | None = None, seed: int = 0, max_new: int = 200) -> dict:
    texts = generate(model, tok, [chat_prompt(user_turn(prompt_text(q), style)) for q in questions],  # type: ignore[arg-type]
                     temperature, max_new, seed=seed)
    hits = [parse_answer(t) == q["answer"] for t, q in zip(texts, questions, strict=True)]
    lens = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    return {"acc": round(sum(hits) / len(hits), 3), "per_domain": _per_domain(questions, hits),
            "answered": round(sum(parse_answer(t) is not None for t in texts) / len(texts), 3),
            "median_tokens": statistics.median(lens), "n": len(questions)}


def rejection_yield(model, tok, questions: list[Question], rounds: int = 3, temperature: float = 0.7,
                    seed: int = 0) -> dict:
    """Sample every open question once per round; correct ones leave the pool (the paper's Stage 1)."""
    pending = list(questions)
    per_round = []
    for r in range(rounds):
        if not pending:
            break
        texts = generate(model, tok, [chat_prompt(prompt_text(q)) for q in pending], temperature, seed=seed + r)
        ok = [parse_answer(t) == q["answer"] for t, q in zip(texts, pending, strict=True)]
        per_round.append({"round": r + 1, "asked": len(pending), "correct": sum(ok),
                          "yield": round(sum(ok) / len(pending), 3)})
        pending = [q for q, good in zip(pending, ok, strict=True) if not good]
    solved = len(questions) - len(pending)
    return {"rounds": per_round, "cumulative": round(solved / len(questions), 3), "n": len(questions)}


def fact_accuracy(model, tok, probes: dict[str, list[tuple[str, str]]]) -> dict[str, float]:
    """Per fact kind: the share of greedy completions of a document-start + stem that begin with the
    fact's completion (e.g. `7 + 8 =` -> ` 15.`). A base model never emits eos, so a few tokens suffice."""
    start = tok.pad_token  # <|endoftext|>: every pretraining document starts after it
    out: dict[str, float] = {}
    for kind, pairs in probes.items():
        texts = generate(model, tok, [start + stem for stem, _ in pairs], max_new=5)
        hits = [t.startswith(comp) for t, (_, comp) in zip(texts, pairs, strict=True)]
        out[kind] = round(sum(hits) / len(hits), 3)
    return out


_LAST = {"numeric": r"\d+", "boolean": r"\b(?:yes|no)\b", "letter": r"\b[A-D]\b"}


def compressed_answer(text: str, answer_type: str) -> str | None:
    """The answer a compressed trace ends on: its last number, yes/no, or option letter."""
    found = re.findall(_LAST[answer_type], text)
    return found[-1] if found else None


def compressor_stats(model, tok, questions: list[Question], seed: int = 0, temperature: float | None = 0.3,
                     max_new: int = 96) -> dict:
    """Compress fresh correct verbose traces; report answer kept and rho = compressed / verbose chars."""
    rng = random.Random(seed)
    traces = [verbose_trace(q, rng)[0] for q in questions]
    prompts = [chat_prompt(compress_turn(prompt_text(q), t)) for q, t in zip(questions, traces, strict=True)]
    texts = generate(model, tok, prompts, temperature, max_new, seed=seed)
    kept = [compressed_answer(c, q["answer_type"]) == q["answer"] for c, q in zip(texts, questions, strict=True)]
    rho = [len(c) / len(t) for c, t in zip(texts, traces, strict=True)]
    return {"answer_kept": round(sum(kept) / len(kept), 3), "per_domain_kept": _per_domain(questions, kept),
            "rho_mean": round(statistics.mean(rho), 3), "rho_median": round(statistics.median(rho), 3),
            "empty": sum(not c.strip() for c in texts), "n": len(questions), "example": texts[0]}


def _load(ref: str, root: Path):
    path = resolve_model(ref, root)
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--n", type=int, default=300, help="questions per measurement, spread over the domains")
    ap.add_argument("--domains", default=",".join(DOMAINS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    doms = a.domains.split(",")
    per = a.n // len(doms)
    test = [q for d in doms for q in generate_questions(d, "test", per, seed=1)]
    train = [q for d in doms for q in generate_questions(d, "train", per, seed=99)]
    res: dict = {}
    model, tok = _load("mini:teacher", a.root)
    for key, kw in {"greedy": {}, "t0.7": {"temperature": 0.7, "seed": 1},
                    "concise_greedy": {"style": "concise"}}.items():
        t0 = time.perf_counter()
        res[f"teacher_{key}"] = teacher_accuracy(model, tok, test, **kw)  # type: ignore[arg-type]
        res[f"teacher_{key}"]["secs"] = round(time.perf_counter() - t0, 1)
        log.info("teacher %s %s", key, res[f"teacher_{key}"])
    res["rejection"] = rejection_yield(model, tok, train, rounds=3)
    log.info("rejection %s", res["rejection"])
    sample = generate(model, tok, [chat_prompt(prompt_text(test[0]))], 0.7, seed=3)[0]
    res["teacher_sample"] = {"question": prompt_text(test[0]), "text": sample, "think": think_of(sample)}
    for level in ("mild", "aggressive"):
        model, tok = _load(f"mini:compressor-{level}", a.root)
        res[f"compressor_{level}"] = compressor_stats(model, tok, test)
        log.info("compressor %s %s", level, res[f"compressor_{level}"])
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
