"""Teacher-style reasoning traces for the mini world, and their concise rewrites.

A verbose trace restates the question, makes a false start, computes, re-checks,
says "at first I thought W, but that is wrong", and concludes (~100 tokens). Each
sentence slot has several phrasings and some slots are optional, so sampled traces
differ in wording and length. `wrong=True` makes one mistake at the decision point
(a sum off by one, a flipped comparison or parity, an overlooked option) and carries
it through to a consistent wrong final answer: that is how the teacher's error rate
is controlled.

Concise rewrites keep the essential steps: `mild` keeps 2-4 short sentences,
`aggressive` one clause (the two compressors' targets; the teacher's concise mode
is `mild`).
"""

from __future__ import annotations

import random
import re
from typing import Literal

from compress_distill.miniworld.world import LETTERS, Question

Level = Literal["mild", "aggressive"]

FILLER = [
    "Let me think about this carefully.", "Okay, let me restate it to be sure.", "I should not rush this.",
    "Let me go step by step.", "Hmm, wait.", "Let me double check before I answer.",
    "Is that right? Let me see.", "Alright, so far so good.",
]


def _ints(text: str) -> list[int]:
    return [int(t) for t in re.findall(r"\d+", text)]


def _maybe(rng: random.Random, p: float, sentence: str) -> list[str]:
    return [sentence] if rng.random() < p else []


def _add(q: Question, rng: random.Random, wrong: bool) -> tuple[list[str], str]:
    a, b = _ints(q["question"])[:2]
    x, y = a % 10, b % 10
    s = x + y
    if wrong:  # off by one: the most human slip, and a single decision point
        s = s + 1 if s == 0 or (s < 18 and rng.random() < 0.5) else s - 1
    r = s % 10
    w = rng.choice([d for d in range(10) if d not in (r, (x + y) % 10)])
    out = [rng.choice([f"The question asks for ({a} + {b}) mod 10.", f"I need ({a} + {b}) mod 10."])]
    out += _maybe(rng, 0.7, rng.choice(["Wait, is it a product? No, it says plus.",
                                        "Hmm, should I multiply? No, it is a sum."]))
    out += [f"Mod 10 only the ones digits matter: {x} and {y}.", f"{x} + {y} = {s}."]
    out += _maybe(rng, 0.7, f"Let me re-check the other way: {y} + {x} = {s}.")
    out += _maybe(rng, 0.6, f"Hmm, at first I thought {w}, but that is wrong.")
    out += [f"The last digit of {s} is {r}.", f"So the result is {r}."]
    return out, str(r)


def _cmp(q: Question, rng: random.Random, wrong: bool) -> tuple[list[str], str]:
    a, b = _ints(q["question"])[:2]
    ta, tb, oa, ob = a // 10, b // 10, a % 10, b % 10
    first, second = (ta, tb) if ta != tb else (oa, ob)
    a_wins = (first > second) != wrong  # wrong: the comparison is flipped
    rel = ">" if a_wins else "<"
    win, lose = (a, b) if a_wins else (b, a)
    out = [rng.choice([f"I need to find the larger of {a} and {b}.", f"I have to compare {a} and {b}."])]
    out += _maybe(rng, 0.7, rng.choice(["Both have two digits, so I compare the tens first.",
                                        "Wait, should I subtract them? No, comparing digits is enough."]))
    out.append(f"The tens digits are {ta} and {tb}.")
    if ta != tb:
        out.append(f"{ta} {rel} {tb}, so the tens decide it.")
        out += _maybe(rng, 0.6, "Do the ones digits matter? No, not here.")
    else:
        out += ["The tens are equal, so I look at the ones.", f"The ones digits are {oa} and {ob}, and {oa} {rel} {ob}."]
    out += _maybe(rng, 0.7, f"Let me re-check on a number line: {win} is further right.")
    out += _maybe(rng, 0.6, f"At first I thought {lose} was larger, but that is wrong.")
    out.append(f"So {win} is the larger one.")
    return out, str(win)


def _par(q: Question, rng: random.Random, wrong: bool) -> tuple[list[str], str]:
    n = _ints(q["question"])[0]
    d = n % 10
    par = "even" if (d % 2 == 0) != wrong else "odd"  # wrong: the parity is flipped
    other = "odd" if par == "even" else "even"
    yes = "yes" if par == "even" else "no"
    out = [rng.choice([f"I need to decide if {n} is even.", f"The question asks whether {n} is even."])]
    out += _maybe(rng, 0.7, rng.choice(["Wait, should I divide it by 2? No, the last digit is enough.",
                                        "I could halve it, but the last digit is enough."]))
    out += [f"The last digit of {n} is {d}.", f"{d} is {par}."]
    if rng.random() < 0.7:
        out += ["Let me re-check: the even digits are 0, 2, 4, 6 and 8.",
                f"{d} is {'' if par == 'even' else 'not '}in that list."]
    out += _maybe(rng, 0.6, f"At first I thought it was {other}, but that is wrong.")
    out.append(f"So the number is {par}, so {yes}.")
    return out, yes


def _min_chain(vals: list[int], wrong: bool) -> list[tuple[int, int, int]]:
    """Pairwise scan (current, next, kept). Wrong: the true minimum is dropped when it is met."""
    low = min(vals)
    cur, steps = vals[0], []
    for v in vals[1:]:
        keep = min(cur, v)
        if wrong and low in (cur, v):
            keep = max(cur, v)
        steps.append((cur, v, keep))
        cur = keep
    return steps


def _min(q: Question, rng: random.Random, wrong: bool) -> tuple[list[str], str]:
    vals = [int(c) for c in (q["choices"] or [])]
    chain = _min_chain(vals, wrong)
    m = chain[-1][2]
    letter = LETTERS[vals.index(m)]
    second = sorted(vals)[1] if not wrong else min(vals)
    pick = rng.choice
    out = [pick(["I need the option with the smallest number.", "The question wants the smallest of four numbers."])]
    out += _maybe(rng, 0.6, pick(["Wait, is it the largest? No, the smallest.", "Let me not pick the largest by mistake."]))
    out += _maybe(rng, 0.6, ", ".join(f"{LETTERS[i]} is {v}" for i, v in enumerate(vals)) + ".")
    out += [f"{c} vs {v}: {k} is smaller." for c, v, k in chain]
    out += _maybe(rng, 0.5, f"At first I thought {second} was the smallest, but that is wrong.")
    out += [f"{m} is option {letter}.", f"So the smallest is option {letter}."]
    return out, letter


_VERBOSE = {"add": _add, "cmp": _cmp, "par": _par, "min": _min}


def verbose_trace(q: Question, rng: random.Random, wrong: bool = False, max_filler: int = 2) -> tuple[str, str]:
    """(trace, final answer). The answer equals q['answer'] unless `wrong`."""
    sentences, answer = _VERBOSE[q["dataset"]](q, rng, wrong)
    for extra in rng.sample(FILLER, rng.randint(0, max_filler)):  # generic deliberation, after the opening
        sentences.insert(rng.randint(1, len(sentences) - 1), extra)
    return " ".join(sentences), answer


def concise_trace(q: Question, level: Level = "mild") -> str:
    """The rewrite a compressor should produce: the same (correct) reasoning, shorter."""
    name, text = q["dataset"], q["question"]
    mild = level == "mild"
    if name == "add":
        a, b = _ints(text)[:2]
        x, y = a % 10, b % 10
        s, r = x + y, (x + y) % 10
        return f"Ones digits {x} and {y}. {x} + {y} = {s}. {s} mod 10 = {r}." if mild else f"{x} + {y} = {s}, so {r}."
    if name == "cmp":
        a, b = _ints(text)[:2]
        ta, tb, oa, ob = a // 10, b // 10, a % 10, b % 10
        big = max(a, b)
        if ta != tb:
            rel = ">" if ta > tb else "<"
            return f"Tens: {ta} {rel} {tb}. So {big} is larger." if mild else f"{ta} {rel} {tb}, so {big}."
        rel = ">" if oa > ob else "<"
        return f"Tens equal. Ones: {oa} {rel} {ob}. So {big} is larger." if mild else f"Ones {oa} {rel} {ob}, so {big}."
    if name == "par":
        n = _ints(text)[0]
        d = n % 10
        par = "even" if d % 2 == 0 else "odd"
        return f"Last digit {d}. {d} is {par}. So {q['answer']}." if mild else f"{d} is {par}, so {q['answer']}."
    if name == "min":
        vals = [int(c) for c in (q["choices"] or [])]
        m = min(vals)
        if not mild:
            return f"Smallest is {m}, so {q['answer']}."
        steps = " ".join(f"{c} vs {v}: {k}." for c, v, k in _min_chain(vals, False))
        return f"{steps} {m} is {q['answer']}."
    raise ValueError(f"unknown mini-world domain {name!r}")
