"""The statistics behind the findings. Pure: numpy only, no I/O, deterministic for a seed.

Chance. A cell's evaluation set mixes datasets; its chance level is the question-weighted mean of
their chance levels, and a guesser's accuracy has SE sqrt(sum c_q (1 - c_q)) / n (the binomial SE
under the null, defined even when the measured accuracy is 0 or 1). A cell within `CHANCE_SES` of
it is "at chance"; more than that below it, "below chance". Either way the cell has not learned
the task, and a comparison involving it is not testable.

Paired bootstrap. Per cell: one mapping per seed, question id -> record. The cells are paired on
the questions they all share; each resample draws those questions with replacement, the same draw
for every cell, and, in a cell with several seeds, draws its seeds with replacement too (so the
interval covers rerun-to-rerun variation, not only the questions). With one seed per cell it is
the plain paired bootstrap. The CI is the percentile interval of a statistic of the per-cell means.

Decisions from a CI: "beats" (it excludes 0 above), "loses" (excludes 0 below), "matches" (it
lies within +-MATCH_MARGIN), else "inconclusive".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

N_RESAMPLES = 10_000
CI_LEVEL = 0.95
BOOTSTRAP_SEED = 0
# "Matches" = the whole 95% CI of the difference lies within +-0.05 absolute accuracy. The
# paper's ties are closer (<= 0.013, e.g. truncated 0.830 vs Llama-70B 0.834 at 9B), but a paired CI
# is about +-1.96 sqrt(discordant share / n) wide: +-0.04 for 400 questions with 15% of answers
# differing, so a tighter margin could never be met in the mini world. 0.05 is the closest it can
# resolve; it is coarser than the paper's ties, and every rule that uses it says so.
MATCH_MARGIN = 0.05
CHANCE_SES = 2.0  # "at chance": within 2 null SEs of the chance level

AT_CHANCE, BELOW_CHANCE = "at chance", "below chance"
BEATS, LOSES, MATCHES, INCONCLUSIVE = "beats", "loses", "matches", "inconclusive"

Record = Mapping[str, Any]
SeedRecords = Mapping[str, Record]  # question id -> record ("correct", "completion_tokens", ...)
CellRecords = Sequence[SeedRecords]  # one mapping per seed


# ---------------------------------------------------------------- chance

@dataclass(frozen=True)
class SetChance:
    level: float | None  # question-weighted mean chance; None when any question's is unknown
    se: float | None  # SE of a guesser's accuracy on this set
    n: int


def set_chance(levels: Sequence[float | None]) -> SetChance:
    """Chance of an evaluation set from the chance level of each of its questions."""
    n = len(levels)
    if n == 0 or any(c is None for c in levels):
        return SetChance(None, None, n)
    cs = [float(c) for c in levels if c is not None]
    return SetChance(sum(cs) / n, math.sqrt(sum(c * (1 - c) for c in cs)) / n, n)


def chance_mark(accuracy: float | None, chance: SetChance) -> str | None:
    """AT_CHANCE, BELOW_CHANCE, or None (above chance, or not judgeable: see `chance.level`)."""
    if accuracy is None or chance.level is None or chance.se is None:
        return None
    if accuracy < chance.level - CHANCE_SES * chance.se:
        return BELOW_CHANCE
    if accuracy <= chance.level + CHANCE_SES * chance.se:
        return AT_CHANCE
    return None


# ---------------------------------------------------------------- paired bootstrap

@dataclass(frozen=True)
class Paired:
    ids: tuple[str, ...]  # the questions every seed of every cell answered, sorted
    values: tuple[np.ndarray, ...]  # per cell: (seeds, questions, channels)
    channels: tuple[str, ...]

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(v.shape[0] for v in self.values)


def pair(cells: Sequence[CellRecords], channels: Sequence[str] = ("correct",)) -> Paired:
    """Align cells on their shared questions; a channel's value is float(record[channel])."""
    if not cells or any(not seeds for seeds in cells):
        raise ValueError("every cell needs at least one seed of records")
    shared = set.intersection(*(set(s) for seeds in cells for s in seeds))
    ids = tuple(sorted(shared))
    values = tuple(np.array([[[float(s[q][ch] or 0) for ch in channels] for q in ids] for s in seeds],
                            dtype=float).reshape(len(seeds), len(ids), len(channels)) for seeds in cells)
    return Paired(ids, values, tuple(channels))


def point_means(p: Paired) -> np.ndarray:
    """(cells, channels): each cell's mean over its seeds and the shared questions."""
    return np.stack([v.mean(axis=(0, 1)) for v in p.values])


def bootstrap_means(p: Paired, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                    chunk: int = 500) -> np.ndarray:
    """(resamples, cells, channels): per-resample means (questions paired, seeds per cell)."""
    q = len(p.ids)
    if q == 0:
        raise ValueError("the cells share no question: nothing to pair")
    question_counts = _question_counts(seed, n_resamples, q, chunk)
    rng = np.random.default_rng([seed, 1])  # seed draws: a stream apart from the questions'
    out = np.empty((n_resamples, len(p.values), len(p.channels)))
    for start in range(0, n_resamples, chunk):
        r = min(chunk, n_resamples - start)
        counts = question_counts[start:start + r].astype(float)  # (r, q): how often each question is drawn
        for i, v in enumerate(p.values):
            s = v.shape[0]
            if s == 1:
                out[start:start + r, i] = counts @ v[0] / q
                continue
            w = _counts(rng, r, s)  # (r, s)
            per_q = np.einsum("rs,sqc->rqc", w, v) / s
            out[start:start + r, i] = np.einsum("rq,rqc->rc", counts, per_q) / q
    return out


@lru_cache(maxsize=4)
def _question_counts(seed: int, n_resamples: int, q: int, chunk: int) -> np.ndarray:
    """The question draws of every resample, (n_resamples, q) uint8 counts: the same for every
    comparison of q paired questions, so they are drawn once (the largest mini-world set, ~1,000
    questions: 10 MB)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_resamples, q), dtype=np.uint8)  # a question drawn > 255 times in q draws: p ~ 0
    for start in range(0, n_resamples, chunk):
        r = min(chunk, n_resamples - start)
        out[start:start + r] = _counts(rng, r, q)
    out.flags.writeable = False
    return out


def _counts(rng: np.random.Generator, r: int, n: int) -> np.ndarray:
    """r resamples of n items drawn with replacement, as draw counts per item: (r, n) floats."""
    idx = rng.integers(0, n, size=(r, n)) + (np.arange(r) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=r * n).reshape(r, n).astype(float)


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float
    n: int  # shared questions
    seeds: tuple[int, ...]  # seeds per cell

    def ci(self, digits: int = 3, sign: bool = True) -> str:
        f = f"{{:{'+' if sign else ''}.{digits}f}}"
        return f"[{CI_LEVEL:.0%} CI {f.format(self.lo)}, {f.format(self.hi)}]"

    def text(self, digits: int = 3, sign: bool = True) -> str:
        f = f"{{:{'+' if sign else ''}.{digits}f}}"
        return f"{f.format(self.value)} {self.ci(digits, sign)}"


Statistic = Callable[[np.ndarray], np.ndarray]  # means (..., cells, channels) -> (...)


def estimate(p: Paired, stat: Statistic, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
             level: float = CI_LEVEL) -> Estimate:
    """The statistic on the observed means, and its percentile CI over the bootstrap resamples
    (resamples where it is undefined, e.g. a ratio over 0, are left out)."""
    value = float(stat(point_means(p)))
    samples = np.asarray(stat(bootstrap_means(p, n_resamples, seed)), dtype=float)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return Estimate(value, math.nan, math.nan, len(p.ids), p.seeds)
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(value, float(lo), float(hi), len(p.ids), p.seeds)


def contrast(weights: Sequence[float], channel: int = 0) -> Statistic:
    """sum_i w_i * mean_i: a difference is (1, -1); a difference of differences (1, -1, -1, 1)."""
    w = np.asarray(weights, dtype=float)
    return lambda m: np.tensordot(m[..., channel], w, axes=([-1], [0]))


def ratio(num: int, den: int, channel: int = 0) -> Statistic:
    """mean_num / mean_den (NaN where mean_den is 0)."""
    def f(m: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(m[..., den, channel] > 0, m[..., num, channel] / m[..., den, channel], np.nan)
    return f


def per_token_gain(num: int, den: int) -> Statistic:
    """(acc/tokens of cell num) / (acc/tokens of cell den), channels (correct, completion_tokens):
    the ratio of Acc/1k tokens."""
    def f(m: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            a = m[..., num, 0] / m[..., num, 1]
            b = m[..., den, 0] / m[..., den, 1]
            return np.where(np.isfinite(a) & np.isfinite(b) & (b > 0), a / b, np.nan)
    return f


# ---------------------------------------------------------------- decisions

def decide(e: Estimate, margin: float = MATCH_MARGIN, null: float = 0.0) -> str:
    """BEATS / LOSES when the CI excludes `null`; MATCHES when it lies within null +- margin."""
    if math.isnan(e.lo) or math.isnan(e.hi):
        return INCONCLUSIVE
    if e.lo > null:
        return BEATS
    if e.hi < null:
        return LOSES
    if null - margin <= e.lo and e.hi <= null + margin:
        return MATCHES
    return INCONCLUSIVE
