"""The cost ledger (report/ledger.py, `compress-distill ledger`): each cell's accuracy joined to its
measured cost, with its share of the generate and compress jobs upstream of it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from compress_distill.cli import app
from compress_distill.config import load_config
from compress_distill.jobcost import NO_GPU, EnergyModel
from compress_distill.plan import build_plan
from compress_distill.report.build import ReportInputs, build_data
from compress_distill.report.ledger import build_ledger, ledger_table
from compress_distill.store import ArtifactStore

from .conftest import REPO

H = 3600.0


def inputs(gpus: int, cpus: int = 2) -> ReportInputs:
    """Three cells of one teacher: raw, comp (two seeds) and trunc. One generate job feeds all of
    them, one compress job feeds comp and trunc (truncation matches the compressor's lengths)."""
    cells = [{"cell": "t.s.full.raw", "teacher": "t", "student": "s", "method": "full", "data": "raw",
              "data_kind": "raw", "seed": 1},
             {"cell": "t.s.full.comp", "teacher": "t", "student": "s", "method": "full", "data": "comp",
              "data_kind": "compressed", "compressor": "c", "seed": 1},
             {"cell": "t.s.full.comp.s2", "teacher": "t", "student": "s", "method": "full", "data": "comp",
              "data_kind": "compressed", "compressor": "c", "seed": 2},
             {"cell": "t.s.full.trunc", "teacher": "t", "student": "s", "method": "full", "data": "trunc",
              "data_kind": "truncated_to_match", "compressor": "c", "seed": 1}]
    runs = [c["cell"] for c in cells]
    metrics = [{"cell": r, "n": 100, "correct": 40 + i, "accuracy": (40 + i) / 100, "accuracy_se": 0.05,
                "avg_completion_tokens": 50.0, "acc_per_1k_tokens": (40 + i) / 100 / 0.05} for i, r in enumerate(runs)]
    training = [{"cell": r, "steps": 10, "train_seconds": 100.0, "trainable_tokens": 1000 * (i + 1)}
                for i, r in enumerate(runs)]

    def job(stage: str, name: str, secs: float, **extra: Any) -> dict[str, Any]:
        return {"stage": stage, "name": name, "elapsed_s": secs, "gpus": gpus, "cpus": cpus, "source": "test",
                **extra}

    jobs = [job("train", r, 600.0, cell=r) for r in runs] + [job("evaluate", r, 60.0, cell=r) for r in runs]
    jobs += [job("generate", "t", 3 * H, feeds=runs), job("compress", "t.c", H, feeds=runs[1:]),
             job("build", "student", 120.0)]
    return ReportInputs(cells=cells, eval_metrics=metrics, training=training, jobs=jobs)


def unit(row_part: Any, gpus: int) -> float:
    return row_part.gpu_hours if gpus else row_part.cpu_core_hours


@pytest.mark.parametrize("gpus", [0, 4])
def test_shares_add_up_to_the_jobs_totals(gpus: int) -> None:
    lg = build_ledger(build_data(inputs(gpus)))
    per_job = gpus if gpus else 2  # GPUs or cores per job
    by = {r.cell: r for r in lg.rows}
    assert list(by) == ["t.s.full.raw", "t.s.full.comp", "t.s.full.trunc"]  # seeds pooled into one cell
    gen = sum(unit(r.parts["generate"], gpus) for r in lg.rows)
    comp = sum(unit(r.parts["compress"] or 0.0, gpus) for r in lg.rows if r.parts["compress"].resource)
    assert gen == pytest.approx(per_job * 3) and comp == pytest.approx(per_job * 1)
    # evenly over distinct cells: the two seeds of comp take one share, not two
    assert unit(by["t.s.full.raw"].parts["generate"], gpus) == pytest.approx(per_job * 3 / 3)
    assert unit(by["t.s.full.comp"].parts["compress"], gpus) == pytest.approx(per_job / 2)
    assert by["t.s.full.raw"].parts["compress"].resource is None  # raw traces were not compressed
    # own jobs add up over seeds; the total is the sum of the parts
    assert unit(by["t.s.full.comp"].parts["train"], gpus) == pytest.approx(per_job * 2 * 600 / H)
    assert unit(by["t.s.full.comp"].total, gpus) == pytest.approx(per_job * (1200 + 120) / H + per_job + per_job / 2)
    # the pooled accuracy of the seeds, and the jobs no cell is downstream of kept apart
    assert by["t.s.full.comp"].accuracy == pytest.approx((41 + 42) / 200)
    assert set(lg.unapportioned) == {"build"}
    all_cells = sum(unit(r.total, gpus) for r in lg.rows) + unit(lg.unapportioned["build"], gpus)
    assert all_cells == pytest.approx(sum(unit(a, gpus) for a in lg.jobs.values()))


def test_cpu_only_cells_cost_core_hours_and_no_energy() -> None:
    d = build_data(inputs(0))
    lg = build_ledger(d)
    assert all(r.total.gpu_hours is None and r.energy_kwh is None and r.co2_kg is None for r in lg.rows)
    t = ledger_table(d, lg)
    col = {c: i for i, c in enumerate(t.columns)}
    raw = t.rows[0]
    assert raw[col["Total"]] == f"{2 * (600 + 60) / H + 2 * 3 / 3:.2f} core-h"  # + a third of generation
    assert raw[col["Energy (kWh)"]] == NO_GPU and raw[col["CO2 (kg)"]] == NO_GPU and raw[col["Train ran on"]] == \
        "2 CPU cores"
    assert "GPU-h" not in " ".join(" ".join(r) for r in t.rows)
    assert any("split evenly" in n for n in t.notes)


def test_gpu_cells_cost_gpu_hours_energy_and_co2() -> None:
    d = build_data(inputs(4))
    lg = build_ledger(d)
    raw = lg.rows[0]
    gh = 4 * (600 + 60) / H + 4 * 3 / 3  # own jobs + a third of the generate job
    assert raw.total.gpu_hours == pytest.approx(gh) and raw.total.cpu_core_hours is None
    assert raw.energy_kwh == pytest.approx(EnergyModel().kwh(gh)) and raw.co2_kg == pytest.approx(EnergyModel().co2_kg(gh))
    t = ledger_table(d, lg)
    col = {c: i for i, c in enumerate(t.columns)}
    assert t.rows[0][col["Total"]] == f"{gh:.2f} GPU-h" and t.rows[0][col["Energy (kWh)"]] != NO_GPU
    doc = lg.to_json()
    assert doc["cells"][0]["energy_kwh"] == pytest.approx(EnergyModel().kwh(gh))
    assert json.loads(json.dumps(doc)) == doc


def test_an_unmeasured_job_marks_a_lower_bound_and_no_evaluated_cell_says_so() -> None:
    inp = inputs(0)
    inp.jobs[0]["elapsed_s"] = None  # raw's train job: no run time recorded
    d = build_data(inp)
    t = ledger_table(d)
    assert t.rows[0][t.columns.index("Train")].endswith("*") and any("lower bound" in n for n in t.notes)
    inp.eval_metrics = None
    assert ledger_table(build_data(inp)).missing == "not available: no evaluated cells"


def test_a_mixed_or_partly_unmeasured_total_is_on_no_pareto_axis() -> None:
    """GPU training on CPU-generated traces: GPU-h and core-h are never added on one axis."""
    from compress_distill.report.figures import pareto_figure
    from compress_distill.report.ledger import cost_axes

    inp = inputs(4)
    inp.jobs[-3]["gpus"] = 0  # the generate job ran on CPUs
    (axis,) = cost_axes(build_data(inp))
    assert axis.values == {} and axis.left_out == ["t.s.full.raw", "t.s.full.comp", "t.s.full.trunc"]
    fig = pareto_figure(build_data(inp))
    assert fig is not None and fig.axes[1].texts[0].get_text() == "not available"
    inp = inputs(4)
    inp.jobs[0]["elapsed_s"] = None  # raw's train job unmeasured: its total is a lower bound, off the axis
    (axis,) = cost_axes(build_data(inp))
    assert set(axis.values) == {"t.s.full.comp", "t.s.full.trunc"} and axis.left_out == ["t.s.full.raw"]
    assert "1 cell(s) left out" in axis.label


# -------------------------------------------------------------- the CLI on a store built here

CELLS = ("mini-teacher.tiny.full.aggressive", "mini-teacher.tiny.full.truncated")  # both downstream of one compress


def _commit(st: ArtifactStore, plan: Any, nid: str, files: dict[str, Any], secs: float | None, job: int) -> None:
    """A committed node with its manifest (the runner's fields the cost reads) and its job's state file."""
    stage, name = nid.split("/", 1)
    key = plan.keys[nid]
    tmp = st.begin(stage, name, key)
    for fname, content in files.items():
        if fname.endswith(".parquet"):
            pq.write_table(pa.Table.from_pylist(content), tmp / fname)
        else:
            (tmp / fname).write_text(json.dumps(content))
    t0 = time.time()
    backend = "inprocess" if secs is None else "local"
    manifest = {"node": nid, "stage": stage, "name": name, "key": key, "identity": plan.identity(nid),
                "job": {"kind": "cpu", "gpus": 0, "job_id": None if secs is None else f"local-{job}",
                        "backend": backend, "gpus_used": 0, "cpus": None if secs is None else 2},
                "started_at": t0, "finished_at": t0 + 1, "seconds": 1.0}
    st.commit(tmp, stage, name, key, manifest)
    if secs is not None:
        jobs = st.root / stage / ".jobs" / f"{name}-{key}"
        jobs.mkdir(parents=True, exist_ok=True)
        (jobs / "attempt-1.state.json").write_text(json.dumps({"job_id": f"local-{job}", "elapsed_s": secs}))


def _store(tmp_path: Path) -> Path:
    """The mini-ci study with two of its cells evaluated: the nodes upstream of them (generate,
    verify, compress, derive) hold only their manifests and job clocks; the report node names the
    two cells' train and evaluate nodes as its inputs, and the store keeps its config snapshot."""
    from compress_distill.runner import snapshot_config

    plan = build_plan(load_config(REPO / "configs" / "mini-ci.yaml"))
    st = ArtifactStore(tmp_path / "store")
    secs = {"generate/mini-teacher": 3 * H, "compress/mini-teacher.mini-aggressive": H}
    tables: dict[str, dict[str, Any]] = {"verify/mini-teacher": {"yield.parquet": []},  # read by the report
                                         "compress/mini-teacher.mini-aggressive": {"compressed.parquet": []}}
    for i, nid in enumerate(["generate/mini-teacher", "verify/mini-teacher", "compress/mini-teacher.mini-aggressive",
                             "derive/mini-teacher.aggressive", "derive/mini-teacher.truncated"]):
        _commit(st, plan, nid, tables.get(nid, {}), secs.get(nid), i)
    for i, cell in enumerate(CELLS):
        loss = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}]
        _commit(st, plan, f"train/{cell}", {"train_result.json": {"steps": 2, "train_seconds": 50.0,
                                                                  "trainable_tokens": 900},
                                            "loss.parquet": loss}, 600.0, 10 + i)
        recs = [{"id": f"q{k}", "dataset": "mini-math", "group": "math", "correct": k < 3 + i, "truncated": False,
                 "completion_tokens": 20, "reasoning_chars": 40} for k in range(10)]
        _commit(st, plan, f"evaluate/{cell}", {"metrics.json": {"n": 10, "correct": 3 + i, "accuracy": (3 + i) / 10,
                                                                "accuracy_se": 0.15, "avg_completion_tokens": 20.0},
                                               "records.parquet": recs}, 60.0, 20 + i)
    rid = "report/study"
    ident = plan.identity(rid)
    ident["upstream"] = {f"{s}/{c}": plan.keys[f"{s}/{c}"] for c in CELLS for s in ("train", "evaluate")}
    tmp = st.begin("report", "study", plan.keys[rid])
    st.commit(tmp, "report", "study", plan.keys[rid], {"node": rid, "key": plan.keys[rid], "identity": ident,
                                                      "job": {"backend": "inprocess"}, "finished_at": time.time()})
    snapshot_config(plan, st)
    return st.root


def test_cli_prints_the_ledger_of_a_store(tmp_path: Path) -> None:
    root = _store(tmp_path)
    out = CliRunner().invoke(app, ["ledger", str(root), "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    cells = {c["cell"]: c for c in doc["cells"]}
    assert set(cells) == set(CELLS)
    # both cells share the generate and the compress job: half each, and the halves add up to the jobs
    assert sum(c["cost"]["generate"]["cpu_core_hours"] for c in cells.values()) == pytest.approx(2 * 3)
    assert sum(c["cost"]["compress"]["cpu_core_hours"] for c in cells.values()) == pytest.approx(2 * 1)
    trunc = cells["mini-teacher.tiny.full.truncated"]
    assert trunc["accuracy"] == pytest.approx(0.4) and trunc["energy_kwh"] is None
    assert trunc["total"]["cpu_core_hours"] == pytest.approx(2 * (600 + 60) / H + 3 + 1)
    table = CliRunner().invoke(app, ["ledger", str(root)])
    assert table.exit_code == 0 and "Table 12. Cost ledger" in table.output and "| Total |" in table.output
    # --config: the study's cells the store holds (its report node's inputs, not the report's manifest)
    by_config = CliRunner().invoke(app, ["ledger", str(root), "--json", "--config",
                                         str(REPO / "configs" / "mini-ci.yaml")])
    assert by_config.exit_code == 0, by_config.output
    assert json.loads(by_config.output)["cells"] == doc["cells"]


def test_cli_says_why_a_store_has_no_ledger(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = CliRunner().invoke(app, ["ledger", str(tmp_path / "empty")])
    assert out.exit_code == 2 and "no committed report" in out.output
    out = CliRunner().invoke(app, ["ledger", str(tmp_path / "empty"), "--config", str(REPO / "configs" / "mini-ci.yaml")])
    assert out.exit_code == 2 and "no evaluated cell" in out.output
