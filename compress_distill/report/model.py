"""What the report is made of: `ReportInputs` (the contract with the pipeline), its normalised
view `ReportData`, and the formatting helpers shared by tables, findings and figures.

Every input part is a pyarrow Table or a list of dicts; only `cells` is required. A part
that is missing (None/empty) makes its table say "not available" instead of failing.

Expected columns (optional ones in brackets):

- cells: cell, teacher, student, method, data, [data_kind], [compressor], [method_kind], [gpus],
  [block], [seed], [teacher_label], [student_label], [method_label], [data_label].
  `cell` is `Cell.name` ("teacher.student.method.data", ".s<seed>" added for a seed other than
  training.seed): one row per run. Rows of one (teacher, student, method, data) at distinct
  seeds are one cell of `ReportData.cells`, named "teacher.student.method.data", whose metrics,
  training row and loss curve pool its seeds (`pool_metrics`; means over seeds); the per-seed
  values stay in `run_metrics` and `records`. data_kind is the config's kind
  (raw | compressed | answer_only | truncated_to_match | prefix_fraction), inferred from the
  data name when absent. compressor: the config compressor of a compressed or
  truncated_to_match source (truncation is compared with the compressor it matches).
  method_kind: lora | full, inferred from the method name when absent.
- eval_metrics: cell + `metrics.EvalMetrics.to_row()` columns (n, correct, accuracy,
  accuracy_se, avg_completion_tokens, avg_completion_tokens_excl_truncated, truncation_rate,
  median_reasoning_chars, median_reasoning_tokens, acc_per_1k_tokens, acc:<group>,
  se:<group>, n:<group>).
- eval_records: cell, id, dataset, group, correct, truncated, completion_tokens,
  reasoning_chars, [reasoning_tokens], [failed], [seed]. Metrics come from them for cells that have
  no eval_metrics row; the findings' paired comparisons always need them (`ReportData.records`:
  per cell, one {question id: record} per seed, pooled over seeds; no seed column: one seed).
- datasets: Table 1, one row per evaluated dataset: dataset, group, [source], [answer_type],
  chance (None: unknown), chance_basis (how it was derived, or why it is unknown).
- training: cell, steps, train_seconds, trainable_tokens, [gpus], [final_loss].
- loss_curves: cell, step, loss, [split] (rows with split other than "train" are ignored).
- generation_yield: the rows of `generation.yield_table.yield_table` (generator, domain, dataset,
  total, correct, correct_per_round: list[int], cumulative_yield: list[float], yield,
  avg_reasoning_chars, avg_total_tokens); a "Total" dataset row is kept as the total.
- compression: one row per compressed trace: teacher, compressor, dataset, raw_chars,
  compressed_chars, [domain], [compressed_tokens], [usable] (COMPRESSED_SCHEMA rows of
  `compression.assemble` fit as they are; usable == False rows are left out).
- judge: one row per judged trace (`judge.verdict_row` rows fit): compressor, dataset, [teacher],
  [domain], faithfulness (1-5, None on a parse failure), verdict (faithful | partially_faithful |
  unfaithful), answer_alignment (bool).
- jobs: measured accounting, one row per job attempt (`accounting.JobUsage` plus the plan's
  stage and cell): stage, name, elapsed_s, gpus, [cell] (train jobs), [cpus], [job_id],
  [source] ("sacct" | "local"), [feeds] (generate and compress jobs: the cells, or their seeds'
  runs, trained downstream of the job; the cost ledger splits the job over them, ledger.py).
  GPU-hours = elapsed_s / 3600 x gpus.

Scalars: groups (the config's evaluation group order), labels (config name -> display label
for teachers, compressors, students, methods, data sources), title, run_info (shown as a
key/value list), and the energy model of paper H.5: tdp_watts=700, pue=1.15,
grid_g_co2_per_kwh=79 (configurable).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .metrics import (
    CompressionStats,
    EvalMetrics,
    GroupAccuracy,
    RawComparison,
    acc_per_1k_tokens,
    binomial_se,
    compression_stats,
    eval_metrics,
    ratios_vs_raw,
)
from .stats import SetChance, chance_mark, set_chance

Rows = Sequence[Mapping[str, Any]] | Any  # list of dicts or a pyarrow.Table
NA = "—"
NOT_AVAILABLE = "not available"
DATA_KIND_RANK = {"raw": 0, "compressed": 1, "truncated_to_match": 2, "prefix_fraction": 3, "answer_only": 4}
STATUS_OK, STATUS_NO, STATUS_NA = "REPRODUCED", "NOT REPRODUCED", "NOT TESTABLE"
STATUS_INC = "INCONCLUSIVE"  # testable, but the CIs decide neither way


@dataclass
class ReportInputs:
    cells: Rows
    eval_metrics: Rows = None
    eval_records: Rows = None
    datasets: Rows = None
    # the train pool's contamination check, per training dataset: train_flagged, train_quarantined
    contamination: dict[str, dict[str, int]] | None = None
    training: Rows = None
    loss_curves: Rows = None
    generation_yield: Rows = None
    compression: Rows = None
    judge: Rows = None
    jobs: Rows = None
    groups: Sequence[str] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    title: str = "Compress-Distill reproduction report"
    run_info: Mapping[str, Any] = field(default_factory=dict)
    tdp_watts: float = 700.0
    pue: float = 1.15
    grid_g_co2_per_kwh: float = 79.0


def rows_of(part: Rows) -> list[dict[str, Any]]:
    """A part as a list of dicts (pyarrow Tables and pandas frames converted; None -> [])."""
    if part is None:
        return []
    if hasattr(part, "to_pylist"):
        return list(part.to_pylist())
    if hasattr(part, "to_dict") and hasattr(part, "columns"):  # pandas DataFrame
        return list(part.to_dict("records"))
    return [dict(r) for r in part]


def num(x: Any) -> float | None:
    """A finite float or None (NaN from pandas/Parquet counts as missing)."""
    if x is None or isinstance(x, str):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass(frozen=True)
class CellInfo:
    cell: str
    teacher: str
    student: str
    method: str
    data: str
    data_kind: str
    compressor: str | None
    method_kind: str
    gpus: int | None
    block: str | None
    # The cell's runs, one per training seed, in seed order: their seeds (empty when the rows gave
    # none) and their names (the `cell` of their input rows; `cell` itself for a single run).
    seeds: tuple[int, ...] = ()
    runs: tuple[str, ...] = ()

    @property
    def config(self) -> tuple[str, str, str]:
        return (self.teacher, self.student, self.method)

    @property
    def run_names(self) -> tuple[str, ...]:
        return self.runs or (self.cell,)


def _infer_kind(data: str) -> str:
    d = data.lower()
    if d == "raw":
        return "raw"
    if "answer" in d:
        return "answer_only"
    if d.startswith("trunc"):
        return "truncated_to_match"
    return "compressed"


@dataclass
class ReportData:
    """ReportInputs normalised: ordered cells, metrics per cell, lookups. Built by `build_data`."""

    inputs: ReportInputs
    cells: list[CellInfo]
    labels: dict[str, str]
    metrics: dict[str, EvalMetrics]
    training: dict[str, dict[str, Any]]
    comparisons: dict[str, RawComparison]
    loss: dict[str, list[tuple[float, float]]]
    groups: list[str]
    data_order: list[str]
    configs: list[tuple[str, str, str]]
    yield_rows: list[dict[str, Any]]
    compression_rows: list[dict[str, Any]]
    compression: list[CompressionStats]
    judge_rows: list[dict[str, Any]]
    jobs: list[dict[str, Any]]
    run_metrics: dict[str, EvalMetrics] = field(default_factory=dict)  # per run (seed), by run name
    datasets: list[dict[str, Any]] = field(default_factory=list)
    # cell -> one {question id: record} per seed (sorted by seed); the findings' paired comparisons
    records: dict[str, list[dict[str, dict[str, Any]]]] = field(default_factory=dict)
    chance: dict[str, SetChance] = field(default_factory=dict)

    def label(self, name: str | None) -> str:
        return NA if name is None else self.labels.get(name, name)

    def cell_at(self, teacher: str, student: str, method: str, data: str) -> CellInfo | None:
        return next((c for c in self.cells if c.config == (teacher, student, method) and c.data == data), None)

    def in_config(self, config: tuple[str, str, str]) -> list[CellInfo]:
        return [c for c in self.cells if c.config == config]

    def acc(self, c: CellInfo | None) -> float | None:
        m = self.metrics.get(c.cell) if c else None
        return m.accuracy if m else None

    def mark(self, c: CellInfo | None) -> str | None:
        """"at chance" / "below chance" / None for a cell's overall accuracy (stats.chance_mark)."""
        if c is None or c.cell not in self.chance:
            return None
        return chance_mark(self.acc(c), self.chance[c.cell])

    def kind_of(self, data: str) -> str:
        return next((c.data_kind for c in self.cells if c.data == data), _infer_kind(data))

    def seed_accuracies(self, c: CellInfo) -> list[float]:
        """The accuracy of each evaluated run (seed) of a cell, in seed order."""
        ms = (self.run_metrics.get(r) for r in c.run_names)
        return [m.accuracy for m in ms if m is not None and m.accuracy is not None]

    def seed_spread(self, c: CellInfo) -> tuple[float, float, int] | None:
        """(mean, sample SD, k) of the accuracies of a cell's k >= 2 evaluated seeds; None below 2."""
        accs = self.seed_accuracies(c)
        if len(accs) < 2:
            return None
        return statistics.fmean(accs), statistics.stdev(accs), len(accs)


def _order(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def pool_metrics(runs: Sequence[EvalMetrics]) -> EvalMetrics:
    """One cell's metrics over its seeds' evaluations: counts and accuracies pooled over every
    record (so the accuracy is the mean over seeds that saw the same questions, and its SE is the
    binomial SE of the pooled records), token means weighted by answered records, and medians the
    mean of the seeds' medians (a median of the pooled records needs the records)."""
    if len(runs) == 1:
        return runs[0]
    n, correct, failed = sum(m.n for m in runs), sum(m.correct for m in runs), sum(m.failed for m in runs)
    acc = correct / n if n else None
    groups = []
    for name in dict.fromkeys(g.group for m in runs for g in m.groups):
        gs = [g for m in runs if (g := m.group(name)) is not None]
        gn, gc = sum(g.n for g in gs), sum(g.correct for g in gs)
        gp = gc / gn if gn else None
        groups.append(GroupAccuracy(name, gn, gc, gp, binomial_se(gp, gn)))

    def mean(values: list[tuple[float | None, float]]) -> float | None:
        kept = [(v, w) for v, w in values if v is not None and w > 0]
        total = sum(w for _, w in kept)
        return sum(v * w for v, w in kept) / total if total else None

    answered = [(m, float(m.n - m.failed)) for m in runs]
    avg = mean([(m.avg_completion_tokens, w) for m, w in answered])
    return EvalMetrics(
        n=n, correct=correct, accuracy=acc, accuracy_se=binomial_se(acc, n), groups=tuple(groups),
        avg_completion_tokens=avg,
        avg_completion_tokens_excl_truncated=mean([(m.avg_completion_tokens_excl_truncated,
                                                    w * (1 - (m.truncation_rate or 0.0))) for m, w in answered]),
        truncation_rate=mean([(m.truncation_rate, w) for m, w in answered]),
        median_reasoning_chars=mean([(m.median_reasoning_chars, 1.0) for m in runs]),
        median_reasoning_tokens=mean([(m.median_reasoning_tokens, 1.0) for m in runs]),
        acc_per_1k_tokens=acc_per_1k_tokens(acc, avg), failed=failed,
    )


def _seed_groups(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Cell rows grouped by (teacher, student, method, data), in first-seen order, each group in
    seed order. Two rows of one cell must be distinct seeds of it."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(str(r[a]) for a in ("teacher", "student", "method", "data")), []).append(r)
    for key, rs in groups.items():
        seeds = [r.get("seed") for r in rs]
        if len(rs) > 1 and (None in seeds or len(set(seeds)) < len(rs)):
            raise ValueError(f"cells: {'.'.join(key)} has {len(rs)} rows; several runs of one cell need "
                             f"distinct seeds, got {seeds}")
        rs.sort(key=lambda r: int(r.get("seed") or 0))
    return list(groups.values())


def _mean_row(rows: list[dict[str, Any]], cell: str) -> dict[str, Any]:
    """The seeds' training rows as one: numbers averaged over the seeds that have them."""
    out: dict[str, Any] = {}
    for r in rows:
        for k, v in r.items():
            out.setdefault(k, v)
    for k in out:
        vals = [v for r in rows if (v := num(r.get(k))) is not None and not isinstance(r.get(k), bool)]
        if vals:
            out[k] = statistics.fmean(vals)
    return {**out, "cell": cell, "seeds": len(rows)}


def _mean_curve(curves: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """The mean loss at the steps every seed logged."""
    common = set.intersection(*(set(dict(c)) for c in curves))
    per = [dict(c) for c in curves]
    return [(step, statistics.fmean(p[step] for p in per)) for step in sorted(common)]


def build_data(inputs: ReportInputs) -> ReportData:
    labels: dict[str, str] = dict(inputs.labels)
    cells: list[CellInfo] = []
    for rs in _seed_groups(rows_of(inputs.cells)):
        r = rs[0]
        data = str(r["data"])
        method = str(r["method"])
        for axis in ("teacher", "student", "method", "data"):
            if r.get(f"{axis}_label"):
                labels.setdefault(str(r[axis]), str(r[f"{axis}_label"]))
        gpus = num(r.get("gpus"))
        base = f"{r['teacher']}.{r['student']}.{method}.{data}"
        runs = tuple(str(x.get("cell") or base) for x in rs)
        cells.append(CellInfo(
            cell=runs[0] if len(runs) == 1 else base,
            teacher=str(r["teacher"]), student=str(r["student"]), method=method, data=data,
            data_kind=str(r.get("data_kind") or _infer_kind(data)),
            compressor=str(r["compressor"]) if r.get("compressor") else None,
            method_kind=str(r.get("method_kind") or ("lora" if "lora" in method.lower() else "full")),
            gpus=None if gpus is None else int(gpus), block=str(r["block"]) if r.get("block") else None,
            seeds=tuple(int(x["seed"]) for x in rs if x.get("seed") is not None), runs=runs,
        ))
    teachers = _order([c.teacher for c in cells])
    students = _order([c.student for c in cells])
    # Paper order: LoRA before Full within a student; data by kind (raw, compressed, truncated, answer-only).
    methods = sorted(_order([c.method for c in cells]),
                     key=lambda m: 0 if next(c for c in cells if c.method == m).method_kind == "lora" else 1)
    first = {d: i for i, d in enumerate(_order([c.data for c in cells]))}
    data_order = sorted(first, key=lambda d: (DATA_KIND_RANK.get(next(c.data_kind for c in cells if c.data == d), 9),
                                              first[d]))
    cells.sort(key=lambda c: (teachers.index(c.teacher), students.index(c.student), methods.index(c.method),
                              data_order.index(c.data)))
    configs = list(dict.fromkeys(c.config for c in cells))

    run_metrics: dict[str, EvalMetrics] = {}
    for r in rows_of(inputs.eval_metrics):
        run_metrics[str(r["cell"])] = EvalMetrics.from_row(r)
    by_cell: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows_of(inputs.eval_records):
        by_cell[str(r["cell"])].append(r)
    groups = list(dict.fromkeys(inputs.groups))
    for cell, recs in by_cell.items():
        if cell not in run_metrics:
            run_metrics[cell] = eval_metrics(recs, groups)
    for m in run_metrics.values():
        groups.extend(g.group for g in m.groups if g.group not in groups)
    # A cell of several seeds: its values pool its runs'; a single run's are its own.
    multi = [c for c in cells if len(c.run_names) > 1]
    metrics = dict(run_metrics)
    run_rows = {str(r["cell"]): r for r in rows_of(inputs.training)}
    training = dict(run_rows)
    for c in multi:
        ms = [run_metrics[run] for run in c.run_names if run in run_metrics]
        for run in c.run_names:
            metrics.pop(run, None)
            training.pop(run, None)
        if ms:
            metrics[c.cell] = pool_metrics(ms)
        trs = [run_rows[run] for run in c.run_names if run in run_rows]
        if trs:
            training[c.cell] = _mean_row(trs, c.cell)
    run_to_cell = {r: c.cell for c in multi for r in c.run_names}
    cell_by_name = {c.cell: c for c in cells}
    kinds = {c.cell: c.data_kind for c in cells}
    cost_rows = [{"teacher": c.teacher, "student": c.student, "method": c.method, "data": c.data,
                  "data_kind": kinds[c.cell], "train_seconds": training.get(c.cell, {}).get("train_seconds"),
                  "trainable_tokens": training.get(c.cell, {}).get("trainable_tokens")} for c in cells]
    comparisons = {c.cell: cmp for c, cmp in zip(cells, ratios_vs_raw(cost_rows), strict=True)}

    run_loss: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows_of(inputs.loss_curves):
        step, value = num(r.get("step")), num(r.get("loss"))
        name = str(r["cell"])
        if str(r.get("split") or "train") == "train" and step is not None and value is not None \
                and (name in cell_by_name or name in run_to_cell):
            run_loss[name].append((step, value))
    for pts in run_loss.values():
        pts.sort()
    loss = {name: pts for name, pts in run_loss.items() if name not in run_to_cell}
    for c in multi:
        curves = [run_loss[r] for r in c.run_names if run_loss.get(r)]
        loss.pop(c.cell, None)
        if curves:
            loss[c.cell] = _mean_curve(curves)
    # a job of one seed's run counts for its cell (Table 11 adds a cell's jobs up: over its seeds)
    jobs = [{**j, "cell": run_to_cell.get(str(j.get("cell")), j.get("cell"))} for j in rows_of(inputs.jobs)]

    compression_rows = rows_of(inputs.compression)
    datasets = rows_of(inputs.datasets)
    # A seed's run counts for its cell: one {question id: record} per seed under the cell's name.
    # The seed is the run's (evaluate's records do not carry it); a row's own `seed` wins.
    run_seed = {r: s for c in cells if len(c.seeds) == len(c.run_names)
                for r, s in zip(c.run_names, c.seeds, strict=True)}
    records = records_by_seed([{"seed": run_seed.get(str(r["cell"])), **r,
                                "cell": run_to_cell.get(str(r["cell"]), r["cell"])}
                               for r in rows_of(inputs.eval_records)])
    return ReportData(
        inputs=inputs, cells=cells, labels=labels, metrics=metrics, training=training,
        comparisons=comparisons, loss=loss, groups=groups, data_order=data_order, configs=configs,
        yield_rows=rows_of(inputs.generation_yield), compression_rows=compression_rows,
        compression=compression_stats(compression_rows), judge_rows=rows_of(inputs.judge),
        jobs=jobs, run_metrics=run_metrics, datasets=datasets, records=records,
        chance=cell_chance(datasets, records, metrics),
    )


def records_by_seed(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, dict[str, Any]]]]:
    """cell -> [{question id: record} per seed, by seed]; a failed request counts as wrong."""
    by: dict[str, dict[int, dict[str, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        seed = int(num(r.get("seed")) or 0)
        rec = dict(r)
        rec["correct"] = bool(r.get("correct")) and not r.get("failed")
        rec["completion_tokens"] = num(r.get("completion_tokens")) or 0.0
        by[str(r["cell"])][seed][str(r["id"])] = rec
    return {cell: [seeds[s] for s in sorted(seeds)] for cell, seeds in by.items()}


def cell_chance(datasets: list[dict[str, Any]], records: dict[str, list[dict[str, dict[str, Any]]]],
                metrics: dict[str, EvalMetrics]) -> dict[str, SetChance]:
    """Chance of each cell's evaluation set: per question from its dataset when records exist,
    else per group from the metrics' group counts (known only when the group's datasets agree)."""
    by_ds = {str(r["dataset"]): num(r.get("chance")) for r in datasets}
    by_group: dict[str, set[float | None]] = defaultdict(set)
    for r in datasets:
        by_group[str(r.get("group"))].add(num(r.get("chance")))
    out: dict[str, SetChance] = {}
    for cell in set(records) | set(metrics):
        if cell in records:
            first = records[cell][0]
            out[cell] = set_chance([by_ds.get(str(r.get("dataset"))) for r in first.values()])
            continue
        levels: list[float | None] = []
        for g in metrics[cell].groups:
            cs = by_group.get(g.group, {None})
            levels += [next(iter(cs)) if len(cs) == 1 else None] * g.n
        out[cell] = set_chance(levels)
    return out


# ---------------------------------------------------------------- formatting (never "nan")

def f_num(x: Any, digits: int = 3) -> str:
    v = num(x)
    return NA if v is None else f"{v:.{digits}f}"


def f_int(x: Any) -> str:
    v = num(x)
    return NA if v is None else f"{v:,.0f}"


def f_auto(x: Any) -> str:
    """Magnitude-aware: 1,234 / 12.3 / 1.25 / 0.0417 (mini-world hours are tiny, paper hours are not)."""
    v = num(x)
    if v is None:
        return NA
    if v == int(v) or abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def f_pct(x: Any, digits: int = 1) -> str:
    v = num(x)
    return NA if v is None else f"{100 * v:.{digits}f}%"


def f_acc_se(acc: Any, se: Any) -> str:
    if num(acc) is None:
        return NA
    return f"{f_num(acc)} ± {f_num(se)}" if num(se) is not None else f_num(acc)


def f_tokens(x: Any) -> str:
    v = num(x)
    if v is None:
        return NA
    if v >= 1e6:
        return f"{v / 1e6:,.1f}M"
    if v >= 1e4:
        return f"{v / 1e3:,.0f}k"
    return f"{v:,.0f}"


@dataclass
class TableBlock:
    """A rendered-agnostic table: already formatted strings, plus notes or the reason it is missing."""

    key: str
    title: str
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missing: str | None = None  # set -> the table is "not available" for this reason


def unavailable(key: str, title: str, why: str) -> TableBlock:
    return TableBlock(key, title, missing=f"{NOT_AVAILABLE}: {why}")


@dataclass
class Finding:
    key: str
    title: str
    paper: str  # the paper's directional claim
    rule: str  # how REPRODUCED is decided from the data
    status: str  # STATUS_OK | STATUS_NO | STATUS_INC | STATUS_NA
    evidence: list[str] = field(default_factory=list)
    why_na: str = ""  # one line: why NOT TESTABLE (for the report's headline)
    tested: int = 0  # comparisons testable / in all (paired findings; 0/0 for the others)
    compared: int = 0
