"""The paper's directional findings, judged from measured data: REPRODUCED, NOT REPRODUCED, or
NOT TESTABLE (the data needed for the comparison is missing). Nothing here is hard-coded:
each status follows from a stated rule applied to every comparable pair of cells, and each
finding lists the numbers it was decided on.
"""

from __future__ import annotations

from collections.abc import Callable

from .metrics import EvalMetrics
from .model import (
    STATUS_NA,
    STATUS_NO,
    STATUS_OK,
    CellInfo,
    Finding,
    ReportData,
    f_auto,
    f_num,
)


def _status(results: list[bool], need: Callable[[int, int], bool] = lambda k, n: k == n) -> str:
    if not results:
        return STATUS_NA
    return STATUS_OK if need(sum(results), len(results)) else STATUS_NO


def _teacher(d: ReportData, teacher: str) -> str:
    """Teacher prefix only when the grid has several teachers (keeps mini-world lines short)."""
    return f"{d.label(teacher)}/" if len({c.teacher for c in d.cells}) > 1 else ""


def _name(d: ReportData, c: CellInfo) -> str:
    return f"{_teacher(d, c.teacher)}{d.label(c.student)}/{d.label(c.method)}/{d.label(c.data)}"


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


def _se_gap(a: EvalMetrics, b: EvalMetrics) -> str:
    """Difference a - b in combined standard errors, as a hint of how far from noise it is."""
    if a.accuracy is None or b.accuracy is None:
        return ""
    se = ((a.accuracy_se or 0) ** 2 + (b.accuracy_se or 0) ** 2) ** 0.5
    return f" ({(a.accuracy - b.accuracy) / se:+.1f} SE)" if se > 0 else ""


def finding_cost(d: ReportData) -> Finding:
    f = Finding("a", "Compressed sources train on fewer tokens and train faster",
                "Compressed traces cut training tokens to 12-30% of raw and wall-clock training by 2.0-7.6x.",
                "In every configuration with a raw and a compressed cell: token ratio < 1 and speed-up > 1.",
                STATUS_NA)
    results = []
    for _raw, c in _pairs(d, "compressed"):
        cmp = d.comparisons[c.cell]
        if cmp.token_ratio is None or cmp.speedup is None:
            continue
        ok = cmp.token_ratio < 1 and cmp.speedup > 1
        results.append(ok)
        f.evidence.append(f"{_name(d, c)}: tokens {f_num(cmp.token_ratio, 3)}x raw, speed-up "
                          f"{f_num(cmp.speedup, 2)}x -> {'holds' if ok else 'fails'}")
    f.status = _status(results)
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
                "In every configuration: the compressed cell's median reasoning length is below the raw cell's.",
                STATUS_NA)
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
        f.evidence.append(f"{_name(d, c)}: median reasoning {f_auto(lc)} vs raw {f_auto(lr)} {unit}{shrink}; "
                          f"avg completion tokens {f_auto(mc.avg_completion_tokens)} vs "
                          f"{f_auto(mr.avg_completion_tokens)} -> {'holds' if ok else 'fails'}")
    f.status = _status(results)
    f.evidence.insert(0, f"{sum(results)}/{len(results)} comparisons hold.")
    return f


def finding_ordering(d: ReportData) -> Finding:
    f = Finding("c", "Accuracy ordering: raw > compressed > answer-only, and raw > truncated",
                "Raw traces give the highest overall accuracy in every configuration (truncation ablation "
                "included); answer-only performs worst.",
                "Strict inequalities of overall accuracy in every configuration: raw above each compressed "
                "and truncated cell, and answer-only below every trace-based cell.",
                STATUS_NA)
    results = []
    fails = []
    for cfg in d.configs:
        cells = [c for c in d.in_config(cfg) if d.acc(c) is not None]
        if len(cells) < 2:
            continue
        ranked = sorted(cells, key=lambda c: -(d.acc(c) or 0.0))
        f.evidence.append(f"{_teacher(d, cfg[0])}{d.label(cfg[1])}/{d.label(cfg[2])}: " + " > ".join(
            f"{d.label(c.data)} {f_num(d.acc(c))}" for c in ranked))
        raw = next((c for c in cells if c.data_kind == "raw"), None)
        for c in cells:
            ma = d.metrics[c.cell]
            if raw is not None and c.data_kind in ("compressed", "truncated_to_match"):
                ok = (d.acc(raw) or 0.0) > (d.acc(c) or 0.0)
                results.append(ok)
                if not ok:
                    fails.append(f"{_name(d, c)} >= raw{_se_gap(ma, d.metrics[raw.cell])}")
            if c.data_kind == "answer_only":
                for o in cells:
                    if o.data_kind in ("raw", "compressed", "truncated_to_match"):
                        ok = (d.acc(o) or 0.0) > (d.acc(c) or 0.0)
                        results.append(ok)
                        if not ok:
                            fails.append(f"{_name(d, c)} >= {d.label(o.data)}{_se_gap(ma, d.metrics[o.cell])}")
    f.status = _status(results)
    f.evidence.insert(0, f"{sum(results)}/{len(results)} pairwise comparisons hold.")
    f.evidence += [f"violated: {x}" for x in fails]
    return f


def finding_truncation(d: ReportData) -> Finding:
    f = Finding("d", "Length-matched truncation against the compressor it matches",
                "Model-compressed traces usually beat or match naive truncation at the same token budget, "
                "with shorter inference outputs.",
                "In more than half of the truncated cells, the matched compressor's accuracy is >= the "
                "truncated cell's minus one combined SE (beats or matches).",
                STATUS_NA)
    results = []
    for t in (c for c in d.cells if c.data_kind == "truncated_to_match"):
        m = next((c for c in d.in_config(t.config) if c.data_kind == "compressed" and c.compressor == t.compressor),
                 None)
        mt = d.metrics.get(t.cell)
        mm = d.metrics.get(m.cell) if m else None
        if m is None or mt is None or mm is None or mt.accuracy is None or mm.accuracy is None:
            continue
        se = ((mt.accuracy_se or 0) ** 2 + (mm.accuracy_se or 0) ** 2) ** 0.5
        ok = mm.accuracy >= mt.accuracy - se
        results.append(ok)
        lt, lm, unit = _reasoning_len(mt, mm)
        f.evidence.append(f"{_name(d, t)} {f_num(mt.accuracy)} vs {d.label(m.data)} {f_num(mm.accuracy)}"
                          f"{_se_gap(mm, mt)}; median reasoning {f_auto(lt)} vs {f_auto(lm)} {unit} -> "
                          f"{'beats or matches' if ok else 'truncation wins'}")
    f.status = _status(results, lambda k, n: 2 * k > n)
    f.evidence.insert(0, f"compressor beats or matches truncation in {sum(results)}/{len(results)} configurations.")
    return f


def finding_method(d: ReportData) -> Finding:
    f = Finding("e", "LoRA against full fine-tuning at this scale",
                "Full fine-tuning matches or beats LoRA in almost every configuration (Table 3); at the "
                "mini scale LoRA is expected to lose.",
                "In every (teacher, student, data) with both methods: full accuracy > LoRA accuracy.",
                STATUS_NA)
    results = []
    gaps: dict[str, list[str]] = {}
    for c in d.cells:
        if c.method_kind != "lora" or d.acc(c) is None:
            continue
        full = next((o for o in d.cells if (o.teacher, o.student, o.data) == (c.teacher, c.student, c.data)
                     and o.method_kind == "full" and d.acc(o) is not None), None)
        if full is None:
            continue
        ok = (d.acc(full) or 0.0) > (d.acc(c) or 0.0)
        results.append(ok)
        f.evidence.append(f"{_teacher(d, c.teacher)}{d.label(c.student)}/{d.label(c.data)}: full "
                          f"{f_num(d.acc(full))} vs LoRA "
                          f"{f_num(d.acc(c))}{_se_gap(d.metrics[full.cell], d.metrics[c.cell])} -> "
                          f"{'full wins' if ok else 'LoRA matches or wins'}")
    # The paper's second LoRA claim: compression narrows the raw-vs-compressed gap under LoRA at small scale.
    for raw, c in _pairs(d, "compressed"):
        if d.acc(raw) is not None and d.acc(c) is not None:
            gaps.setdefault(f"{_teacher(d, c.teacher)}{d.label(c.student)}/{d.label(c.data)}", []).append(
                f"{d.label(c.method)} {f_num((d.acc(raw) or 0.0) - (d.acc(c) or 0.0))}")
    for k, v in gaps.items():
        if len(v) > 1:
            f.evidence.append(f"raw - compressed gap, {k}: " + ", ".join(v))
    f.status = _status(results)
    f.evidence.insert(0, f"{sum(results)}/{len(results)} comparisons favour full fine-tuning.")
    return f


def findings(d: ReportData) -> list[Finding]:
    return [finding_cost(d), finding_brevity(d), finding_ordering(d), finding_truncation(d), finding_method(d)]
