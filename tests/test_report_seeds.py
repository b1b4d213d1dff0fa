"""The report's cells with several seeds: one cell per (teacher, student, method, data), its values
pooled over its seeds, the SD over seeds beside the binomial SE in Table 3, and per-seed records
paired on the same questions for comparisons pooled over seeds."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest

from compress_distill.report.build import ReportInputs, build_data, write_report
from compress_distill.report.metrics import binomial_se
from compress_distill.report.tables import table3

T = "mini-teacher"
N = 40  # questions per run
ACC = {("raw", 42): 0.80, ("raw", 1): 0.70, ("raw", 2): 0.75, ("mild", 42): 0.50, ("mild", 1): 0.55,
       ("mild", 2): 0.45, ("answer_only", 42): 0.30}  # answer_only: one seed


def run_name(data: str, seed: int) -> str:
    return f"{T}.tiny.full.{data}" + ("" if seed == 42 else f".s{seed}")


def inputs() -> ReportInputs:
    cells, metrics_rows, records, training, loss, jobs = [], [], [], [], [], []
    for (data, seed), acc in ACC.items():
        name = run_name(data, seed)
        kind = {"raw": "raw", "mild": "compressed", "answer_only": "answer_only"}[data]
        cells.append({"cell": name, "teacher": T, "student": "tiny", "method": "full", "data": data,
                      "data_kind": kind, "compressor": "mini-mild" if data == "mild" else None,
                      "method_kind": "full", "gpus": 1, "block": "main", "seed": seed})
        k = round(acc * N)
        records += [{"cell": name, "id": f"q{i}", "dataset": "add", "group": "Math", "correct": i < k,
                     "truncated": False, "completion_tokens": 10 + seed, "reasoning_chars": 40} for i in range(N)]
        training.append({"cell": name, "steps": 100, "train_seconds": 10.0 + seed, "trainable_tokens": 1000,
                         "gpus": 1, "final_loss": 0.5})
        loss += [{"cell": name, "step": s, "loss": 1.0 / s + seed / 100} for s in range(1, 11)]
        jobs.append({"stage": "train", "name": name, "cell": name, "gpus": 0, "cpus": 1, "elapsed_s": 10.0,
                     "source": "local"})
    return ReportInputs(cells=cells, eval_metrics=metrics_rows or None, eval_records=records, training=training,
                        loss_curves=loss, jobs=jobs, groups=["Math"])


def test_a_cell_pools_its_seeds() -> None:
    d = build_data(inputs())
    assert [(c.cell, c.seeds) for c in d.cells] == [
        (f"{T}.tiny.full.raw", (1, 2, 42)), (f"{T}.tiny.full.mild", (1, 2, 42)),
        (f"{T}.tiny.full.answer_only", (42,))]
    raw = d.cells[0]
    assert raw.runs == (run_name("raw", 1), run_name("raw", 2), run_name("raw", 42))
    m = d.metrics[raw.cell]
    assert m.n == 3 * N and m.accuracy == pytest.approx(0.75)  # the mean over seeds
    assert m.accuracy_se == pytest.approx(binomial_se(0.75, 3 * N))
    assert m.avg_completion_tokens == pytest.approx(10 + (42 + 1 + 2) / 3)
    assert d.run_metrics[run_name("raw", 1)].accuracy == pytest.approx(0.70)  # each seed's own, kept
    mean, sd, k = d.seed_spread(raw) or (0, 0, 0)
    assert (mean, k) == (pytest.approx(0.75), 3) and sd == pytest.approx(statistics.stdev([0.8, 0.7, 0.75]))
    assert d.seed_spread(d.cells[2]) is None  # one seed: no spread
    assert d.training[raw.cell]["train_seconds"] == pytest.approx(10 + 45 / 3) and d.training[raw.cell]["seeds"] == 3
    assert d.loss[raw.cell][0] == (1.0, pytest.approx(1.0 + 45 / 300))  # the mean curve
    assert set(d.metrics) == {c.cell for c in d.cells}  # no run name left beside its cell
    assert sum(1 for j in d.jobs if j["cell"] == raw.cell) == 3  # each seed's job counts for the cell


def test_table3_shows_the_sd_over_seeds_beside_the_se() -> None:
    t = table3(build_data(inputs()))
    row = t.rows[0]
    sd = statistics.stdev([0.8, 0.7, 0.75])
    assert row[3] == f"0.750 ± {binomial_se(0.75, 3 * N):.3f} (SD {sd:.3f}, 3 seeds)"
    assert row[5] == f"0.300 ± {binomial_se(0.3, N):.3f}"  # answer-only: one seed, no SD
    assert any("SD: the standard deviation of the seeds' accuracies" in n for n in t.notes)


def test_records_are_kept_per_seed_under_the_cell() -> None:
    """The findings' paired comparisons pool a cell's seeds: one {question id: record} per seed,
    the seed taken from the run (evaluate's records do not carry it)."""
    d = build_data(inputs())
    raw, mild, answer = d.cells
    assert len(d.records[raw.cell]) == 3 and len(d.records[answer.cell]) == 1
    assert all(len(per_seed) == N for per_seed in d.records[raw.cell])
    accs = sorted(statistics.fmean(float(r["correct"]) for r in per_seed.values()) for per_seed in d.records[raw.cell])
    assert accs == pytest.approx([0.7, 0.75, 0.8])  # the seeds' own records, none overwritten by another's
    assert not any(run in d.records for run in raw.run_names if run != raw.cell)


def test_runs_of_one_cell_need_distinct_seeds() -> None:
    bad = inputs()
    rows: list[dict[str, Any]] = [dict(r) for r in bad.cells]
    rows[1]["seed"] = 42  # raw at 1 -> 42: two rows of raw at seed 42
    with pytest.raises(ValueError, match=r"mini-teacher\.tiny\.full\.raw has 3 rows; .* distinct seeds"):
        build_data(ReportInputs(cells=rows))


def test_a_multi_seed_report_renders(tmp_path: Path) -> None:
    write_report(inputs(), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "3 seeds" in md and "nan" not in md.lower()
