"""The chance level of a dataset: the accuracy of a guesser who knows the answer format but not
the answer (report Table 1, and the "at chance" marks of the findings).

Derived, never assumed:
- the mini world (`synthetic:<domain>`): 1 / the domain's candidate answers (`world.DOMAINS`);
- a registry dataset with a fixed number of options (`choice_range` lo == hi): 1 / options;
- a boolean answer: 1/2;
- anything else (numeric or LaTeX answers, a varying number of options, custom data): unknown
  (level None), so "at chance" cannot be judged for it; the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..miniworld.world import DOMAINS
from .loaders import SYNTHETIC
from .registry import lookup


@dataclass(frozen=True)
class Chance:
    level: float | None  # None: unknown
    basis: str  # how the level was derived, or why it is unknown


def dataset_chance(name: str, source: str, answer_type: str, subset: str | None = None) -> Chance:
    if source.lower().startswith(SYNTHETIC):
        spec = DOMAINS.get(source[len(SYNTHETIC):])
        if spec is None:
            return Chance(None, f"unknown mini-world domain {source!r}")
        return Chance(1 / spec.candidates, f"1/{spec.candidates}: the answer is {spec.candidates_why}")
    if answer_type == "boolean":
        return Chance(0.5, "1/2: a yes/no answer")
    entry = lookup(name, source, subset)
    if answer_type == "letter" and entry is not None and entry.choice_range is not None:
        lo, hi = entry.choice_range
        if lo == hi:
            return Chance(1 / lo, f"1/{lo}: {lo} options in every question ({entry.name})")
        return Chance(None, f"unknown: {lo}-{hi} options per question ({entry.name})")
    return Chance(None, f"unknown: a {answer_type} answer has no fixed answer space")
