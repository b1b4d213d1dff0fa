"""Paired comparisons of cells for the findings: testability (records present, every cell above
chance), the bootstrap estimate of a statistic, and the words a finding prints. No ">" is ever
printed: a comparison shows both measured numbers and the CI of their difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .model import STATUS_INC, STATUS_NA, STATUS_NO, STATUS_OK, CellInfo, Finding, ReportData
from .stats import (
    BEATS,
    CHANCE_SES,
    CI_LEVEL,
    LOSES,
    MATCHES,
    N_RESAMPLES,
    Estimate,
    Statistic,
    contrast,
    decide,
    estimate,
    pair,
    point_means,
)

HOLDS, CONTRADICTS, UNDECIDED = "holds", "contradicts", "inconclusive"


def teacher_prefix(d: ReportData, teacher: str) -> str:
    """Teacher prefix only when the grid has several teachers (keeps mini-world lines short)."""
    return f"{d.label(teacher)}/" if len({c.teacher for c in d.cells}) > 1 else ""


def name(d: ReportData, c: CellInfo) -> str:
    return f"{teacher_prefix(d, c.teacher)}{d.label(c.student)}/{d.label(c.method)}/{d.label(c.data)}"


def untestable(d: ReportData, cells: Sequence[CellInfo]) -> str | None:
    """Why a comparison of these cells cannot be tested, or None."""
    for c in cells:
        if not d.records.get(c.cell):
            return f"{name(d, c)} has no per-question records (a paired CI needs them)"
    for c in cells:
        mark, ch = d.mark(c), d.chance.get(c.cell)
        if mark and ch is not None and ch.level is not None:
            return (f"{name(d, c)} is {mark} (accuracy {d.acc(c):.3f}, chance {ch.level:.3f}, "
                    f"{CHANCE_SES:g} SE = {CHANCE_SES * (ch.se or 0):.3f})")
    return None


def chance_unknown(d: ReportData, cells: Sequence[CellInfo]) -> list[str]:
    return [name(d, c) for c in cells if c.cell in d.chance and d.chance[c.cell].level is None]


@dataclass(frozen=True)
class Compared:
    cells: tuple[CellInfo, ...]
    why_na: str | None = None
    est: Estimate | None = None
    means: tuple[float, ...] = ()  # paired accuracy of each cell (over shared questions and seeds)


def compare(d: ReportData, cells: Sequence[CellInfo], stat: Statistic,
            channels: Sequence[str] = ("correct",), check_chance: bool = True) -> Compared:
    cells = tuple(cells)
    why = untestable(d, cells) if check_chance else next(
        (f"{name(d, c)} has no per-question records" for c in cells if not d.records.get(c.cell)), None)
    if why:
        return Compared(cells, why)
    p = pair([d.records[c.cell] for c in cells], channels)
    if not p.ids:
        return Compared(cells, "the cells share no evaluated question")
    return Compared(cells, None, estimate(p, stat), tuple(float(x) for x in point_means(p)[:, 0]))


def diff(d: ReportData, a: CellInfo, b: CellInfo) -> Compared:
    """Accuracy of a minus accuracy of b, paired."""
    return compare(d, (a, b), contrast((1, -1)))


def diff_line(d: ReportData, cmp: Compared, verdict: str = "") -> str:
    """'A 0.282 vs B 0.282: diff +0.000 [95% CI -0.030, +0.030] (n=400, seeds 1/1) -> verdict'."""
    a, b = cmp.cells[0], cmp.cells[1]
    if cmp.est is None:
        return f"{name(d, a)} vs {name(d, b)}: not testable: {cmp.why_na}"
    tail = f" -> {verdict}" if verdict else ""
    return (f"{name(d, a)} {cmp.means[0]:.3f} vs {name(d, b)} {cmp.means[1]:.3f}: diff {cmp.est.text()} "
            f"({_n(cmp.est)}){tail}")


def _n(e: Estimate) -> str:
    return f"n={e.n} paired questions, seeds {'/'.join(map(str, e.seeds))}"


def stat_line(cmp: Compared, what: str, verdict: str = "", digits: int = 3, sign: bool = False) -> str:
    """'what: value [95% CI lo, hi] (n=..., seeds ...) -> verdict'; sign for differences."""
    if cmp.est is None:
        return f"{what}: not testable: {cmp.why_na}"
    tail = f" -> {verdict}" if verdict else ""
    return f"{what}: {cmp.est.text(digits, sign)} ({_n(cmp.est)}){tail}"


def direction(cmp: Compared) -> str | None:
    """HOLDS when the CI says the first side is higher, CONTRADICTS when lower, else UNDECIDED;
    None when not testable."""
    if cmp.est is None:
        return None
    v = decide(cmp.est)
    return HOLDS if v == BEATS else CONTRADICTS if v == LOSES else UNDECIDED


def beats_or_matches(cmp: Compared) -> str | None:
    if cmp.est is None:
        return None
    v = decide(cmp.est)
    return HOLDS if v in (BEATS, MATCHES) else CONTRADICTS if v == LOSES else UNDECIDED


def in_range(e: Estimate, lo: float, hi: float, margin: float) -> str:
    """HOLDS: the CI lies within [lo - margin, hi + margin]; CONTRADICTS: it lies wholly outside
    [lo, hi]; else UNDECIDED."""
    if e.hi < lo or e.lo > hi:
        return CONTRADICTS
    if lo - margin <= e.lo and e.hi <= hi + margin:
        return HOLDS
    return UNDECIDED


def status_all(outcomes: Sequence[str | None]) -> str:
    """REPRODUCED: every testable comparison holds; NOT REPRODUCED: any contradicts; else
    INCONCLUSIVE; NOT TESTABLE: none testable."""
    tested = [o for o in outcomes if o is not None]
    if not tested:
        return STATUS_NA
    if CONTRADICTS in tested:
        return STATUS_NO
    return STATUS_OK if all(o == HOLDS for o in tested) else STATUS_INC


def status_usually(outcomes: Sequence[str | None]) -> str:
    """For "usually" claims: REPRODUCED when more than half of the testable comparisons hold,
    NOT REPRODUCED when at least half contradict, else INCONCLUSIVE."""
    tested = [o for o in outcomes if o is not None]
    if not tested:
        return STATUS_NA
    if 2 * tested.count(HOLDS) > len(tested):
        return STATUS_OK
    if 2 * tested.count(CONTRADICTS) >= len(tested):
        return STATUS_NO
    return STATUS_INC


def tally(outcomes: Sequence[str | None]) -> str:
    tested = [o for o in outcomes if o is not None]
    return (f"{len(tested)} of {len(outcomes)} comparisons testable: {tested.count(HOLDS)} hold, "
            f"{tested.count(CONTRADICTS)} contradict, {tested.count(UNDECIDED)} inconclusive.")


CI_TEXT = (f"CI: paired bootstrap over questions (and seeds), {N_RESAMPLES:,} resamples, {CI_LEVEL:.0%} "
           "percentile")
CI_RULE = f"{CI_TEXT}; a cell at or below chance makes a comparison not testable"


def raw_pairs(d: ReportData, kind: str) -> list[tuple[CellInfo, CellInfo]]:
    """(raw cell, other cell) for every cell of `kind` that has a raw cell in its configuration."""
    out = []
    for c in d.cells:
        if c.data_kind != kind:
            continue
        raw = next((r for r in d.in_config(c.config) if r.data_kind == "raw"), None)
        if raw is not None:
            out.append((raw, c))
    return out


def close(f: Finding, outcomes: list[str | None], cmps: list[Compared], usually: bool = False) -> Finding:
    f.status = (status_usually if usually else status_all)(outcomes)
    f.tested, f.compared = sum(o is not None for o in outcomes), len(outcomes)
    f.evidence.insert(0, tally(outcomes) if outcomes else "no comparable cells in the grid.")
    if f.status == STATUS_NA:
        f.why_na = next((c.why_na for c in cmps if c.why_na), "no comparable cells in the grid") or ""
    return f


def verdict(o: str | None, words: tuple[str, str, str] = ("holds", "contradicts", "inconclusive")) -> str:
    return {HOLDS: words[0], CONTRADICTS: words[1], UNDECIDED: words[2]}.get(o or "", "")
