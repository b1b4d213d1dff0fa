"""The paper's directional findings, judged from measured data: REPRODUCED, NOT REPRODUCED,
INCONCLUSIVE, or NOT TESTABLE. Nothing here is hard-coded: each status follows from a stated rule
applied to every comparable set of cells, and each finding lists its numbers and their CIs.

Accuracy claims use paired bootstrap CIs (`stats`, `compare`): "beats" needs the CI to exclude 0,
"matches" needs it within +-MATCH_MARGIN; a comparison with a cell at or below chance is not
testable. The rules, once (see also README, report/findings):
- a finding over several comparisons is REPRODUCED when every testable one holds, NOT REPRODUCED
  when any contradicts (its CI excludes the claim's side), else INCONCLUSIVE; claims the paper
  words as "usually" need more than half to hold and fail when at least half contradict;
- NOT TESTABLE: no testable comparison, with the reason.
Findings (a)-(e) are here; (f)-(j), the claims added later, are in `claims`.
"""

from __future__ import annotations

from collections.abc import Callable

from .claims import (
    finding_answer_only,
    finding_efficiency,
    finding_loss_order,
    finding_milder,
    finding_retention,
)
from .compare import (
    CI_RULE,
    CONTRADICTS,
    Compared,
    beats_or_matches,
    close,
    compare,
    diff,
    diff_line,
    direction,
    name,
    raw_pairs,
    stat_line,
    teacher_prefix,
    verdict,
)
from .metrics import EvalMetrics
from .model import STATUS_NA, STATUS_NO, STATUS_OK, Finding, ReportData, f_auto, f_num
from .stats import (
    MATCH_MARGIN,
    contrast,
)


def _status(results: list[bool], need: Callable[[int, int], bool] = lambda k, n: k == n) -> str:
    if not results:
        return STATUS_NA
    return STATUS_OK if need(sum(results), len(results)) else STATUS_NO


# ---------------------------------------------------------------- cost and brevity (no accuracy)

def finding_cost(d: ReportData) -> Finding:
    f = Finding("a", "Compressed sources train on fewer tokens and train faster",
                "Compressed traces cut training tokens to 12-30% of raw and wall-clock training by 2.0-7.6x.",
                "In every configuration with a raw and a compressed cell: token ratio < 1 and speed-up > 1. "
                "No CI: token counts are exact, and each cell has one training time.", STATUS_NA)
    results = []
    for _raw, c in raw_pairs(d, "compressed"):
        cmp = d.comparisons[c.cell]
        if cmp.token_ratio is None or cmp.speedup is None:
            continue
        ok = cmp.token_ratio < 1 and cmp.speedup > 1
        results.append(ok)
        f.evidence.append(f"{name(d, c)}: tokens {f_num(cmp.token_ratio, 3)}x raw, speed-up "
                          f"{f_num(cmp.speedup, 2)}x -> {'holds' if ok else 'fails'}")
    f.status = _status(results)
    f.why_na = "" if results else "no compressed cell with a raw cell and training results"
    f.evidence.insert(0, f"{sum(results)}/{len(results)} comparisons hold.")
    return f


def _reasoning_len(a: EvalMetrics, b: EvalMetrics) -> tuple[float | None, float | None, str]:
    """Median reasoning length of two cells, in tokens when both have them, else characters."""
    if a.median_reasoning_tokens is not None and b.median_reasoning_tokens is not None:
        return a.median_reasoning_tokens, b.median_reasoning_tokens, "tokens"
    return a.median_reasoning_chars, b.median_reasoning_chars, "chars"


def finding_brevity(d: ReportData) -> Finding:
    f = Finding("b", "Students of compressed sources answer with shorter outputs",
                "Compression transfers brevity: median inference reasoning shrinks by roughly 3-19x.",
                "In every configuration: the compressed cell's median reasoning length is below the raw "
                "cell's. No CI: medians over every evaluated question.", STATUS_NA)
    results = []
    for raw, c in raw_pairs(d, "compressed"):
        mr, mc = d.metrics.get(raw.cell), d.metrics.get(c.cell)
        if mr is None or mc is None:
            continue
        lr, lc, unit = _reasoning_len(mr, mc)
        if lr is None or lc is None:
            continue
        ok = lc < lr
        results.append(ok)
        shrink = f", {lr / lc:.1f}x shorter" if lc > 0 else ""
        f.evidence.append(f"{name(d, c)}: median reasoning {f_auto(lc)} vs raw {f_auto(lr)} {unit}{shrink}; "
                          f"avg completion tokens {f_auto(mc.avg_completion_tokens)} vs "
                          f"{f_auto(mr.avg_completion_tokens)} -> {'holds' if ok else 'fails'}")
    f.status = _status(results)
    f.why_na = "" if results else "no evaluated compressed cell with an evaluated raw cell"
    f.evidence.insert(0, f"{sum(results)}/{len(results)} comparisons hold.")
    return f


# ---------------------------------------------------------------- accuracy: paired comparisons

def _measured(d: ReportData, cfg: tuple[str, str, str]) -> str:
    """The configuration's accuracies as measured, highest first, never joined by '>'."""
    cells = sorted((c for c in d.in_config(cfg) if d.acc(c) is not None), key=lambda c: -(d.acc(c) or 0.0))
    marks = {c.cell: f" ({d.mark(c)})" if d.mark(c) else "" for c in cells}
    return (f"{teacher_prefix(d, cfg[0])}{d.label(cfg[1])}/{d.label(cfg[2])} measured: "
            + ", ".join(f"{d.label(c.data)} {f_num(d.acc(c))}{marks[c.cell]}" for c in cells))


def finding_ordering(d: ReportData) -> Finding:
    f = Finding("c", "Accuracy ordering: raw above compressed and truncated; answer-only lowest",
                "Raw traces give the highest overall accuracy in every configuration (truncation ablation "
                "included); answer-only performs worst.",
                f"Per configuration: raw beats each compressed and truncated cell, and every trace-based cell "
                f"beats answer-only; 'beats' = the CI of the accuracy difference excludes 0 ({CI_RULE}).",
                STATUS_NA)
    outcomes: list[str | None] = []
    cmps: list[Compared] = []
    for cfg in d.configs:
        cells = [c for c in d.in_config(cfg) if d.acc(c) is not None]
        if len(cells) < 2:
            continue
        f.evidence.append(_measured(d, cfg))
        raw = next((c for c in cells if c.data_kind == "raw"), None)
        pairs = [(raw, c) for c in cells if raw is not None and c.data_kind in ("compressed", "truncated_to_match")]
        pairs += [(o, c) for c in cells if c.data_kind == "answer_only"
                  for o in cells if o.data_kind in ("raw", "compressed", "truncated_to_match")]
        for hi, lo in pairs:
            cmp = diff(d, hi, lo)
            o = direction(cmp)
            outcomes.append(o)
            cmps.append(cmp)
            f.evidence.append("  " + diff_line(d, cmp, verdict(o)))
    return close(f, outcomes, cmps)


def finding_truncation(d: ReportData) -> Finding:
    f = Finding("d", "Length-matched truncation against the compressor it matches",
                "Model-compressed traces usually beat or match naive truncation at the same token budget, "
                "with shorter inference outputs.",
                f"Per truncated cell: the matched compressor beats it (CI of compressor - truncated excludes 0 "
                f"above) or matches it (CI within +-{MATCH_MARGIN}); truncation wins when the CI excludes 0 "
                f"below. 'Usually': more than half of the testable cells beat or match; NOT REPRODUCED when "
                f"truncation wins in at least half ({CI_RULE}).", STATUS_NA)
    outcomes: list[str | None] = []
    cmps: list[Compared] = []
    for t in (c for c in d.cells if c.data_kind == "truncated_to_match"):
        m = next((c for c in d.in_config(t.config) if c.data_kind == "compressed" and c.compressor == t.compressor),
                 None)
        if m is None:
            continue
        cmp = diff(d, m, t)
        o = beats_or_matches(cmp)
        outcomes.append(o)
        cmps.append(cmp)
        mt, mm = d.metrics.get(t.cell), d.metrics.get(m.cell)
        lens = ""
        if mt and mm:
            lt, lm, unit = _reasoning_len(mt, mm)
            lens = f"; median reasoning truncated {f_auto(lt)} vs compressed {f_auto(lm)} {unit}"
        f.evidence.append(diff_line(d, cmp, verdict(o, ("beats or matches", "truncation wins", "inconclusive")))
                          + lens)
    return close(f, outcomes, cmps, usually=True)


def _smallest(d: ReportData) -> str | None:
    students = list(dict.fromkeys(c.student for c in d.cells))
    return students[0] if students else None


def finding_lora_gap(d: ReportData) -> Finding:
    f = Finding("e", "LoRA narrows the raw-vs-compressed gap at the smallest student",
                "At 0.8B under LoRA, compressed traces narrow the raw-vs-compressed gap but do not exceed raw "
                "(Qwen teacher: raw - compressed 0.022 / 0.028 under LoRA, against 0.051 / 0.032 under Full "
                "and 0.032-0.047 under LoRA at 8B/9B).",
                f"Smallest student = the first in the config's order. For each compressed source: gap = raw - "
                f"compressed accuracy; the claim holds against a reference gap (Full at the smallest student, "
                f"LoRA at each larger student) when the CI of reference gap - LoRA gap excludes 0 above and "
                f"the CI of the LoRA gap does not lie below 0 (compressed exceeding raw); it is contradicted "
                f"when either CI excludes 0 the other way ({CI_RULE}).", STATUS_NA)
    outcomes: list[str | None] = []
    cmps: list[Compared] = []
    small = _smallest(d)
    for c in d.cells:
        if c.student != small or c.method_kind != "lora" or c.data_kind != "compressed":
            continue
        raw = next((r for r in d.in_config(c.config) if r.data_kind == "raw"), None)
        if raw is None:
            continue
        refs = [o for o in d.cells if o.teacher == c.teacher and o.data == c.data and o is not c and (
            (o.student == small and o.method_kind == "full") or (o.student != small and o.method_kind == "lora"))]
        for ref in refs:
            ref_raw = next((r for r in d.in_config(ref.config) if r.data_kind == "raw"), None)
            if ref_raw is None:
                continue
            cmp = compare(d, (ref_raw, ref, raw, c), contrast((1, -1, -1, 1)))
            o = direction(cmp)
            lora_gap = diff(d, raw, c)
            if o is not None and direction(lora_gap) == CONTRADICTS:
                o = CONTRADICTS  # compressed above raw under LoRA: the paper says it does not exceed raw
            outcomes.append(o)
            cmps.append(cmp)
            what = (f"gap {name(d, ref)} minus gap {name(d, c)}"
                    + (f" (gaps {cmp.means[0] - cmp.means[1]:+.3f} and {cmp.means[2] - cmp.means[3]:+.3f})"
                       if cmp.means else ""))
            word = verdict(o, ("LoRA narrows", "contradicts", "inconclusive"))
            f.evidence.append(stat_line(cmp, what, word, sign=True))
            f.evidence.append("  LoRA gap: " + diff_line(d, lora_gap))
    return close(f, outcomes, cmps)

def observations(d: ReportData) -> list[str]:
    """Measured comparisons the paper does not claim: printed, never given a status."""
    out = []
    for c in d.cells:
        if c.method_kind != "lora":
            continue
        full = next((o for o in d.cells if (o.teacher, o.student, o.data) == (c.teacher, c.student, c.data)
                     and o.method_kind == "full"), None)
        if full is not None and d.records.get(full.cell) and d.records.get(c.cell):
            marks = [f"{name(d, x)} {d.mark(x)}" for x in (full, c) if d.mark(x)]
            out.append("Full vs LoRA: " + diff_line(d, compare(d, (full, c), contrast((1, -1)), check_chance=False))
                       + (f" ({'; '.join(marks)})" if marks else ""))
    return out


def findings(d: ReportData) -> list[Finding]:
    return [finding_cost(d), finding_brevity(d), finding_ordering(d), finding_truncation(d), finding_lora_gap(d),
            finding_retention(d), finding_efficiency(d), finding_milder(d), finding_loss_order(d),
            finding_answer_only(d)]
