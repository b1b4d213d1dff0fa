"""Teacher-style reasoning traces for the mini world, and their concise rewrites.

A verbose trace (~100 tokens) has three parts:
1. a restatement of the question (two phrasings);
2. a deliberation block: false starts ("should I multiply? No"), "at first I thought
   W, but I should check", generic filler, 1-4 sentences drawn at random and shuffled;
3. a fixed computation chain: re-copy the operands, extract digits, compute, re-check,
   "at first I thought W, but that is wrong", conclude.

The chain re-copies its operands right after a cue it can match (the restated "(a + b)",
"compare a and b", "A) 3"), so the digits it extracts sit at fixed offsets from their
source; the randomness lives in the restatement and the deliberation block.

`wrong=True` makes one mistake at the chain's decision point (a sum off by one, a
flipped comparison or parity, a dropped minimum) and carries it through to a
consistent wrong final answer: that is how the teacher's error rate is controlled.

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


def _deliberate(rng: random.Random, own: list[str]) -> list[str]:
    """1-3 sentences: one or two of the domain's false starts, maybe a generic filler, shuffled."""
    picked = rng.sample(own, rng.randint(1, 2)) + rng.sample(FILLER, rng.randint(0, 1))
    rng.shuffle(picked)
    return picked


def _add(q: Question, rng: random.Random, wrong: bool) -> tuple[list[str], str]:
    a, b = _ints(q["question"])[:2]
    x, y = a % 10, b % 10
    s = x + y
    if wrong:  # off by one: the most human slip, and a single decision point
        s = s + 1 if s == 0 or (s < 18 and rng.random() < 0.5) else s - 1
    r = s % 10
    w, guess = rng.sample([d for d in range(10) if d != r], 2)
    out = [rng.choice([f"The question asks for ({a} + {b}) mod 10.", f"I need ({a} + {b}) mod 10."])]
    out += _deliberate(rng, ["Wait, is it a product? No, it says plus.", "Hmm, should I multiply? No, it is a sum.",
                             f"At first I thought it was {guess}, but I should check.",
                             "Only the ones digits matter mod 10."])
    out += [f"Now ({a} + {b}): the ones digits are {x} and {y}.", f"{x} + {y} = {s}, and {y} + {x} = {s} too.",
            f"The last digit of {s} is {r}.", f"Hmm, at first I thought {w}, but that is wrong.",
            f"So the result is {r}."]
    return out, str(r)


def _cmp(q: Question, rng: random.Random, wrong: bool) -> tuple[list[str], str]:
    a, b = _ints(q["question"])[:2]
    ta, tb, oa, ob = a // 10, b // 10, a % 10, b % 10
    first, second = (ta, tb) if ta != tb else (oa, ob)
    a_wins = (first > second) != wrong  # wrong: the comparison is flipped
    rel = ">" if a_wins else "<"
    win, lose = (a, b) if a_wins else (b, a)
    out = [rng.choice([f"I need to compare {a} and {b}.", f"The question wants me to compare {a} and {b}."])]
    out += _deliberate(rng, ["Both have two digits, so the tens come first.",
                             "Wait, should I subtract them? No, comparing digits is enough.",
                             f"At first I thought {rng.choice([a, b])}, but I should check.",
                             "The bigger tens digit wins unless they tie."])
    out.append(f"To compare {a} and {b}, I look at the tens digits: {ta} and {tb}.")
    if ta != tb:
        out.append(f"{ta} {rel} {tb}, so the tens decide it.")
    else:
        out.append(f"They are equal, so the ones decide: {oa} {rel} {ob}.")
    out += [f"On a number line {win} is further right.", f"At first I thought {lose}, but that is wrong.",
            f"So {win} is the larger one."]
    return out, str(win)


def _par(q: Question, rng: random.Random, wrong: bool) -> tuple[list[str], str]:
    n = _ints(q["question"])[0]
    d = n % 10
    par = "even" if (d % 2 == 0) != wrong else "odd"  # wrong: the parity is flipped
    other = "odd" if par == "even" else "even"
    yes = "yes" if par == "even" else "no"
    out = [rng.choice([f"I need to decide if {n} is even.", f"The question asks whether {n} is even."])]
    out += _deliberate(rng, ["Wait, should I divide it by 2? No, the last digit is enough.",
                             "I could halve it, but the last digit is enough.",
                             f"At first I thought it was {rng.choice(['even', 'odd'])}, but I should check.",
                             "Only the last digit matters for this."])
    out += [f"The last digit of {n} is {d}.", f"{d} is {par}.",
            f"Check: {d} is {'' if par == 'even' else 'not '}one of 0, 2, 4, 6, 8.",
            f"At first I thought it was {other}, but that is wrong.", f"So {n} is {par}, so {yes}."]
    return out, yes


def _min_chain(vals: list[int], wrong: bool) -> list[tuple[int, int, int]]:
    """Pairwise scan as indices (current, next, kept). Wrong: the true minimum is dropped when met."""
    low = vals.index(min(vals))
    cur, steps = 0, []
    for i in range(1, len(vals)):
        keep = cur if vals[cur] < vals[i] else i
        if wrong and low in (cur, i):
            keep = cur if keep == i else i
        steps.append((cur, i, keep))
        cur = keep
    return steps


def _min(q: Question, rng: random.Random, wrong: bool) -> tuple[list[str], str]:
    vals = [int(c) for c in (q["choices"] or [])]
    chain = _min_chain(vals, wrong)
    letter = LETTERS[chain[-1][2]]
    w = rng.choice([c for c in LETTERS if c != letter])

    def opt(i: int) -> str:  # "B) 7": the letter is the cue that lets the model copy the value
        return f"{LETTERS[i]}) {vals[i]}"

    out = [rng.choice(["I need the option with the smallest number.", "The question wants the smallest of four numbers."])]
    out += _deliberate(rng, ["Wait, is it the largest? No, the smallest.", "Let me not pick the largest by mistake.",
                             f"At first I thought {rng.choice(LETTERS)}, but I should check.",
                             "I will compare them one by one."])
    out += [f"{opt(c)} vs {opt(i)} gives {opt(k)}." for c, i, k in chain]
    out += [f"At first I thought {w}, but that is wrong.", f"So the smallest is option {letter}."]
    return out, letter


_VERBOSE = {"add": _add, "cmp": _cmp, "par": _par, "min": _min}


def verbose_trace(q: Question, rng: random.Random, wrong: bool = False) -> tuple[str, str]:
    """(trace, final answer). The answer equals q['answer'] unless `wrong`."""
    sentences, answer = _VERBOSE[q["dataset"]](q, rng, wrong)
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
        steps = " ".join(f"{vals[c]} vs {vals[i]}: {vals[k]}." for c, i, k in _min_chain(vals, False))
        return f"{steps} {m} is {q['answer']}."
    raise ValueError(f"unknown mini-world domain {name!r}")
