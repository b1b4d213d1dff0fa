"""Benchmark: `verify_response` vs Math-Verify's parse+verify (issue 3, "Benchmarks").

Not a test. Builds a deterministic synthetic set of teacher-style responses (think
block + answer text; numeric, latex, letter and boolean; ~25% wrong, ~5% cut off),
then reports single-process throughput (records/second/core) and, on the math cases
(numeric + latex), how often our verdict agrees with Math-Verify's. Math-Verify is
given the text after ``</think>`` (the protocol's answer region); agreement on the
full response is shown too, to make the effect of think-block handling visible.

    .venv/bin/python bench/bench_extraction.py [--n 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from compress_distill.traces.extraction import split_think, verify_response


@dataclass(frozen=True)
class Record:
    response: str
    answer: str
    answer_type: str
    choices: int | None = None


def _numeric(rng: random.Random) -> Record:
    value = rng.choice([rng.randint(2, 999), rng.randint(1000, 99999), rng.randint(-50, -1)])
    shown = value if rng.random() > 0.25 else value + rng.choice([-1, 1, 10])
    text = f"{shown:,}" if rng.random() < 0.5 else str(shown)
    answer = rng.choice(
        [
            f"The answer is {text}.",
            f"So the total is \\boxed{{{text}}}.",
            f"#### {text}",
            f"Therefore, she pays ${text} in total.",
            f"**Final Answer:** {text} apples",
            f"We have {rng.randint(2, 9)} * {rng.randint(2, 9)} = {text}, so the answer is $\\boxed{{{text}}}$.",
        ]
    )
    steps = " ".join(f"{rng.randint(1, 99)} + {rng.randint(1, 99)} = {rng.randint(2, 198)}." for _ in range(8))
    return _wrap(steps + f" Maybe \\boxed{{{rng.randint(1, 99)}}}?", answer, str(value), "numeric", rng)


def _latex(rng: random.Random) -> Record:
    a, b, k = rng.randint(1, 9), rng.randint(2, 9), rng.randint(2, 5)
    gold, variants = rng.choice(
        [
            (f"\\frac{{{a}}}{{{b}}}", [f"\\dfrac{{{a}}}{{{b}}}", f"{a}/{b}", f"\\frac{{{a * k}}}{{{b * k}}}"]),
            (f"{k}\\sqrt{{{b}}}", [f"\\sqrt{{{k * k * b}}}", f"{k} \\sqrt{{{b}}}", f"{k}\\sqrt{b}"]),
            (f"\\frac{{{a}\\pi}}{{{b}}}", [f"\\frac{{{a}}}{{{b}}}\\pi", f"\\dfrac{{{a}\\pi}}{{{b}}}"]),
            (f"{a}x^2 + {b}", [f"{b} + {a}x^2", f"{a}x^{{2}}+{b}"]),
        ]
    )
    shown = rng.choice(variants) if rng.random() > 0.25 else f"\\frac{{{a + 1}}}{{{b}}}"
    answer = rng.choice([f"The answer is ${shown}$.", f"\\boxed{{{shown}}}", f"Thus the result is $$\\boxed{{{shown}}}$$"])
    return _wrap("Let $u = 2$ and $v = 3$; then $u + v = 5$.", answer, gold, "latex", rng)


def _letter(rng: random.Random) -> Record:
    gold = rng.choice("ABCD")
    shown = gold if rng.random() > 0.25 else rng.choice("ABCD")
    answer = rng.choice([f"The answer is ({shown}).", f"Answer: {shown}", f"**{shown}**", f"\\boxed{{{shown}}}"])
    return _wrap("A patient presents with fever. Option A seems unlikely.", "A patient like this... " + answer, gold, "letter", rng, 4)


def _boolean(rng: random.Random) -> Record:
    gold = rng.choice(["yes", "no"])
    answer = rng.choice([f"{gold.capitalize()}, because there is no contradiction.", f"The answer is {gold}."])
    return _wrap("Is it true? Maybe no.", answer, gold if rng.random() > 0.25 else "no", "boolean", rng)


def _wrap(reasoning: str, answer: str, gold: str, kind: str, rng: random.Random, choices: int | None = None) -> Record:
    if rng.random() < 0.05:  # cut off by the token cap: no </think>
        return Record(f"<think>{reasoning} The answer is {gold}.", gold, kind, choices)
    return Record(f"<think>{reasoning}</think>\n\n{answer}", gold, kind, choices)


# Hand cases where the two policies differ on purpose (shown, not counted above).
POLICY_CASES = [
    ("First \\boxed{3}, corrected: \\boxed{4}", "4", "numeric"),  # ours: last box; MV: the set {3, 4}
    ("The answer is 12%.", "0.12", "numeric"),  # ours: 12% reads as 12
    ("\\boxed{0.333333}", "1/3", "numeric"),  # ours: exact; MV: rounds to 6 digits
    ("The answer is 1 1/2 cups", "1.5", "numeric"),  # ours: mixed number
    ("<think>so \\boxed{5}", "5", "numeric"),  # ours: cut off = truncated, wrong
]


def make_records(n: int, seed: int) -> list[Record]:
    rng = random.Random(seed)
    makers: list[Callable[[random.Random], Record]] = [_numeric, _numeric, _latex, _letter, _boolean]
    return [rng.choice(makers)(rng) for _ in range(n)]


def _timed(fn: Callable[[Record], bool], records: list[Record]) -> tuple[list[bool], float]:
    # CPU seconds of this one process: records per CPU-second is records/second/core,
    # and unlike wall time it holds on a machine shared with other jobs.
    start = time.process_time()
    out = [fn(r) for r in records]
    return out, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    records = make_records(args.n, args.seed)
    math_records = [r for r in records if r.answer_type in ("numeric", "latex")]

    def ours(r: Record) -> bool:
        return verify_response(r.response, r.answer, r.answer_type, r.choices).correct

    try:
        from math_verify import parse, verify
    except ImportError:
        parse = verify = None

    def mv(text: str, gold: str) -> bool:
        return bool(verify(parse(f"${gold}$"), parse(text)))

    # Warm-up outside the clock: imports, and sympy's first comparison (~1 s, once per process).
    for kind in ("numeric", "latex", "letter", "boolean"):
        ours(next(r for r in records if r.answer_type == kind))
    if parse is not None:
        mv("\\boxed{\\frac{7}{9}}", "6x^2 + 9")
    rows = []
    results: dict[int, bool] = {}
    for kind in ("numeric", "latex", "letter", "boolean"):
        subset = [(i, r) for i, r in enumerate(records) if r.answer_type == kind]
        verdicts, seconds = _timed(ours, [r for _, r in subset])
        results.update(zip([i for i, _ in subset], verdicts, strict=True))
        rows.append((f"ours: {kind}", len(subset), seconds))
    # Each record runs once: a second pass would find sympy's caches warm.
    our_math = [results[i] for i, r in enumerate(records) if r.answer_type in ("numeric", "latex")]
    our_seconds = rows[0][2] + rows[1][2]
    rows.append(("ours: math (numeric+latex)", len(math_records), our_seconds))
    rows.append(("ours: all types", len(records), sum(row[2] for row in rows[:4])))

    if parse is not None:
        mv_math, mv_seconds = _timed(lambda r: mv(split_think(r.response).answer_text, r.answer), math_records)
        mv_full, _ = _timed(lambda r: mv(r.response, r.answer), math_records)
        rows.append(("math-verify: math, parse+verify", len(math_records), mv_seconds))

    print(f"{'records':>8}  {'cpu s':>8}  {'rec/s/core':>11}  what")
    for name, count, seconds in rows:
        print(f"{count:8d}  {seconds:8.3f}  {count / seconds:11.0f}  {name}")
    if parse is None:
        print("math-verify not installed: no comparison")
        return
    print(f"\nspeed ratio ours/math-verify on math records: {mv_seconds / our_seconds:.1f}x")
    agree = sum(a == b for a, b in zip(our_math, mv_math, strict=True))
    agree_full = sum(a == b for a, b in zip(our_math, mv_full, strict=True))
    print(f"agreement on math records (answer text after </think>): {agree}/{len(math_records)} = {agree / len(math_records):.1%}")
    print(f"agreement if math-verify reads the whole response:      {agree_full}/{len(math_records)} = {agree_full / len(math_records):.1%}")
    print(f"accuracy: ours {sum(our_math) / len(math_records):.1%}, math-verify {sum(mv_math) / len(math_records):.1%}")
    for r, a, b in [(r, a, b) for r, a, b in zip(math_records, our_math, mv_math, strict=True) if a != b][:5]:
        print(f"  disagree: ours={a} math-verify={b} gold={r.answer!r} answer={split_think(r.response).answer_text!r}")
    print("\ndeliberate policy differences (ours / math-verify on the whole text):")
    for text, gold, kind in POLICY_CASES:
        print(f"  {verify_response(text, gold, kind).correct!s:5} / {mv(text, gold)!s:5}  gold={gold!r:6} {text!r}")


if __name__ == "__main__":
    main()
