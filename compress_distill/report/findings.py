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
"""

from __future__ import annotations

from collections.abc import Callable

from .compare import (
    CONTRADICTS,
    HOLDS,
    UNDECIDED,
    Compared,
    beats_or_matches,
    compare,
    diff,
    diff_line,
    direction,
    in_range,
    name,
    stat_line,
    status_all,
    status_usually,
    tally,
    teacher_prefix,
)
from .metrics import OVERALL, EvalMetrics
from .model import STATUS_NA, STATUS_NO, STATUS_OK, CellInfo, Finding, ReportData, f_auto, f_num, num
from .stats import (
    CI_LEVEL,
    MATCH_MARGIN,
    MATCHES,
    N_RESAMPLES,
    contrast,
    decide,
    estimate,
    pair,
    per_token_gain,
    point_means,
    ratio,
)

CI_RULE = (f"paired bootstrap over questions (and seeds), {N_RESAMPLES:,} resamples, {CI_LEVEL:.0%} "
           f"percentile CI; a cell at or below chance makes a comparison not testable")
# The paper's ranges, from its Tables 3 and 9 (every compressed cell against the raw cell of its
# teacher, student and method): retention 0.887-0.963 ("up to 96%"), Acc/1k-token gain 1.21-18.5x.
PAPER_RETENTION = (0.887, 0.963)
PAPER_GAIN = (1.21, 18.5)


def _status(results: list[bool], need: Callable[[int, int], bool] = lambda k, n: k == n) -> str:
    if not results:
        return STATUS_NA
    return STATUS_OK if need(sum(results), len(results)) else STATUS_NO


def _pairs(d: ReportData, kind: str) -> list[tuple[CellInfo, CellInfo]]:
    """(raw cell, other cell) for every cell of `kind` that has a raw cell in its configuration."""
    out = []
    for c in d.cells:
        if c.data_kind != kind:
            continue
        raw = next((r for r in d.in_config(c.config) if r.data_kind == "raw"), None)
        if raw is not None:
            out.append((raw, c))
    return out


def _close(f: Finding, outcomes: list[str | None], cmps: list[Compared], usually: bool = False) -> Finding:
    f.status = (status_usually if usually else status_all)(outcomes)
    f.evidence.insert(0, tally(outcomes) if outcomes else "no comparable cells in the grid.")
    if f.status == STATUS_NA:
        f.why_na = next((c.why_na for c in cmps if c.why_na), "no comparable cells in the grid") or ""
    return f


def _verdict(o: str | None, words: tuple[str, str, str] = ("holds", "contradicts", "inconclusive")) -> str:
    return {HOLDS: words[0], CONTRADICTS: words[1], UNDECIDED: words[2]}.get(o or "", "")


# ---------------------------------------------------------------- cost and brevity (no accuracy)

def finding_cost(d: ReportData) -> Finding:
    f = Finding("a", "Compressed sources train on fewer tokens and train faster",
                "Compressed traces cut training tokens to 12-30% of raw and wall-clock training by 2.0-7.6x.",
                "In every configuration with a raw and a compressed cell: token ratio < 1 and speed-up > 1. "
                "No CI: token counts are exact, and each cell has one training time.", STATUS_NA)
    results = []
    for _raw, c in _pairs(d, "compressed"):
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
    for raw, c in _pairs(d, "compressed"):
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
            f.evidence.append("  " + diff_line(d, cmp, _verdict(o)))
    return _close(f, outcomes, cmps)


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
        f.evidence.append(diff_line(d, cmp, _verdict(o, ("beats or matches", "truncation wins", "inconclusive")))
                          + lens)
    return _close(f, outcomes, cmps, usually=True)


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
            verdict = _verdict(o, ("LoRA narrows", "contradicts", "inconclusive"))
            f.evidence.append(stat_line(cmp, what, verdict, sign=True))
            f.evidence.append("  LoRA gap: " + diff_line(d, lora_gap))
    return _close(f, outcomes, cmps)


def finding_retention(d: ReportData) -> Finding:
    lo, hi = PAPER_RETENTION
    f = Finding("f", "Retention of raw accuracy",
                f"Compressed students retain up to 96% of raw-trace accuracy (Table 3: compressed / raw = "
                f"{lo:.3f}-{hi:.3f} over the 28 compressed cells).",
                f"Per compressed cell: retention = its accuracy / the raw cell's, with a CI. Holds when the CI "
                f"lies within the paper's range widened by {MATCH_MARGIN} each side; contradicted when it lies "
                f"wholly outside the paper's range ({CI_RULE}).", STATUS_NA)
    outcomes: list[str | None] = []
    cmps: list[Compared] = []
    for raw, c in _pairs(d, "compressed"):
        cmp = compare(d, (c, raw), ratio(0, 1))
        o = in_range(cmp.est, lo, hi, MATCH_MARGIN) if cmp.est else None
        outcomes.append(o)
        cmps.append(cmp)
        acc = f" ({cmp.means[0]:.3f} / {cmp.means[1]:.3f})" if cmp.means else ""
        f.evidence.append(stat_line(cmp, f"{name(d, c)} retention{acc}",
                                    _verdict(o, ("in the paper's range", "outside the paper's range",
                                                 "inconclusive"))))
    return _close(f, outcomes, cmps)


def finding_efficiency(d: ReportData) -> Finding:
    lo, hi = PAPER_GAIN
    f = Finding("g", "Per-token efficiency gain (Acc / 1k tokens)",
                f"Compressed students gain up to 18x higher per-token efficiency (Table 9: compressed / raw "
                f"Acc/1k tokens = {lo:.2f}-{hi:.1f}x over the 28 compressed cells).",
                f"Per compressed cell: gain = its Acc/1k tokens / the raw cell's (mean completion tokens over "
                f"all records), with a CI. Holds when the CI lies within the paper's range; contradicted when "
                f"it lies wholly outside it ({CI_RULE}).", STATUS_NA)
    outcomes: list[str | None] = []
    cmps: list[Compared] = []
    for raw, c in _pairs(d, "compressed"):
        cmp = compare(d, (c, raw), per_token_gain(0, 1), channels=("correct", "completion_tokens"))
        o = in_range(cmp.est, lo, hi, 0.0) if cmp.est else None
        outcomes.append(o)
        cmps.append(cmp)
        f.evidence.append(stat_line(cmp, f"{name(d, c)} gain (x)",
                                    _verdict(o, ("in the paper's range", "outside the paper's range",
                                                 "inconclusive")), digits=2))
    return _close(f, outcomes, cmps)


def _rho(d: ReportData) -> dict[tuple[str, str], float]:
    return {(s.teacher, s.compressor): s.mean_rho for s in d.compression
            if s.dataset == OVERALL and s.mean_rho is not None}


def finding_milder(d: ReportData) -> Finding:
    f = Finding("h", "The milder compressor ahead of the aggressive one",
                "Llama-70B-compressed (milder) traces usually beat Ministral-14B-compressed (more aggressive): "
                "ahead in 11 of 14 configurations by point estimate, differences -0.019 to +0.017.",
                f"Milder = the higher mean rho (Table 2) for the same teacher. Per configuration and pair of "
                f"compressed cells: holds when the CI of milder - aggressive excludes 0 above, contradicts "
                f"when it excludes 0 below. 'Usually': more than half hold; NOT REPRODUCED when at least half "
                f"contradict ({CI_RULE}).", STATUS_NA)
    rho = _rho(d)
    outcomes: list[str | None] = []
    cmps: list[Compared] = []
    for cfg in d.configs:
        comp = [c for c in d.in_config(cfg) if c.data_kind == "compressed"]
        for i, a in enumerate(comp):
            for b in comp[i + 1:]:
                ra, rb = rho.get((a.teacher, a.compressor or "")), rho.get((b.teacher, b.compressor or ""))
                if ra is None or rb is None or ra == rb:
                    cmps.append(Compared((a, b), "which compressor is milder is unknown (no mean rho, or equal)"))
                    outcomes.append(None)
                    continue
                mild, aggr = (a, b) if ra > rb else (b, a)
                cmp = diff(d, mild, aggr)
                o = direction(cmp)
                outcomes.append(o)
                cmps.append(cmp)
                f.evidence.append(diff_line(d, cmp, _verdict(o)) + f" (mean rho {max(ra, rb):.3f} vs "
                                                                  f"{min(ra, rb):.3f})")
    return _close(f, outcomes, cmps, usually=True)


def _final_loss(d: ReportData, c: CellInfo) -> float | None:
    v = num(d.training.get(c.cell, {}).get("final_loss"))
    if v is None and d.loss.get(c.cell):
        v = d.loss[c.cell][-1][1]
    return v


def finding_loss_order(d: ReportData) -> Finding:
    f = Finding("i", "Final training loss orders the trace sources as accuracy does",
                "Within raw and compressed sources (Qwen teacher), final training loss orders the sources "
                "raw < Llama-70B < Ministral-14B in every configuration (e.g. Qwen3.5-9B: 0.314 / 0.422 / "
                "0.478), matching the accuracy ordering (it inverts under the gpt-oss teacher).",
                f"Per configuration and pair of raw/compressed cells whose accuracy differs (CI excludes 0): "
                f"holds when the more accurate cell has the lower final loss, contradicts otherwise; a pair "
                f"whose accuracy CI includes 0 is inconclusive. Final loss: the training result's, else the "
                f"last logged loss; one value per cell, no CI ({CI_RULE}).", STATUS_NA)
    outcomes: list[str | None] = []
    cmps: list[Compared] = []
    for cfg in d.configs:
        cells = [c for c in d.in_config(cfg) if c.data_kind in ("raw", "compressed")]
        for i, a in enumerate(cells):
            for b in cells[i + 1:]:
                la, lb = _final_loss(d, a), _final_loss(d, b)
                if la is None or lb is None:
                    cmps.append(Compared((a, b), "no final training loss"))
                    outcomes.append(None)
                    continue
                cmp = diff(d, a, b)
                acc = direction(cmp)
                o = acc if acc in (None, UNDECIDED) else (
                    HOLDS if (acc == HOLDS) == (la < lb) else CONTRADICTS)
                outcomes.append(o)
                cmps.append(cmp)
                f.evidence.append(diff_line(d, cmp) + f"; final loss {la:.4f} vs {lb:.4f} -> "
                                  + _verdict(o, ("orders agree", "orders disagree", "inconclusive")))
    return _close(f, outcomes, cmps)


def finding_answer_only(d: ReportData) -> Finding:
    f = Finding("j", "Answer-only is unstable under full fine-tuning",
                "Under full fine-tuning answer-only becomes unstable: it collapses to 0.550 (9B; LoRA 0.781) "
                "and 0.001 (0.8B; LoRA 0.390) with 99.9% truncation, and to 0.181 (8B; LoRA 0.590) with "
                "2-token outputs. One run per cell in the paper.",
                f"Unstable = reruns differ: some pair of seeds of the answer-only/full cell differs (paired CI "
                f"of seed i - seed j excludes 0) while every seed pair of the raw/full cell of the same "
                f"student matches (CI within +-{MATCH_MARGIN}). Contradicted when every answer-only seed pair "
                f"matches. Needs >= 2 seeds per cell; at-chance is not a bar here (collapse is the claim) "
                f"({CI_RULE}).", STATUS_NA)
    outcomes: list[str | None] = []
    cmps: list[Compared] = []
    for ao in (c for c in d.cells if c.data_kind == "answer_only" and c.method_kind == "full"):
        seeds = d.records.get(ao.cell, [])
        m = d.metrics.get(ao.cell)
        if m is not None:
            lora = next((o for o in d.cells if (o.teacher, o.student, o.data) == (ao.teacher, ao.student, ao.data)
                         and o.method_kind == "lora"), None)
            f.evidence.append(f"{name(d, ao)}: accuracy {f_num(m.accuracy)}, truncation rate "
                              f"{f_num(m.truncation_rate)}, avg completion tokens {f_auto(m.avg_completion_tokens)}"
                              + (f"; LoRA {f_num(d.acc(lora))}" if lora and d.acc(lora) is not None else ""))
        raw = next((r for r in d.in_config(ao.config) if r.data_kind == "raw"), None)
        if len(seeds) < 2 or raw is None or len(d.records.get(raw.cell, [])) < 2:
            why = (f"{name(d, ao)} has {len(seeds)} seed(s)" if len(seeds) < 2 else
                   "no raw/full cell with >= 2 seeds to compare with")
            cmps.append(Compared((ao,), f"{why}: instability is rerun-to-rerun variation, which needs >= 2 seeds"))
            outcomes.append(None)
            continue
        ao_v = _seed_pairs(d, ao)
        raw_v = _seed_pairs(d, raw)
        ao_unstable = any(direction(c) in (HOLDS, CONTRADICTS) for c in ao_v)
        ao_stable = all(c.est is not None and decide(c.est) == MATCHES for c in ao_v)
        raw_stable = all(c.est is not None and decide(c.est) == MATCHES for c in raw_v)
        o = HOLDS if ao_unstable and raw_stable else CONTRADICTS if ao_stable else UNDECIDED
        outcomes.append(o)
        cmps.extend(ao_v)
        for c in ao_v + raw_v:
            f.evidence.append(stat_line(c, f"{name(d, c.cells[0])} seed pair difference", sign=True))
        f.evidence.append(f"{name(d, ao)} -> {_verdict(o, ('unstable', 'stable', 'inconclusive'))}")
    return _close(f, outcomes, cmps)


def _seed_pairs(d: ReportData, c: CellInfo) -> list[Compared]:
    """Paired difference between every two seeds of one cell."""
    seeds = d.records[c.cell]
    out = []
    for i in range(len(seeds)):
        for j in range(i + 1, len(seeds)):
            p = pair([[seeds[i]], [seeds[j]]])
            out.append(Compared((c, c), None, estimate(p, contrast((1, -1))),
                                tuple(float(x) for x in point_means(p)[:, 0])))
    return out


def observations(d: ReportData) -> list[str]:
    """Measured comparisons the paper does not claim: printed, never given a status."""
    out = []
    for c in d.cells:
        if c.method_kind != "lora":
            continue
        full = next((o for o in d.cells if (o.teacher, o.student, o.data) == (c.teacher, c.student, c.data)
                     and o.method_kind == "full"), None)
        if full is not None and d.records.get(full.cell) and d.records.get(c.cell):
            out.append("Full vs LoRA: " + diff_line(d, compare(d, (full, c), contrast((1, -1)),
                                                                check_chance=False)))
    return out


def findings(d: ReportData) -> list[Finding]:
    return [finding_cost(d), finding_brevity(d), finding_ordering(d), finding_truncation(d), finding_lora_gap(d),
            finding_retention(d), finding_efficiency(d), finding_milder(d), finding_loss_order(d),
            finding_answer_only(d)]
