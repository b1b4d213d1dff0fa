"""The paper's tables (1-11) as `TableBlock`s, filled from measured data in a `ReportData`.

Each builder returns an "not available" block when its input part is missing rather than
raising, so a partial run still gets a report.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from statistics import fmean
from typing import Any

from ..jobcost import CPU, GPU, NO_GPU, JobCost
from .cost import costs_by_stage, energy_model, ran_on, summed, train_costs
from .ledger import ledger_table
from .metrics import OVERALL
from .model import (
    NA,
    CellInfo,
    ReportData,
    TableBlock,
    f_acc_se,
    f_auto,
    f_int,
    f_num,
    f_pct,
    f_tokens,
    num,
    unavailable,
)
from .stats import CHANCE_SES, chance_mark, set_chance


def _cfg_cols(d: ReportData, cfg: tuple[str, str, str]) -> list[str]:
    return [d.label(cfg[0]), d.label(cfg[1]), d.label(cfg[2])]


def _by_student_data_method(d: ReportData) -> list[CellInfo]:
    """Paper order of Tables 7 and 9: teacher, student, data source, then method."""
    teachers = list(dict.fromkeys(c.teacher for c in d.cells))
    students = list(dict.fromkeys(c.student for c in d.cells))
    return sorted(d.cells, key=lambda c: (teachers.index(c.teacher), students.index(c.student),
                                          d.data_order.index(c.data), d.cells.index(c)))


def table1(d: ReportData) -> TableBlock:
    title = "Table 1. Evaluation datasets: group and chance level"
    if not d.datasets:
        return unavailable("table1", title, "no dataset rows")
    counts: dict[str, set[str]] = defaultdict(set)
    for seeds in d.records.values():
        for r in seeds[0].values():
            counts[str(r.get("dataset"))].add(str(r.get("id")))
    checked = d.inputs.contamination is not None
    t = TableBlock("table1", title, ["Group", "Dataset", "Source", "Answer type", "Eval questions", "Chance",
                                     "How chance is derived"] + (["Matched in training"] if checked else []))
    for r in d.datasets:
        ds = str(r["dataset"])
        n = len(counts[ds]) if ds in counts else None
        chance = num(r.get("chance"))
        t.rows.append([str(r.get("group") or NA), ds, str(r.get("source") or NA), str(r.get("answer_type") or NA),
                       f_int(n), f_num(chance) if chance is not None else "unknown",
                       str(r.get("chance_basis") or NA)] + ([f_int(r.get("eval_matched", 0))] if checked else []))
    if d.inputs.contamination is not None:
        flagged = {k: v for k, v in sorted(d.inputs.contamination.items()) if v.get("train_flagged")}
        quarantined = sum(v.get("train_quarantined", 0) for v in flagged.values())
        per = ", ".join(f"{k} {v['train_flagged']}" for k, v in flagged.items()) or "none"
        t.notes.append("Matched in training: evaluation questions the contamination check (prepare/train-pool, "
                       "exact after normalisation or a shared long n-gram; README) paired with a training question. "
                       f"Training questions flagged, by training dataset: {per}; {quarantined} quarantined "
                       "(removed before generation).")
    t.notes.append("Chance: the accuracy of a guesser who knows the answer format. A cell's chance is the "
                   "question-weighted mean over its datasets; a cell within "
                   f"{CHANCE_SES:g} SE (binomial, at the chance level) of it is marked 'at chance', more than "
                   "that below it 'below chance'. 'unknown': at chance cannot be judged for it.")
    return t


def _mark(d: ReportData, c: CellInfo | None) -> str:
    m = d.mark(c)
    return f" ({m})" if m else ""


def _group_mark(d: ReportData, c: CellInfo, group: str, acc: float | None) -> str:
    seeds = d.records.get(c.cell)
    if not seeds or not d.datasets:
        return ""
    by_ds = {str(r["dataset"]): num(r.get("chance")) for r in d.datasets}
    levels = [by_ds.get(str(r.get("dataset"))) for r in seeds[0].values() if r.get("group") == group]
    m = chance_mark(acc, set_chance(levels)) if levels else None
    return f" ({m})" if m else ""


def table3(d: ReportData) -> TableBlock:
    title = "Table 3. Overall accuracy (± binomial SE) by teacher, student, method and data source"
    if not d.metrics:
        return unavailable("table3", title, "no evaluation metrics")
    t = TableBlock("table3", title, ["Teacher", "Student", "Method", *(d.label(x) for x in d.data_order)])
    for cfg in d.configs:
        row = _cfg_cols(d, cfg)
        for data in d.data_order:
            c = d.cell_at(*cfg, data)
            m = d.metrics.get(c.cell) if c else None
            spread = d.seed_spread(c) if c else None
            row.append((f_acc_se(m.accuracy, m.accuracy_se) if m else NA)
                       + (f" (SD {f_num(spread[1])}, {spread[2]} seeds)" if spread else "") + (_mark(d, c) if m else ""))
        t.rows.append(row)
    t.notes.append(f"{NA}: cell not in the grid or not evaluated. Overall accuracy is over all records. "
                   "'at chance' / 'below chance': see Table 1.")
    if any(d.seed_spread(c) for c in d.cells):
        t.notes.append("A cell with several seeds: accuracy over the records of all its seeds (the mean over "
                       "seeds) ± the binomial SE of those records; SD: the standard deviation of the seeds' "
                       "accuracies (sample SD, k seeds).")
    return t


def table4(d: ReportData) -> TableBlock:
    title = "Table 4. Trace generation: rejection-sampling yield per dataset and round"
    if not d.yield_rows:
        return unavailable("table4", title, "no generation yield rows")
    t = TableBlock("table4", title, ["Generator", "Domain", "Dataset", "Questions", "Correct per round",
                                     "Cumulative yield per round", "Correct", "Yield", "Avg. reason (chars)",
                                     "Avg. total (tok)"])
    for r in d.yield_rows:
        per_round = " / ".join(f_int(x) for x in (r.get("correct_per_round") or [])) or NA
        cum = " / ".join(f_num(x) for x in (r.get("cumulative_yield") or [])) or NA
        t.rows.append([d.label(str(r.get("generator") or NA)), str(r.get("domain") or NA),
                       str(r.get("dataset") or NA), f_int(r.get("total")), per_round, cum, f_int(r.get("correct")),
                       f_pct(r.get("yield")), f_auto(r.get("avg_reasoning_chars")),
                       f_auto(r.get("avg_total_tokens"))])
    return t


def table2(d: ReportData) -> TableBlock:
    title = "Table 2. Compression summary per (teacher, compressor)"
    rows = [s for s in d.compression if s.dataset == OVERALL]
    if not rows:
        return unavailable("table2", title, "no compression rows")
    t = TableBlock("table2", title, ["Teacher", "Compressor", "Traces", "Mean compressed length (chars)",
                                     "Mean ρ", "Median ρ"])
    for s in rows:
        t.rows.append([d.label(s.teacher), d.label(s.compressor), f_int(s.n), f_auto(s.mean_compressed_chars),
                       f_num(s.mean_rho), f_num(s.median_rho)])
    t.notes.append("ρ = compressed chars / raw chars per trace; the mean is over traces, as in the paper.")
    return t


def table5(d: ReportData) -> TableBlock:
    title = "Table 5. Compression per dataset"
    if not d.compression:
        return unavailable("table5", title, "no compression rows")
    t = TableBlock("table5", title, ["Teacher", "Compressor", "Domain", "Dataset", "Traces", "Avg. raw (chars)",
                                     "Avg. comp. (chars)", "Comp. tok", "Mean ρ"])
    for s in d.compression:
        t.rows.append([d.label(s.teacher), d.label(s.compressor), s.domain or NA, s.dataset, f_int(s.n),
                       f_auto(s.mean_raw_chars), f_auto(s.mean_compressed_chars),
                       f_auto(s.mean_compressed_tokens), f_num(s.mean_rho)])
    t.notes.append("Lengths of the reasoning part; Comp. tok: tokens of the compressed reasoning by the "
                   "compressor's tokenizer (as the paper, a token column beside the character columns).")
    if any(s.mean_compressed_tokens is None for s in d.compression):
        t.notes.append(f"{NA} in Comp. tok: the compression artifact holds no token counts (written before the "
                       "compress stage kept them); rerun the compress step to fill it.")
    return t


def _time_unit(d: ReportData) -> tuple[str, float]:
    secs = [num(r.get("train_seconds")) for r in d.training.values()]
    top = max((s for s in secs if s is not None), default=0.0)
    if top < 600:
        return "s", 1.0
    if top < 3 * 3600:
        return "min", 60.0
    return "h", 3600.0


def table6(d: ReportData) -> TableBlock:
    title = "Table 6. Training wall-clock and trainable tokens (speed-up / token ratio vs the raw cell)"
    if not d.training:
        return unavailable("table6", title, "no training results")
    unit, div = _time_unit(d)
    cols = ["Teacher", "Student", "Method"]
    cols += [f"{d.label(x)} time ({unit})" for x in d.data_order]
    cols += [f"{d.label(x)} tokens" for x in d.data_order]
    t = TableBlock("table6", title, cols)
    for cfg in d.configs:
        times, toks = [], []
        for data in d.data_order:
            c = d.cell_at(*cfg, data)
            tr = d.training.get(c.cell) if c else None
            if c is None or tr is None:
                times.append(NA)
                toks.append(NA)
                continue
            cmp = d.comparisons[c.cell]
            secs = num(tr.get("train_seconds"))
            time_s = f_auto(None if secs is None else secs / div)
            tok_s = f_tokens(tr.get("trainable_tokens"))
            if c.data_kind != "raw":
                time_s += f" ({f_num(cmp.speedup, 1)}×)" if cmp.speedup is not None else ""
                tok_s += f" ({f_num(cmp.token_ratio, 2)})" if cmp.token_ratio is not None else ""
            times.append(time_s)
            toks.append(tok_s)
        t.rows.append(_cfg_cols(d, cfg) + times + toks)
    t.notes.append("Parentheses: speed-up = raw time / cell time; token ratio = cell tokens / raw tokens, "
                   "against the raw cell of the same teacher, student and method.")
    return t


def table6b(d: ReportData) -> TableBlock:
    title = "Table 6b. Training per cell (steps, final loss, ratios vs raw)"
    if not d.training:
        return unavailable("table6b", title, "no training results")
    t = TableBlock("table6b", title, ["Cell", "Steps", "Time (s)", "Trainable tokens", "Token ratio",
                                      "Speed-up", "Final loss"])
    for c in d.cells:
        tr = d.training.get(c.cell)
        if tr is None:
            t.rows.append([c.cell, NA, NA, NA, NA, NA, NA])
            continue
        cmp = d.comparisons[c.cell]
        t.rows.append([c.cell, f_int(tr.get("steps")), f_auto(tr.get("train_seconds")),
                       f_int(tr.get("trainable_tokens")), f_num(cmp.token_ratio, 3),
                       f_num(cmp.speedup, 2) + ("×" if cmp.speedup is not None else ""),
                       f_num(tr.get("final_loss"), 4)])
    return t


def table7(d: ReportData) -> TableBlock:
    title = "Table 7. Accuracy per evaluation group (± binomial SE) and overall"
    if not d.metrics:
        return unavailable("table7", title, "no evaluation metrics")
    t = TableBlock("table7", title, ["Teacher", "Student", "Data", "Method", *d.groups, "Overall", "N"])
    for c in _by_student_data_method(d):
        m = d.metrics.get(c.cell)
        row = [d.label(c.teacher), d.label(c.student), d.label(c.data), d.label(c.method)]
        if m is None:
            t.rows.append(row + [NA] * (len(d.groups) + 2))
            continue
        for g in d.groups:
            ga = m.group(g)
            row.append(f_acc_se(ga.accuracy, ga.se) + _group_mark(d, c, g, ga.accuracy) if ga and ga.n else NA)
        t.rows.append(row + [f_acc_se(m.accuracy, m.accuracy_se) + _mark(d, c), f_int(m.n)])
    t.notes.append(f"{NA} in a group column: no records in that group (empty group), not zero accuracy. "
                   "'at chance' / 'below chance': see Table 1.")
    return t


def table8(d: ReportData) -> TableBlock:
    title = "Table 8. Length-matched truncation ablation against the model-compressed sources"
    trunc = [c for c in d.cells if c.data_kind == "truncated_to_match"]
    if not trunc or not d.metrics:
        return unavailable("table8", title, "no truncated cells evaluated")
    comp = [x for x in d.data_order if d.kind_of(x) == "compressed"]
    t = TableBlock("table8", title, ["Teacher", "Student", "Method", "Trunc.", *(d.label(x) for x in comp),
                                     "Matched compressor", "Δ matched − trunc. (SE)",
                                     "Median reasoning: trunc. / matched"])
    for c in trunc:
        mt = d.metrics.get(c.cell)
        row = _cfg_cols(d, c.config) + [f_acc_se(mt.accuracy, mt.accuracy_se) if mt else NA]
        matched = None
        for x in comp:
            cc = d.cell_at(*c.config, x)
            m = d.metrics.get(cc.cell) if cc else None
            row.append(f_acc_se(m.accuracy, m.accuracy_se) if m else NA)
            if cc is not None and cc.compressor == c.compressor:
                matched = cc
        mm = d.metrics.get(matched.cell) if matched else None
        row.append(d.label(matched.data) if matched else NA)
        if mt and mm and mt.accuracy is not None and mm.accuracy is not None:
            se = ((mt.accuracy_se or 0) ** 2 + (mm.accuracy_se or 0) ** 2) ** 0.5
            delta = mm.accuracy - mt.accuracy
            row.append(f"{delta:+.3f}" + (f" ({delta / se:+.1f} SE)" if se > 0 else ""))
            row.append(f"{_median_reasoning(mt)} / {_median_reasoning(mm)}")
        else:
            row += [NA, NA]
        t.rows.append(row)
    t.notes.append("Truncated: raw traces cut to the per-example token length of the matched compressor's "
                   "traces. Median reasoning in tokens when measured, else characters.")
    return t


def _median_reasoning(m: Any) -> str:
    if m.median_reasoning_tokens is not None:
        return f"{f_auto(m.median_reasoning_tokens)} tok"
    return f"{f_auto(m.median_reasoning_chars)} chars"


def table9(d: ReportData) -> TableBlock:
    title = "Table 9. Inference-time efficiency"
    if not d.metrics:
        return unavailable("table9", title, "no evaluation metrics")
    t = TableBlock("table9", title, ["Teacher", "Student", "Data", "Method", "Avg. compl. tokens (all)",
                                     "Avg. compl. tokens (excl. trunc.)", "Trunc. rate",
                                     "Med. reason chars", "Med. reason tokens", "Acc / 1k tokens"])
    for c in _by_student_data_method(d):
        m = d.metrics.get(c.cell)
        row = [d.label(c.teacher), d.label(c.student), d.label(c.data), d.label(c.method)]
        if m is None:
            t.rows.append(row + [NA] * 6)
            continue
        t.rows.append(row + [f_auto(m.avg_completion_tokens), f_auto(m.avg_completion_tokens_excl_truncated),
                             f_num(m.truncation_rate), f_auto(m.median_reasoning_chars),
                             f_auto(m.median_reasoning_tokens), f_num(m.acc_per_1k_tokens, 4)])
    t.notes.append("Acc / 1k tokens = overall accuracy / (avg. completion tokens (all) / 1000). "
                   f"{NA}: undefined (no records, no non-truncated record, or zero tokens).")
    return t


def table10(d: ReportData) -> TableBlock:
    title = "Table 10. Judge: faithfulness of compressed traces"
    if not d.judge_rows:
        return unavailable("table10", title, "the judge stage was not run")
    t = TableBlock("table10", title, ["Compressor", "Domain", "Dataset", "N", "Mean faithfulness",
                                      "% faithful", "% answer-aligned", "Parse failures"])
    by: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in d.judge_rows:
        by[str(r["compressor"])][str(r["dataset"])].append(r)
    for comp in by:  # first-appearance order, like Table 5
        everything: list[dict[str, Any]] = []
        for ds in by[comp]:
            rs = by[comp][ds]
            everything += rs
            t.rows.append(_judge_row(d, comp, rs, ds))
        t.rows.append(_judge_row(d, comp, everything, OVERALL))
    t.notes.append("A parse failure (no faithfulness score) counts in N but not in the means or percentages.")
    return t


def _judge_row(d: ReportData, comp: str, rs: list[dict[str, Any]], dataset: str) -> list[str]:
    ok = [r for r in rs if num(r.get("faithfulness")) is not None]
    domains = {str(r["domain"]) for r in rs if r.get("domain")}
    faith = fmean(float(r["faithfulness"]) for r in ok) if ok else None

    def pct(pred: Callable[[dict[str, Any]], bool]) -> str:
        return f_pct(sum(1 for r in ok if pred(r)) / len(ok)) if ok else NA

    return [d.label(comp), domains.pop() if len(domains) == 1 else NA, dataset, f_int(len(rs)), f_num(faith, 2),
            pct(lambda r: r.get("verdict") == "faithful"), pct(lambda r: bool(r.get("answer_alignment"))),
            f_int(len(rs) - len(ok))]


def _cost_cell(costs: list[JobCost], gpu: bool) -> str:
    """A GPU-h (gpu=True) or CPU core-h cell: the number in the jobs' own unit, "n/a: no GPU" for
    CPU jobs in the GPU column, "—" where the other unit applies or nothing was measured."""
    kind = costs[-1].resource
    if gpu and kind == CPU:
        return NO_GPU
    if (kind == GPU) != gpu:
        return NA
    return f_auto(summed([c.gpu_hours if gpu else c.cpu_core_hours for c in costs]))


def _unmeasured_note(costs: list[JobCost]) -> list[str]:
    why = sorted({c.unmeasured for c in costs if c.unmeasured})
    return [f"{NA}: not measured: {w}." for w in why]


def _totals_notes(d: ReportData) -> list[str]:
    """Totals per resource, train vs other stages; energy and CO2 over GPU jobs only (paper H.5)."""
    by_stage = costs_by_stage(d)
    train = by_stage.get("train", [])
    other = [c for s, cs in by_stage.items() if s != "train" for c in cs]
    everything = train + other
    gpu_h = summed([c.gpu_hours for c in everything])
    core_h = summed([c.cpu_core_hours for c in everything])
    notes = []
    if gpu_h is not None:
        notes.append(f"GPU-h: training {f_auto(summed([c.gpu_hours for c in train]))}, other stages "
                     f"{f_auto(summed([c.gpu_hours for c in other]))}, total {f_auto(gpu_h)}.")
        em = energy_model(d)
        notes.append(f"Energy at {em.tdp_w:g} W x PUE {em.pue:g} (GPU jobs only): {f_auto(em.kwh(gpu_h))} kWh; "
                     f"CO2 at {em.gco2_per_kwh:g} g/kWh: {f_auto(em.co2_kg(gpu_h))} kg CO2eq.")
    if core_h is not None:
        notes.append(f"CPU core-h (jobs without GPUs): training {f_auto(summed([c.cpu_core_hours for c in train]))}, "
                     f"other stages {f_auto(summed([c.cpu_core_hours for c in other]))}, total {f_auto(core_h)}.")
    if any(c.resource == CPU for c in everything):
        notes.append(f"{NO_GPU}: the job ran on CPUs only; its cost is CPU core-hours (allocated cores x run "
                     "time). GPU-hours, energy and CO2 (the paper's per-GPU rule) are reported for GPU jobs only"
                     + ("; this run had none." if gpu_h is None else "."))
    return notes


def table11(d: ReportData) -> TableBlock:
    title = "Table 11. Compute per student run (measured)"
    if not d.jobs and not d.training:
        return unavailable("table11", title, "no job accounting and no training results")
    t = TableBlock("table11", title, ["Teacher", "Student", "Method", "Data", "Ran on", "Time (h)", "GPU-h",
                                      "CPU core-h", "Trainable tokens", "Clock"])
    by_cell = train_costs(d)
    seen: list[JobCost] = []
    for c in d.cells:
        tr = d.training.get(c.cell, {})
        costs = by_cell.get(c.cell)
        head = [d.label(c.teacher), d.label(c.student), d.label(c.method), d.label(c.data)]
        tokens = f_tokens(tr.get("trainable_tokens"))
        if costs:  # retried/requeued attempts all held their resources, so they add up
            seen += costs
            t.rows.append(head + [ran_on(costs), f_auto(summed([x.hours for x in costs])), _cost_cell(costs, True),
                                  _cost_cell(costs, False), tokens,
                                  ", ".join(dict.fromkeys(x.clock for x in costs))])
        else:  # no job accounting: the optimizer loop's time; what it ran on is unknown
            secs = num(tr.get("train_seconds"))
            t.rows.append(head + [NA, f_auto(None if secs is None else secs / 3600), NA, NA, tokens,
                                  "optimizer loop (training log)" if tr else NA])
    t.notes.append("Time: the train job's own run, from its start to its end (Slurm: sacct ElapsedRaw; local "
                   "backend: the job process's start to its exit), never its wait in a queue. It includes model "
                   "loading and saving, so it is longer than Table 6's optimizer-loop time.")
    if any(not by_cell.get(c.cell) for c in d.cells if c.cell in d.training):
        t.notes.append(f"Rows without a job record: time from the training log (optimizer loop); GPU-h and CPU "
                       f"core-h are {NA} because what the run used was not recorded.")
    t.notes += _unmeasured_note(seen)
    t.notes += _totals_notes(d)
    if any(len(c.run_names) > 1 for c in d.cells):
        t.notes.append("A cell with several seeds: its jobs' times add up over its seeds; from training logs, "
                       "the mean over seeds.")
    return t


def table11b(d: ReportData) -> TableBlock:
    title = "Table 11b. Compute per stage (measured jobs)"
    if not d.jobs:
        return unavailable("table11b", title, "no job accounting")
    t = TableBlock("table11b", title, ["Stage", "Jobs", "Ran on", "Time (h)", "GPU-h", "CPU core-h",
                                       "Energy (kWh)", "CO2 (kg)"])
    em = energy_model(d)
    everything: list[JobCost] = []
    for stage, cs in costs_by_stage(d).items():
        everything += cs
        gpu_h = summed([c.gpu_hours for c in cs])
        kinds = sorted({ran_on([c]) for c in cs})
        no_gpu = all(c.resource == CPU for c in cs)
        t.rows.append([stage, f_int(len(cs)), ", ".join(kinds), f_auto(summed([c.hours for c in cs])),
                       NO_GPU if no_gpu else f_auto(gpu_h), f_auto(summed([c.cpu_core_hours for c in cs])),
                       NO_GPU if no_gpu else f_auto(None if gpu_h is None else em.kwh(gpu_h)),
                       NO_GPU if no_gpu else f_auto(None if gpu_h is None else em.co2_kg(gpu_h))])
    t.notes.append("Time: each job's own run time (start to end), summed over the stage's jobs; jobs that ran "
                   "at the same time each count their own time.")
    t.notes += _unmeasured_note(everything)
    return t


ALL_TABLES: list[Callable[[ReportData], TableBlock]] = [
    table1, table3, table4, table2, table5, table6, table6b, table7, table8, table9, table10, table11, table11b,
    ledger_table,
]
