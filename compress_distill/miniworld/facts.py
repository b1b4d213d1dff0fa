"""The base students' pretraining corpus: the mini world's facts in plain notation, no reasoning, no questions.

A base student (`BaseStudentRecipe`) is pretrained on short plain-text documents, each a
shuffled run of independent facts, as a Base model reads arithmetic on the web:

| kind     | examples                                                      | serves  |
|----------|---------------------------------------------------------------|---------|
| sum      | `7 + 8 = 15.` (digits 0-9)                                    | add     |
| mod      | `15 mod 10 = 5.` (0-18)                                       | add     |
| digit    | `The ones digit of 47 is 7.` `The tens digit of 47 is 4.`     | add cmp |
| last     | `The last digit of 3862 is 2.` (3-4 digit numbers, see below) | par     |
| order    | `4 < 5.` `9 > 2.` `The larger of 4 and 5 is 5.`               | cmp     |
| parity   | `7 is odd.` `4 is even.`                                      | par     |
| smaller  | `The smaller of 7 and 2 is 2.`                                | min     |
| smallest | `The smallest of 7, 2 and 5 is 2.` (3 or 5 digits, never 4)   | min     |

What a base student knows: the single-digit tables (sums, mod 10, order, parity, the
smaller of two), which digit of a number is its ones / tens / last digit, and the
smallest of a short list of digits.

What it does not know, and distillation must teach: the questions (it never sees
"What is", "Which is larger", "Is N even?", an option list or a `?`), the chat
template and the `<think>` block, the reasoning: that (a + b) mod 10 needs only the
ones digits, that two numbers compare by tens then ones, that parity is the last
digit's, that an option's letter names the position of the smallest value. No
document states any domain's question-to-answer mapping: no sum or comparison of two
two-digit numbers, no parity of a number with more than one digit, no 4-option minimum.

No evaluation question leaks: digit-level facts are about the digits 0-9, which no
question is; two-digit numbers appear only as "the ones / tens digit of N" (an operand
of add and cmp questions of both splits, never a question); the 3-4 digit numbers of
`last` facts are only those whose `par` question is in the TRAIN split (`world.split_of`),
so no held-out par number appears at all; minima are over 3 or 5 digits, never the 4 of
a `min` question's options. `tests/test_miniworld_base.py` checks these rules on the corpus.
Pure Python: no torch.
"""

from __future__ import annotations

import random

from compress_distill.miniworld.world import split_of

FACT_KINDS = ("sum", "mod", "digit", "last", "order", "parity", "smaller", "smallest")
LIST_LENGTHS = (3, 5)  # never 4: a min question's option set is never stated


def _join(xs: list[int]) -> str:
    return ", ".join(map(str, xs[:-1])) + f" and {xs[-1]}"


def _train_par_numbers() -> list[int]:
    """3-4 digit numbers whose `par` question is a training question (world.split_of)."""
    return [n for n in range(100, 10000) if split_of("par", f"Is {n} even?") == "train"]


def _fact(kind: str, rng: random.Random, par_numbers: list[int], probe: bool = False) -> tuple[str, str]:
    """(stem, completion) of one random fact of `kind`; its text is stem + completion. `probe`: only
    forms whose stem determines the completion (`4 < 5.` is stated, but not probed)."""
    d = rng.randrange(10)
    e = rng.randrange(10)
    if kind == "sum":
        return f"{d} + {e} =", f" {d + e}."
    if kind == "mod":
        s = rng.randrange(19)
        return f"{s} mod 10 =", f" {s % 10}."
    if kind == "digit":
        n = rng.randrange(10, 100)
        place, val = rng.choice([("ones", n % 10), ("tens", n // 10)])
        return f"The {place} digit of {n} is", f" {val}."
    if kind == "last":
        n = rng.choice(par_numbers)
        return f"The last digit of {n} is", f" {n % 10}."
    if kind == "order":
        while e == d:
            e = rng.randrange(10)
        if probe or rng.random() < 0.5:
            return f"The larger of {d} and {e} is", f" {max(d, e)}."
        return f"{d}", f" {'<' if d < e else '>'} {e}."
    if kind == "parity":
        return f"{d} is", f" {'even' if d % 2 == 0 else 'odd'}."
    if kind == "smaller":
        while e == d:
            e = rng.randrange(10)
        return f"The smaller of {d} and {e} is", f" {min(d, e)}."
    if kind == "smallest":
        xs = rng.sample(range(10), rng.choice(LIST_LENGTHS))
        return f"The smallest of {_join(xs)} is", f" {min(xs)}."
    raise ValueError(f"unknown fact kind {kind!r}; known: {', '.join(FACT_KINDS)}")


def fact_documents(n_docs: int, facts_per_doc: int, seed: int) -> list[str]:
    """`n_docs` plain-text documents of `facts_per_doc` random facts each (kinds drawn uniformly)."""
    rng = random.Random(seed)
    par_numbers = _train_par_numbers()
    docs = []
    for _ in range(n_docs):
        facts = [_fact(rng.choice(FACT_KINDS), rng, par_numbers) for _ in range(facts_per_doc)]
        docs.append(" ".join(stem + completion for stem, completion in facts))
    return docs


def fact_probes(n_per_kind: int, seed: int) -> dict[str, list[tuple[str, str]]]:
    """(stem, completion) probes per kind, to measure how well a model has learnt the facts
    (greedy completion of the stem). Drawn from the same fact space as the corpus: the tables
    are small, so a probe checks recall, not generalisation."""
    rng = random.Random(seed)
    par_numbers = _train_par_numbers()
    return {k: [_fact(k, rng, par_numbers, probe=True) for _ in range(n_per_kind)] for k in FACT_KINDS}
