"""The report's mechanics on a synthetic but realistic mini grid: every cell in every table, no NaN,
valid PNG figures, and findings whose statuses follow from the data (raw wins vs raw loses)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pyarrow as pa
import pytest

from compress_distill.report.build import ReportInputs, build_data, write_report
from compress_distill.report.findings import findings
from compress_distill.report.model import STATUS_INC, STATUS_NA, STATUS_NO, STATUS_OK

TEACHER = "mini-teacher"
GROUPS = ["Math", "Science", "Commonsense", "Medicine"]  # Medicine: an empty group in the mini world
DATASETS = {"add": ("Math", "math"), "cmp": ("Science", "science"), "par": ("Commonsense", "commonsense")}
SOURCES = {  # data -> (kind, compressor, training tokens per example, inference completion tokens)
    "raw": ("raw", None, 110, 105),
    "mild": ("compressed", "mini-mild", 55, 50),
    "aggressive": ("compressed", "mini-aggressive", 35, 30),
    "answer_only": ("answer_only", None, 4, 4),
    "truncated": ("truncated_to_match", "mini-aggressive", 35, 45),
}
LABELS = {"mini-teacher": "Mini teacher", "mini-mild": "Mild comp.", "mini-aggressive": "Aggressive comp.",
          "tiny": "Tiny", "small": "Small", "full": "Full", "lora": "LoRA", "raw": "Raw traces",
          "mild": "Mild comp.", "aggressive": "Aggressive comp.", "answer_only": "Answer-Only",
          "truncated": "Truncated"}
CHANCE = {"add": 0.1, "cmp": 0.5, "par": 0.5}
RAW_WINS = {"raw": 0.80, "mild": 0.72, "aggressive": 0.66, "truncated": 0.58, "answer_only": 0.40}
RAW_LOSES = {**RAW_WINS, "aggressive": 0.86}


def grid() -> list[tuple[str, str, str]]:
    cells = [(s, "full", d) for s in ("tiny", "small") for d in SOURCES]
    return cells + [("tiny", "lora", "raw"), ("tiny", "lora", "aggressive")]


def cell_name(student: str, method: str, data: str) -> str:
    return f"{TEACHER}.{student}.{method}.{data}"


def accuracy_of(student: str, method: str, data: str, base: dict[str, float]) -> float:
    return base[data] + (0.05 if student == "small" else 0.0) - (0.08 if method == "lora" else 0.0)


def make_inputs(base: dict[str, float], n_per_group: int = 60) -> ReportInputs:
    rng = random.Random(0)
    cells, records, training, loss, jobs = [], [], [], [], []
    for student, method, data in grid():
        kind, comp, train_tok, infer_tok = SOURCES[data]
        name = cell_name(student, method, data)
        cells.append({"cell": name, "teacher": TEACHER, "student": student, "method": method, "data": data,
                      "data_kind": kind, "compressor": comp, "method_kind": method, "gpus": 1, "block": "main"})
        acc = accuracy_of(student, method, data, base)
        for ds, (group, _) in DATASETS.items():
            k = round(acc * n_per_group)
            for i in range(n_per_group):
                trunc = data == "raw" and i % 20 == 0
                tokens = 160 if trunc else max(1, int(rng.gauss(infer_tok, infer_tok / 5)))
                records.append({"cell": name, "id": f"{ds}-{i}", "dataset": ds, "group": group, "correct": i < k,
                                "truncated": trunc, "completion_tokens": tokens,
                                "reasoning_chars": 0 if kind == "answer_only" else tokens * 4,
                                "reasoning_tokens": 0 if kind == "answer_only" else max(tokens - 3, 0)})
        tokens_total = train_tok * 3000
        secs = 30 + tokens_total / 1500 * (1.5 if method == "full" else 1.0)
        steps = 300
        training.append({"cell": name, "steps": steps, "train_seconds": secs, "trainable_tokens": tokens_total,
                         "gpus": 1, "final_loss": 0.2 + 0.5 * (1 - acc)})
        floor = 0.15 if kind == "answer_only" else 0.3 + 0.4 * (1 - acc)
        for s in range(1, steps + 1):
            loss.append({"cell": name, "step": s, "loss": floor + 3.0 * 0.98 ** s + rng.gauss(0, 0.03)})
        jobs.append({"stage": "train", "name": name, "cell": name, "gpus": 1, "cpus": 1, "elapsed_s": secs + 5,
                     "source": "local"})
        jobs.append({"stage": "evaluate", "name": name, "cell": name, "gpus": 1, "cpus": 1, "elapsed_s": 20.0,
                     "source": "local"})
    jobs += [{"stage": "generate", "name": TEACHER, "gpus": 1, "cpus": 2, "elapsed_s": 240.0, "source": "local"},
             {"stage": "compress", "name": "mini-mild", "gpus": 1, "cpus": 2, "elapsed_s": 90.0, "source": "local"},
             {"stage": "compress", "name": "mini-aggressive", "gpus": 1, "cpus": 2, "elapsed_s": 80.0,
              "source": "local"}]
    compression, judge = [], []
    for comp, scale in (("mini-mild", 0.5), ("mini-aggressive", 0.3)):
        for ds, (_, domain) in DATASETS.items():
            for i in range(150):
                raw = max(40, int(rng.gauss(420, 90)))
                comp_chars = max(5, int(raw * rng.uniform(scale - 0.15, scale + 0.15)))
                compression.append({"teacher": TEACHER, "compressor": comp, "dataset": ds, "domain": domain,
                                    "raw_chars": raw, "compressed_chars": comp_chars,
                                    "compressed_tokens": comp_chars // 4})
                judge.append({"teacher": TEACHER, "compressor": comp, "dataset": ds, "domain": domain,
                              "faithfulness": None if i == 0 else 5 - (i % 7 == 0),
                              "verdict": "faithful" if i % 7 else "partially_faithful",
                              "answer_alignment": i % 11 != 0})
    yield_rows = [{"generator": TEACHER, "domain": dom, "dataset": ds, "total": 2000, "correct": 1900,
                   "correct_per_round": [1500, 300, 100], "cumulative_yield": [0.75, 0.9, 0.95], "yield": 0.95,
                   "avg_reasoning_chars": 420.0, "avg_total_tokens": 110.0} for ds, (_, dom) in DATASETS.items()]
    yield_rows.append({"generator": TEACHER, "domain": "Total", "dataset": "Total", "total": 6000, "correct": 5700,
                       "correct_per_round": [4500, 900, 300], "cumulative_yield": [0.75, 0.9, 0.95],
                       "yield": 0.95, "avg_reasoning_chars": 420.0, "avg_total_tokens": 110.0})
    datasets = [{"dataset": ds, "group": group, "source": f"synthetic:{ds}", "answer_type": "numeric",
                 "chance": CHANCE[ds], "chance_basis": f"1/{round(1 / CHANCE[ds])}"}
                for ds, (group, _) in DATASETS.items()]
    return ReportInputs(
        cells=pa.Table.from_pylist(cells), eval_records=pa.Table.from_pylist(records), datasets=datasets,
        training=training,
        loss_curves=pa.Table.from_pylist(loss), generation_yield=yield_rows, compression=compression,
        judge=judge, jobs=jobs, groups=GROUPS, labels=LABELS, title="Mini grid report",
        run_info={"run": "test", "wall time": "12 min"},
    )


def _no_nan(text: str) -> None:
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)  # base64 may spell anything
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)
    assert not re.search(r"\binf\b|\bNone\b", text)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], str, str]:
    out = tmp_path_factory.mktemp("report")
    paths = write_report(make_inputs(RAW_WINS), out)
    return paths, (out / "report.md").read_text(), (out / "report.html").read_text()


def test_report_files_and_figures_are_valid_pngs(written: tuple[list[Path], str, str]) -> None:
    paths, md, page = written
    names = {p.name for p in paths}
    assert {"report.md", "report.html", "fig2_rho.png", "fig3_loss.png", "fig4_acc_vs_length.png",
            "fig5_pareto.png"} <= names
    for p in paths:
        if p.suffix == ".png":
            data = p.read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, p
            assert f"figures/{p.name}" in md
    assert page.count("data:image/png;base64,") == 4 and "<style>" in page


def test_every_cell_in_every_per_cell_table_and_no_nan(written: tuple[list[Path], str, str]) -> None:
    _, md, page = written
    _no_nan(md)
    _no_nan(page)
    sections = {m.group(1): m.group(2) for m in re.finditer(r"### (Table [0-9]+b?)\. .*?\n(.*?)(?=\n### |\n## )",
                                                            md, re.S)}
    for student, method, data in grid():
        assert cell_name(student, method, data) in sections["Table 6b"]
        for table in ("Table 7", "Table 9", "Table 11"):
            row = f"| Mini teacher | {LABELS[student]} | "
            lines = [x for x in sections[table].splitlines() if x.startswith(row)]
            assert any(LABELS[data] in x and LABELS[method] in x for x in lines), (table, student, method, data)
    # Table 3: one row per (student, method) configuration, each of its cells filled with acc ± SE.
    assert sections["Table 3"].count("| Mini teacher |") == 3
    assert sections["Table 3"].count(" ± ") == len(grid())
    assert "not available" not in "".join(sections[t] for t in ("Table 3", "Table 4", "Table 5", "Table 10"))


def test_tables_carry_ratios_empty_groups_and_energy(written: tuple[list[Path], str, str]) -> None:
    _, md, _ = written
    assert "×)" in md  # Table 6 speed-ups in parentheses
    t7 = md.split("### Table 7")[1].split("### ")[0]
    assert "Medicine" in t7  # the empty group is a column, shown as a dash, not NaN or 0
    assert "Energy at 700 W x PUE 1.15" in md and "CO2 at 79 g/kWh" in md
    assert "### Table 8" in md and "Matched compressor" in md


def test_findings_raw_wins(written: tuple[list[Path], str, str]) -> None:
    _, md, page = written
    statuses = {f.key: f.status for f in findings(build_data(make_inputs(RAW_WINS)))}
    # e: LoRA and Full lose the same 0.14 to compression here, so "LoRA narrows the gap" is undecided;
    # f: aggressive retains 0.81-0.83 of raw, below the paper's 0.887-0.963; j: one seed per cell.
    assert statuses == {"a": STATUS_OK, "b": STATUS_OK, "c": STATUS_OK, "d": STATUS_OK, "e": STATUS_INC,
                        "f": STATUS_NO, "g": STATUS_OK, "h": STATUS_OK, "i": STATUS_OK, "j": STATUS_NA}
    assert "## Findings" in md and "Accuracy ordering" in md and "REPRODUCED" in page
    assert "7 of 9 testable directional findings reproduced (1 not reproduced, 1 inconclusive)" in md
    assert "1 not testable: (j) " in md and "Observations" in md
    assert "Tiny/Full/Answer-Only is at chance" in md  # 0.40 against 0.367 +- 2 x 0.033
    assert "### Table 1. Evaluation datasets" in md


def test_findings_raw_loses() -> None:
    found = {f.key: f for f in findings(build_data(make_inputs(RAW_LOSES)))}
    assert found["c"].status == STATUS_NO
    assert any("vs Tiny/Full/Aggressive comp." in e and e.endswith("contradicts") for e in found["c"].evidence)
    assert found["a"].status == STATUS_OK  # cost findings do not depend on accuracy


def test_findings_truncation_and_method_can_fail() -> None:
    # Truncation far above the compressor it matches, and a LoRA gap far wider than Full's: both flip.
    base = {**RAW_WINS, "truncated": 0.79, "aggressive": 0.60}
    inputs = make_inputs(base)
    recs = inputs.eval_records.to_pylist()
    for r in recs:  # LoRA raw answers everything right: its gap to LoRA aggressive (0.52) is 0.48
        if r["cell"].endswith(".lora.raw"):
            r["correct"] = True
    inputs.eval_records = recs
    found = {f.key: f.status for f in findings(build_data(inputs))}
    assert found["d"] == STATUS_NO and found["e"] == STATUS_NO


def test_missing_parts_say_not_available(tmp_path: Path) -> None:
    cells = [{"teacher": TEACHER, "student": "tiny", "method": "full", "data": d} for d in ("raw", "mild")]
    paths = write_report(ReportInputs(cells=cells), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert [p.name for p in paths] == ["report.md", "report.html"]
    assert md.count("not available") >= 10 and "NOT TESTABLE" in md
    _no_nan(md)
    _no_nan((tmp_path / "report.html").read_text())
    statuses = {f.status for f in findings(build_data(ReportInputs(cells=cells)))}
    assert statuses == {STATUS_NA}
