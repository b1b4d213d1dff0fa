"""Measured compute of the report's jobs, read through `jobcost.JobCost` (the one cost rule):
Tables 11 and 11b, and the cost ledger (ledger.py: Table 12 and the Pareto figure's cost axes)
all come from here.
"""

from __future__ import annotations

from collections import defaultdict

from ..jobcost import GPU, EnergyModel, JobCost
from .model import NA, ReportData


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
