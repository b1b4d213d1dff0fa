"""The one cost rule (jobcost.py): a job's cost is its own run time, never its queue wait; GPU jobs
cost GPU-hours (and energy, CO2), CPU-only jobs cost CPU core-hours and have no energy or CO2.
Checked on constructed manifests, state files and sacct rows, on a real LocalBackend job that
waits for a worker, and through Table 11, Table 11b and the Pareto figure's axis."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from compress_distill.backends.base import JobRequest
from compress_distill.backends.common import read_state
from compress_distill.backends.local import LocalBackend
from compress_distill.cluster import accounting as acc
from compress_distill.jobcost import CPU, GPU, NO_GPU, UNKNOWN, EnergyModel, JobCost, node_job_cost
from compress_distill.report.build import ReportInputs, build_data
from compress_distill.report.figures import loss_figure, pareto_figure
from compress_distill.report.ledger import cost_axes
from compress_distill.report.tables import table11, table11b
from compress_distill.stages.report import _job

T0 = 1_800_000_000.0


def manifest(backend: str = "local", gpus_used: int | None = 0, cpus: int | None = 1, job_id: str = "local-1-1",
             started: float = T0, finished: float = T0 + 3660.0) -> dict[str, Any]:
    job: dict[str, Any] = {"kind": "train", "gpus": 1, "job_id": job_id, "backend": backend, "cpus": cpus}
    if gpus_used is not None:
        job["gpus_used"] = gpus_used
    return {"node": "train/x", "job": job, "started_at": started, "finished_at": finished,
            "seconds": round(finished - started, 3)}


def test_gpu_job_costs_gpu_hours_energy_and_co2() -> None:
    c = node_job_cost(manifest("slurm", gpus_used=4, cpus=32, job_id="77"),
                      [{"backend": "slurm", "job_id": "77", "elapsed_s": 1800.0, "state": "COMPLETED"}])
    assert c.resource == GPU and c.seconds == 1800.0 and c.clock == "sacct ElapsedRaw"
    assert c.gpu_hours == pytest.approx(2.0) and c.cpu_core_hours is None
    assert c.energy_kwh() == pytest.approx(2.0 * 0.7 * 1.15)
    assert c.co2_kg() == pytest.approx(2.0 * 0.805 * 79 / 1000)
    assert c.cost() == (pytest.approx(2.0), "GPU-hours")


def test_cpu_job_costs_core_hours_and_no_energy() -> None:
    c = node_job_cost(manifest(gpus_used=0, cpus=2), [{"job_id": "local-1-1", "elapsed_s": 900.0}])
    assert c.resource == CPU and c.cpu_core_hours == pytest.approx(0.5)
    assert c.gpu_hours is None and c.energy_kwh() is None and c.co2_kg() is None
    assert c.cost() == (pytest.approx(0.5), "CPU core-hours")


def test_queued_an_hour_ran_sixty_seconds_costs_sixty_seconds() -> None:
    """The manifest's 3,660 s start before the submit (waiting for a worker): the job's own clock says 60."""
    m = manifest(started=T0, finished=T0 + 3660.0)
    ended = [{"job_id": "local-1-1", "submitted_at": "x", "started_at": T0 + 3600.0, "elapsed_s": 60.0}]
    assert node_job_cost(m, ended).seconds == 60.0
    # Committed on sight of its result, before the backend recorded its exit: start to commit.
    running = [{"job_id": "local-1-1", "started_at": T0 + 3600.0}]
    c = node_job_cost(m, running)
    assert c.seconds == pytest.approx(60.0) and "start to commit" in c.clock
    # The same on Slurm: ElapsedRaw is run time; sacct's Submit is an hour earlier and plays no part.
    row = acc.parse_usage("9|9|COMPLETED|60|billing=1,cpu=4,gres/gpu=2,mem=1G,node=1|2026-11-23T15:00:00|train.x\n")
    assert row[0].cost.seconds == 60.0 and row[0].gpu_hours == pytest.approx(2 * 60 / 3600)


def test_unmeasured_is_none_with_a_reason_never_the_manifest_seconds() -> None:
    no_state = node_job_cost(manifest(), [])
    assert no_state.seconds is None and "no state file" in (no_state.unmeasured or "")
    other_attempt = node_job_cost(manifest(), [{"job_id": "local-1-0", "elapsed_s": 5.0}])
    assert other_attempt.seconds is None  # a failed earlier attempt is not the run that made the artifact
    old = node_job_cost(manifest(gpus_used=None), [{"job_id": "local-1-1", "elapsed_s": 60.0}])
    assert old.resource == UNKNOWN and old.seconds == 60.0 and old.gpu_hours is None and old.cpu_core_hours is None
    assert "not recorded" in (old.unmeasured or "")
    inproc = node_job_cost({"job": {"backend": "inprocess", "job_id": None, "gpus_used": 0},
                            "started_at": T0, "finished_at": T0 + 12.5})
    assert inproc.seconds == 12.5 and inproc.cpus is None and inproc.cpu_core_hours is None


def test_row_round_trip() -> None:
    c = JobCost(60.0, 0, 1, "local job start to exit")
    assert JobCost.from_row(c.to_row()) == c


def test_sacct_cpu_job_has_core_hours_and_no_gpu_energy() -> None:
    usages = acc.parse_usage("5|5|COMPLETED|3600|billing=2,cpu=2,mem=2G,node=1|2026-11-23T16:15:28|cpu.x\n"
                             "6|6|COMPLETED|3600|billing=1,cpu=1,gres/gpu=1,mem=2G,node=1|2026-11-23T16:15:28|t\n")
    rows = acc.table11(usages, {"5": "verify/x", "6": "train/y"})
    by = {r.node: r for r in rows}
    assert by["verify/x"].cpu_core_hours == pytest.approx(2.0) and by["verify/x"].gpu_hours == 0.0
    assert by["train/y"].gpu_hours == pytest.approx(1.0) and by["train/y"].cpu_core_hours is None
    text = acc.format_table11(rows)
    assert f"| verify/x | 0 | 1 | 1.0000 | {NO_GPU} | 2.0000 |" in text
    assert f"| verify | 1 | {NO_GPU} | {NO_GPU} | {NO_GPU} |" in text
    assert "| train | 1 | 1.0000 | 0.8050 |" in text


def test_local_backend_clock_excludes_the_wait_for_a_worker(tmp_path: Path) -> None:
    """A real job queued behind another on one worker: its state file's clock counts its own run only."""
    be = LocalBackend(max_workers=1, tick_s=0.02)

    def req(name: str, secs: float) -> JobRequest:
        return JobRequest(name=name, command=[sys.executable, "-c", f"import time; time.sleep({secs})"],
                          workdir=tmp_path, log_path=tmp_path / name / "attempt.log", kind="train")

    first = be.submit(req("first", 1.5))
    ids: list[str] = []
    t_submit = time.time()
    th = threading.Thread(target=lambda: ids.append(be.submit(req("second", 0.2))))
    th.start()
    th.join(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline and not (read_state(tmp_path / "second" / "attempt.log") or {}).get("elapsed_s"):
        be.poll_many([first, *ids])
        time.sleep(0.05)
    t_end = time.time()
    state = read_state(tmp_path / "second" / "attempt.log")
    assert state is not None and state["job_id"] == ids[0]
    assert t_end - t_submit > 1.2  # it waited for the first job's worker
    assert state["started_at"] - t_submit > 1.0
    m = {"job": {"backend": "local", "job_id": ids[0], "gpus_used": 0, "cpus": 1},
         "started_at": t_submit, "finished_at": t_end}
    c = node_job_cost(m, [state])
    assert c.seconds is not None and 0.15 < c.seconds < 1.0, c
    assert c.clock == "local job start to exit"


def test_report_stage_reads_the_job_state_of_the_committed_node(tmp_path: Path) -> None:
    node = tmp_path / "train" / "cell-abc"
    node.mkdir(parents=True)
    (node / "manifest.json").write_text(json.dumps(manifest(job_id="local-9-3")))
    jobs = tmp_path / "train" / ".jobs" / "cell-abc"
    jobs.mkdir(parents=True)
    (jobs / "attempt-1.state.json").write_text(json.dumps({"job_id": "local-9-2", "elapsed_s": 999.0}))
    (jobs / "attempt-2.state.json").write_text(json.dumps({"job_id": "local-9-3", "started_at": T0 + 3600,
                                                            "elapsed_s": 60.0}))
    row = _job("train", "cell", node, None)
    assert row["elapsed_s"] == 60.0 and row["gpus"] == 0 and row["cpus"] == 1 and row["stage"] == "train"


# ---------------------------------------------------------------------------------------- the report

CELLS = [("raw", "raw"), ("comp", "compressed"), ("ans", "answer_only")]


def report_inputs(job_gpus: list[int], cpus: int = 1) -> ReportInputs:
    cells, metrics, training, jobs, loss = [], [], [], [], []
    for (data, kind), gpus in zip(CELLS, job_gpus, strict=True):
        name = f"t.s.full.{data}"
        cells.append({"cell": name, "teacher": "t", "student": "s", "method": "full", "data": data,
                      "data_kind": kind, "gpus": 1})  # planned 1 GPU: not evidence of use
        metrics.append({"cell": name, "n": 100, "correct": 50, "accuracy": 0.5, "accuracy_se": 0.05,
                        "avg_completion_tokens": 40.0})
        training.append({"cell": name, "steps": 10, "train_seconds": 77.6, "trainable_tokens": 1000, "gpus": 1})
        # answer-only queued for an hour but ran 80 s: the row holds the job's own 80 s
        jobs.append({"stage": "train", "name": name, "cell": name, "elapsed_s": 80.0 if data == "ans" else 300.0,
                     "gpus": gpus, "cpus": cpus, "source": "local job start to exit"})
        loss += [{"cell": name, "step": s, "loss": 3.0 * 0.5 ** s + 0.01} for s in range(1, 30)]
    jobs.append({"stage": "generate", "name": "t", "elapsed_s": 120.0, "gpus": job_gpus[0], "cpus": 2,
                 "source": "local job start to exit"})
    return ReportInputs(cells=cells, eval_metrics=metrics, training=training, jobs=jobs, loss_curves=loss)


def test_cpu_run_table11_has_core_hours_and_no_gpu_numbers() -> None:
    d = build_data(report_inputs([0, 0, 0], cpus=2))
    t = table11(d)
    col = {c: i for i, c in enumerate(t.columns)}
    ans = next(r for r in t.rows if r[col["Data"]] == "ans")
    assert ans[col["Ran on"]] == "2 CPU cores" and ans[col["GPU-h"]] == NO_GPU
    assert ans[col["Time (h)"]] == f"{80 / 3600:.3g}" and ans[col["CPU core-h"]] == f"{2 * 80 / 3600:.3g}"
    notes = " ".join(t.notes)
    assert "kWh" not in notes and "GPU-h:" not in notes and "CPU core-h" in notes and NO_GPU in notes
    b = table11b(d)
    assert all(r[4] == NO_GPU and r[6] == NO_GPU and r[7] == NO_GPU for r in b.rows)


def test_gpu_run_table11_has_gpu_hours_energy_and_co2() -> None:
    d = build_data(report_inputs([4, 4, 4]))
    t = table11(d)
    col = {c: i for i, c in enumerate(t.columns)}
    raw = next(r for r in t.rows if r[col["Data"]] == "raw")
    assert raw[col["Ran on"]] == "4 GPUs" and raw[col["GPU-h"]] == f"{4 * 300 / 3600:.3g}"
    assert raw[col["CPU core-h"]] == "—"
    gh = (4 * 300 * 2 + 4 * 80 + 4 * 120) / 3600
    assert f"{EnergyModel().kwh(gh):.3g} kWh" in " ".join(t.notes)


def test_pareto_axis_names_its_unit_and_plots_the_measured_cost() -> None:
    """The figure's cost axes are the ledger's totals (train job + share of generation), one per resource."""
    inputs = report_inputs([0, 0, 0])
    inputs.jobs[-1]["feeds"] = [c["cell"] for c in inputs.cells]  # the generate job: all three cells' traces
    cpu = build_data(inputs)
    (axis,) = cost_axes(cpu)
    share = 2 * 120 / 3600 / 3
    assert axis.unit == "CPU core-hours" and axis.values["t.s.full.ans"] == pytest.approx(80 / 3600 + share)
    assert axis.values["t.s.full.ans"] < axis.values["t.s.full.raw"]  # answer-only is the cheapest, as measured
    fig = pareto_figure(cpu)
    assert fig is not None and "CPU core-hours" in fig.axes[1].get_xlabel() and len(fig.axes) == 2
    assert "GPU" not in fig.axes[1].get_xlabel()
    gpu = build_data(report_inputs([2, 2, 2]))
    assert [a.unit for a in cost_axes(gpu)] == ["GPU-hours"]
    gfig = pareto_figure(gpu)
    assert gfig is not None and "GPU-hours" in gfig.axes[1].get_xlabel()
    # mixed resources: never on one axis; one panel per resource
    mixed = cost_axes(build_data(report_inputs([2, 0, 2])))
    assert [a.unit for a in mixed] == ["GPU-hours", "CPU core-hours"]
    assert set(mixed[0].values) == {"t.s.full.raw", "t.s.full.ans"} and set(mixed[1].values) == {"t.s.full.comp"}
    assert len(pareto_figure(build_data(report_inputs([2, 0, 2]))).axes) == 3  # type: ignore[union-attr]


def test_pareto_without_job_accounting_says_so() -> None:
    inputs = report_inputs([0, 0, 0])
    inputs.jobs = None
    (axis,) = cost_axes(build_data(inputs))
    assert axis.unit == "hours" and "no job accounting" in axis.label


def test_loss_axis_is_log_scale_with_final_losses_printed() -> None:
    fig = loss_figure(build_data(report_inputs([0, 0, 0])))
    assert fig is not None
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "log scale" in ax.get_ylabel()
    final = f"{3.0 * 0.5 ** 29 + 0.01:.3g}"
    box = "\n".join(t.get_text() for t in ax.texts)
    assert "final loss" in box and f"raw: {final}" in box and f"ans: {final}" in box


def test_report_finds_upstream_jobs_that_are_not_its_inputs(tmp_path: Path) -> None:
    """Generation is no input of the report (verify is), yet its job is part of the study's compute."""
    from compress_distill.stages.report import _upstream

    verify = tmp_path / "verify" / "pool-k1"
    gen = tmp_path / "generate" / "teacher-k0"
    for d in (verify, gen):
        d.mkdir(parents=True)
    (verify / "manifest.json").write_text(json.dumps({"identity": {"upstream": {"generate/teacher": "k0"}}}))
    (gen / "manifest.json").write_text(json.dumps({"identity": {"upstream": {}}}))
    assert _upstream({"verify/pool": verify}) == {"verify/pool": verify, "generate/teacher": gen}


def test_sacct_table11_takes_the_gpus_a_job_ran_on_from_its_manifest(tmp_path: Path) -> None:
    """The dev cluster's GRES are fake (`device: cpu`): the manifest says 0 GPUs, so CPU core-hours."""
    job_dir = tmp_path / "train" / ".jobs" / "cell-k"
    job_dir.mkdir(parents=True)
    (job_dir / "job.json").write_text(json.dumps({"node": "train/cell", "job_id": "31"}))
    (tmp_path / "train" / "cell-k").mkdir()
    (tmp_path / "train" / "cell-k" / "manifest.json").write_text(json.dumps(manifest("slurm", gpus_used=0, cpus=2)))
    assert acc.used_gpus(tmp_path) == {"train/cell": 0}
    usages = acc.parse_usage("31|31|COMPLETED|1800|billing=2,cpu=2,gres/gpu=1,mem=2G,node=1|2026-11-23T16:15:28|t\n")
    faked = acc.table11(usages, {"31": "train/cell"})[0]
    assert faked.gpus == 1 and faked.gpu_hours == pytest.approx(0.5)  # AllocTRES alone believes the fake GRES
    row = acc.table11(usages, {"31": "train/cell"}, acc.used_gpus(tmp_path))[0]
    assert row.gpus == 0 and row.gpu_hours == 0.0 and row.cpu_core_hours == pytest.approx(1.0)
    assert f"| train | 1 | {NO_GPU} |" in acc.format_table11([row])


def test_cost_model_learns_the_job_run_time_not_its_queue_wait(tmp_path: Path) -> None:
    """Earlier runs refine the scheduler's estimates: with the job's own 60 s, not the 3,660 s it also waited."""
    from compress_distill.config import load_config
    from compress_distill.costmodel import measured_hours
    from compress_distill.plan import build_plan
    from compress_distill.store import ArtifactStore

    from .conftest import REPO

    plan = build_plan(load_config(REPO / "configs" / "mini-ci.yaml"))
    nid = next(n for n in plan.nodes if n.startswith("train/"))
    node = plan.nodes[nid]
    art = tmp_path / node.stage / f"{node.name}-k1"
    art.mkdir(parents=True)
    (art / "manifest.json").write_text(json.dumps({**manifest(), "name": node.name, "key": "k1"}))
    jobs = tmp_path / node.stage / ".jobs" / f"{node.name}-k1"
    jobs.mkdir(parents=True)
    (jobs / "attempt-1.state.json").write_text(json.dumps({"job_id": "local-1-1", "elapsed_s": 60.0}))
    assert measured_hours(plan, ArtifactStore(tmp_path))[nid] == pytest.approx(60 / 3600)
    (jobs / "attempt-1.state.json").unlink()  # no job clock: the manifest's seconds, as before
    assert measured_hours(plan, ArtifactStore(tmp_path))[nid] == pytest.approx(3660 / 3600)
