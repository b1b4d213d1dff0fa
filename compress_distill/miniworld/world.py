"""The synthetic reasoning world: four tiny domains with known answers, split train/test by content.

| dataset | question                                        | answer type | domain      |
|---------|-------------------------------------------------|-------------|-------------|
| add     | What is (47 + 38) mod 10?                       | numeric     | math        |
| cmp     | Which is larger, 47 or 52?                      | numeric     | science     |
| par     | Is 3861 even?                                   | boolean     | commonsense |
| min     | Which option has the smallest number? + A) 7 .. | letter      | logic       |

Every domain's question space is enumerated exhaustively and each question is put
in `test` or `train` by a hash of its rendered text (`prompt_text`: the question plus
its `A) ...` option lines, exactly as the pipeline renders it for the teacher), so the
held-out split is disjoint from training by construction and independent of `n` and
`seed`. Ids are content hashes, stable across runs and sample sizes. Operands are two-digit (add) or four-digit (par)
so that test questions are new strings whose underlying skill (the digit table, the
last digit) is still covered by training.
"""

from __future__ import annotations

import copy
import hashlib
import random
import re
from dataclasses import dataclass
from functools import cache
from itertools import permutations
from typing import Literal, TypedDict

AnswerType = Literal["numeric", "letter", "boolean"]
Split = Literal["train", "test"]
LETTERS = "ABCD"
TEST_BUCKETS = 10  # one question in ten is held out


class Question(TypedDict):
    """One row of the normalised dataset schema shared with the real benchmarks."""

    id: str
    dataset: str
    domain: str
    question: str
    choices: list[str] | None
    answer: str
    answer_type: AnswerType
    split: Split


@dataclass(frozen=True)
class DomainSpec:
    name: str
    domain: str  # the paper's evaluation group, lower case
    answer_type: AnswerType
    # How many answers a guesser who knows the answer format picks from (chance = 1 / candidates),
    # and why; tests/test_miniworld.py checks each against the enumerated questions.
    candidates: int
    candidates_why: str


DOMAINS: dict[str, DomainSpec] = {
    "add": DomainSpec("add", "math", "numeric", 10, "a residue mod 10: one of 10 digits"),
    "cmp": DomainSpec("cmp", "science", "numeric", 2, "one of the two numbers the question names"),
    "par": DomainSpec("par", "commonsense", "boolean", 2, "yes or no"),
    "min": DomainSpec("min", "logic", "letter", 4, "one of 4 lettered options"),
}


def _enumerate(name: str) -> list[tuple[str, list[str] | None, str]]:
    """Every (question, choices, answer) of a domain, in a fixed order."""
    if name == "add":
        return [(f"What is ({a} + {b}) mod 10?", None, str((a + b) % 10))
                for a in range(10, 100) for b in range(10, 100)]
    if name == "cmp":
        return [(f"Which is larger, {a} or {b}?", None, str(max(a, b)))
                for a in range(10, 100) for b in range(10, 100) if a != b]
    if name == "par":
        return [(f"Is {n} even?", None, "yes" if n % 2 == 0 else "no") for n in range(100, 10000)]
    if name == "min":
        out: list[tuple[str, list[str] | None, str]] = []
        for digits in permutations(range(10), 4):  # the options live in `choices`, as for real MC data
            choices = [str(d) for d in digits]
            out.append(("Which option has the smallest number?", choices, LETTERS[digits.index(min(digits))]))
        return out
    raise ValueError(f"unknown mini-world domain {name!r}; known: {', '.join(DOMAINS)}")


def render(question: str, choices: list[str] | None) -> str:
    """The question, then one `A) option` line per choice: the pipeline's rendering of a question
    (datasets.schema.render_question), which is what the teacher is trained and prompted on."""
    if not choices:
        return question
    return question + "\n\n" + "\n".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(choices))


def prompt_text(q: Question) -> str:
    return render(q["question"], q["choices"])


def _digest(name: str, text: str) -> str:
    return hashlib.sha256(f"{name}|{text}".encode()).hexdigest()


def split_of(name: str, text: str) -> Split:
    """The split a question belongs to, decided by its rendered text alone."""
    return "test" if int(_digest(name, text)[:8], 16) % TEST_BUCKETS == 0 else "train"


def question_id(name: str, text: str) -> str:
    return f"{name}-{_digest(name, text)[:12]}"


@cache
def _pool(name: str, split: Split) -> tuple[Question, ...]:
    if name not in DOMAINS:
        raise ValueError(f"unknown mini-world domain {name!r}; known: {', '.join(DOMAINS)}")
    spec, rows = DOMAINS[name], _enumerate(name)
    return tuple(
        Question(id=question_id(name, render(q, choices)), dataset=name, domain=spec.domain, question=q,
                 choices=choices, answer=ans, answer_type=spec.answer_type, split=split)
        for q, choices, ans in rows if split_of(name, render(q, choices)) == split
    )


def pool_size(domain: str, split: Split) -> int:
    return len(_pool(domain, split))


def generate_questions(domain: str, split: Split, n: int, seed: int = 0) -> list[Question]:
    """`n` distinct questions of one mini-world dataset (`domain` is its name: add, cmp, par, min).

    Same (domain, split, seed) -> same order, and a larger `n` extends a smaller one.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    pool = list(_pool(domain, split))
    if n > len(pool):
        raise ValueError(f"{domain}/{split} has only {len(pool)} distinct questions; asked for {n}")
    random.Random(f"{domain}|{split}|{seed}").shuffle(pool)
    return [copy.deepcopy(q) for q in pool[:n]]  # callers may mutate rows; the cached pool must not change


# ---------------------------------------------------------------- chat formats shared by every model
STYLE_CONCISE = "Style: concise"
STYLE_VERBOSE = "Style: verbose"


def user_turn(question: str, style: Literal["verbose", "concise", "plain"] = "plain") -> str:
    """The teacher's user turn for a rendered question (`prompt_text`). Plain asks for the verbose style."""
    if style == "plain":
        return question
    return f"{STYLE_CONCISE if style == 'concise' else STYLE_VERBOSE}\n{question}"


def compress_turn(question: str, trace: str) -> str:
    """The compressor's user turn; the same text as the mini config's prompt template."""
    return f"Compress: {question} || {trace}"


def assistant_text(trace: str, answer: str) -> str:
    return f"<think>{trace}</think> The answer is {answer}."


def chat_prompt(user: str) -> str:
    """What the tokenizer's chat template renders for one user turn plus the generation prompt."""
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


_ANSWER_RE = re.compile(r"The answer is ([A-Za-z0-9]+)\.")


def parse_answer(text: str) -> str | None:
    """The last 'The answer is X.' after the think block; None when absent (a counted miss)."""
    tail = text.rsplit("</think>", 1)[-1] if "</think>" in text else ""
    found = _ANSWER_RE.findall(tail)
    return found[-1] if found else None


def think_of(text: str) -> str | None:
    """The reasoning inside <think>...</think>, or None when the block is missing or unclosed."""
    m = re.search(r"<think>(.*?)</think>", text, flags=re.S)
    return m.group(1).strip() if m else None
