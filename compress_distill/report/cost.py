"""Measured compute of the report's jobs, read through `jobcost.JobCost` (the one cost rule):
Tables 11 and 11b and the Pareto figure's training-cost axis all come from here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ..jobcost import CPU, GPU, EnergyModel, JobCost
from .model import NA, ReportData, num


def energy_model(d: ReportData) -> EnergyModel:
    return EnergyModel(d.inputs.tdp_watts, d.inputs.pue, d.inputs.grid_g_co2_per_kwh)


def costs_by_stage(d: ReportData) -> dict[str, list[JobCost]]:
    out: dict[str, list[JobCost]] = defaultdict(list)
    for r in d.jobs:
        out[str(r.get("stage") or "?")].append(JobCost.from_row(r))
    return dict(out)


def train_costs(d: ReportData) -> dict[str, list[JobCost]]:
    """Cell -> the costs of its train job(s) (a retried cell may list several attempts)."""
    out: dict[str, list[JobCost]] = defaultdict(list)
    for r in d.jobs:
        if r.get("stage") == "train" and r.get("cell"):
            out[str(r["cell"])].append(JobCost.from_row(r))
    return dict(out)


def ran_on(costs: list[JobCost]) -> str:
    """'1 GPU', '4 GPUs', '1 CPU core', 'CPU (cores not recorded)', '—: not recorded' (last attempt)."""
    c = costs[-1]
    if c.gpus is None:
        return f"{NA}: not recorded"
    if c.resource == GPU:
        return f"{c.gpus} GPU" + ("s" if c.gpus > 1 else "")
    if c.cpus is None:
        return "CPU (cores not recorded)"
    return f"{c.cpus} CPU core" + ("s" if c.cpus > 1 else "")


def summed(values: list[float | None]) -> float | None:
    """Sum of the measured values; None when none was measured (never a silent 0)."""
    got = [v for v in values if v is not None]
    return sum(got) if got else None


@dataclass
class CostAxis:
    """The Pareto figure's training-cost axis: per-cell values in ONE unit, and what was left out."""

    values: dict[str, float]
    unit: str   # "GPU-hours" | "CPU core-hours" | "hours"
    label: str  # the axis label, naming the unit and where the numbers come from
    left_out: list[str] = field(default_factory=list)  # cells with a cost in another unit, or none


def train_cost_axis(d: ReportData) -> CostAxis:
    """Training cost per cell, measured by its train job: GPU-hours when the train jobs ran on GPUs,
    CPU core-hours when they ran on CPUs only. Mixed units are never put on one axis: the cells of
    the minority resource are left out (and named). Without any job accounting, the optimizer
    loop's hours from the training results, labelled as such."""
    by_cell = train_costs(d)
    if not by_cell:
        hours = {c: (num(tr.get("train_seconds")) or 0.0) / 3600 for c, tr in d.training.items()
                 if num(tr.get("train_seconds")) is not None}
        return CostAxis(hours, "hours", "training hours (optimizer loop; no job accounting, resources unknown)")
    kinds = {cell: cs[-1].resource for cell, cs in by_cell.items()}
    unit_kind = GPU if sum(k == GPU for k in kinds.values()) >= sum(k == CPU for k in kinds.values()) else CPU
    values: dict[str, float] = {}
    left_out = []
    for cell, cs in by_cell.items():
        v = summed([c.cost()[0] for c in cs]) if kinds[cell] == unit_kind else None
        if v is None:
            left_out.append(cell)
        else:
            values[cell] = v
    unit = "GPU-hours" if unit_kind == GPU else "CPU core-hours"
    how = "GPUs x job run time" if unit_kind == GPU else "cores x job run time, no GPU used"
    label = f"training cost, {unit} ({how})"
    if left_out:
        label += f"; {len(left_out)} cell(s) left out (other resource or not measured)"
    return CostAxis(values, unit, label, left_out)
