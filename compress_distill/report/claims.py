"""The claims the first report did not check, each against the paper's value or range: retention
of raw accuracy, the per-token efficiency gain, the milder compressor ahead of the aggressive one,
final loss ordering the sources as accuracy does, and answer-only unstable under full fine-tuning.
Same rules as `findings` (paired CIs, at-chance cells not testable).
"""

from __future__ import annotations

from .compare import (
    CI_RULE,
    CI_TEXT,
    CONTRADICTS,
    HOLDS,
    UNDECIDED,
    Compared,
    close,
    compare,
    diff,
    diff_line,
    direction,
    in_range,
    name,
    raw_pairs,
    stat_line,
    verdict,
)
from .metrics import OVERALL
from .model import STATUS_NA, CellInfo, Finding, ReportData, f_auto, f_num, num
from .stats import (
    MATCH_MARGIN,
    MATCHES,
    Statistic,
    contrast,
    decide,
    estimate,
    pair,
    per_token_gain,
    point_means,
    ratio,
)

# The paper's ranges, from its Tables 3 and 9 (every compressed cell against the raw cell of its
# teacher, student and method): retention 0.887-0.963 ("up to 96%"), Acc/1k-token gain 1.21-18.5x.
PAPER_RETENTION = (0.887, 0.963)
PAPER_GAIN = (1.21, 18.5)


def finding_retention(d: ReportData) -> Finding:
    lo, hi = PAPER_RETENTION
    f = Finding("f", "Retention of raw accuracy",
                f"Compressed students retain up to 96% of raw-trace accuracy (Table 3: compressed / raw = "
                f"{lo:.3f}-{hi:.3f} over the 28 compressed cells).",
                f"Per compressed cell: retention = its accuracy / the raw cell's, with a CI. Holds when the CI "
                f"lies within the paper's range widened by {MATCH_MARGIN} each side; contradicted when it lies "
                f"wholly outside the paper's range ({CI_RULE}).", STATUS_NA)
    return _against_range(d, f, ratio(0, 1), ("correct",), PAPER_RETENTION, MATCH_MARGIN, "retention",
                          show_means=True, digits=3)


def finding_efficiency(d: ReportData) -> Finding:
    lo, hi = PAPER_GAIN
    f = Finding("g", "Per-token efficiency gain (Acc / 1k tokens)",
                f"Compressed students gain up to 18x higher per-token efficiency (Table 9: compressed / raw "
                f"Acc/1k tokens = {lo:.2f}-{hi:.1f}x over the 28 compressed cells).",
                f"Per compressed cell: gain = its Acc/1k tokens / the raw cell's (mean completion tokens over "
                f"all records), with a CI. Holds when the CI lies within the paper's range; contradicted when "
                f"it lies wholly outside it ({CI_RULE}).", STATUS_NA)
    return _against_range(d, f, per_token_gain(0, 1), ("correct", "completion_tokens"), PAPER_GAIN, 0.0,
                          "gain (x)", show_means=False, digits=2)


def _against_range(d: ReportData, f: Finding, stat: Statistic, channels: tuple[str, ...],
                   paper: tuple[float, float], margin: float, what: str, *, show_means: bool,
                   digits: int) -> Finding:
    """Per compressed cell against the raw cell of its configuration: `stat` of (compressed, raw)
    with a CI, in the paper's range (widened by `margin`) or outside it; (f) and (g)."""
    lo, hi = paper
    outcomes: list[str | None] = []
    cmps: list[Compared] = []
    for raw, c in raw_pairs(d, "compressed"):
        cmp = compare(d, (c, raw), stat, channels=channels)
        o = in_range(cmp.est, lo, hi, margin) if cmp.est else None
        outcomes.append(o)
        cmps.append(cmp)
        acc = f" ({cmp.means[0]:.3f} / {cmp.means[1]:.3f})" if show_means and cmp.means else ""
        f.evidence.append(stat_line(cmp, f"{name(d, c)} {what}{acc}",
                                    verdict(o, ("in the paper's range", "outside the paper's range",
                                                 "inconclusive")), digits=digits))
    return close(f, outcomes, cmps)


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
                f.evidence.append(diff_line(d, cmp, verdict(o)) + f" (mean rho {max(ra, rb):.3f} vs "
                                                                  f"{min(ra, rb):.3f})")
    return close(f, outcomes, cmps, usually=True)


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
                f"last logged loss, one value per cell (no CI). Accuracy {CI_RULE}.", STATUS_NA)
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
                word = verdict(o, ("orders agree", "orders disagree", "inconclusive"))
                f.evidence.append(diff_line(d, cmp) + f"; final loss {la:.4f} vs {lb:.4f}"
                                  + (f" -> {word}" if word else ""))
    return close(f, outcomes, cmps)


def finding_answer_only(d: ReportData) -> Finding:
    f = Finding("j", "Answer-only is unstable under full fine-tuning",
                "Under full fine-tuning answer-only becomes unstable: it collapses to 0.550 (9B; LoRA 0.781) "
                "and 0.001 (0.8B; LoRA 0.390) with 99.9% truncation, and to 0.181 (8B; LoRA 0.590) with "
                "2-token outputs. One run per cell in the paper.",
                f"Unstable = reruns differ: some pair of seeds of the answer-only/full cell differs (paired CI "
                f"of seed i - seed j excludes 0) while every seed pair of the raw/full cell of the same "
                f"student matches (CI within +-{MATCH_MARGIN}). Contradicted when every answer-only seed pair "
                f"matches. Needs >= 2 seeds per cell; at chance is no bar here, as collapse is the claim "
                f"({CI_TEXT}).", STATUS_NA)
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
        f.evidence.append(f"{name(d, ao)} -> {verdict(o, ('unstable', 'stable', 'inconclusive'))}")
    return close(f, outcomes, cmps)


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
