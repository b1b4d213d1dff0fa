"""The cost ledger (issue #19): one row per cell joining its accuracy, Acc/1k tokens and training
tokens to what it cost, measured by `jobcost.JobCost` (the one cost rule: GPU-hours for GPU jobs,
CPU core-hours for CPU-only jobs, energy and CO2 for GPU jobs only).

A cell's cost = its own train and evaluate jobs (all attempts, over all its seeds) + its share of
the generate and compress jobs upstream of it.

Apportioning rule: a generate or compress job's cost is split EVENLY over the distinct cells
trained downstream of it (the `feeds` of its job row: the train nodes whose upstream holds it,
stages/report.py `_feeds`); the seeds of one cell count as one cell. Why evenly, not by training
rows: every such cell needs the whole job (a compressed cell needs every raw trace before its
compressor sees them, a length-matched truncation needs every compressed length), so none of them
uses it less than another; splitting by rows would charge the raw cell more for traces the
compressed cell needed as much. Seeds repeat training on the same traces, which were made once.
Shares of cells outside the ledger (trained, not evaluated) and the jobs no cell is downstream of
(model builds, the judge) stay in `unapportioned`, so the shares plus it add up to the jobs' totals.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..jobcost import CPU, GPU, NO_GPU, EnergyModel, JobCost
from .cost import energy_model, ran_on, train_costs
from .model import NA, CellInfo, ReportData, TableBlock, f_acc_se, f_auto, f_num, f_tokens, num, unavailable

OWN = ("train", "evaluate")       # jobs of the cell itself (a `cell` column)
SHARED = ("generate", "compress")  # jobs split over the cells downstream of them
PARTS = OWN + SHARED
RULE = ("Generation and compression shares: each generate or compress job's measured cost split evenly over "
        "the distinct cells trained on its output (seeds of one cell count once); every such cell needs the "
        "whole job, so none is charged by its rows.")


@dataclass(frozen=True)
class Amount:
    """A sum of (shares of) job costs, kept apart per resource: GPU-hours of GPU jobs, CPU core-hours
    of CPU-only jobs. None: no measured job of that resource (never a silent 0). `unmeasured`: jobs
    counted whose cost is unknown (no run time, or what it ran on was not recorded)."""

    gpu_hours: float | None = None
    cpu_core_hours: float | None = None
    unmeasured: int = 0

    def add(self, cost: JobCost, share: float = 1.0) -> Amount:
        value, _ = cost.cost()
        if value is None:
            return Amount(self.gpu_hours, self.cpu_core_hours, self.unmeasured + 1)
        if cost.resource == GPU:
            return Amount((self.gpu_hours or 0.0) + share * value, self.cpu_core_hours, self.unmeasured)
        return Amount(self.gpu_hours, (self.cpu_core_hours or 0.0) + share * value, self.unmeasured)

    def __add__(self, other: Amount) -> Amount:
        def s(a: float | None, b: float | None) -> float | None:
            return None if a is None and b is None else (a or 0.0) + (b or 0.0)
        return Amount(s(self.gpu_hours, other.gpu_hours), s(self.cpu_core_hours, other.cpu_core_hours),
                      self.unmeasured + other.unmeasured)

    @property
    def resource(self) -> str | None:
        """GPU or CPU when the amount is in one resource alone; None when mixed or empty."""
        if self.gpu_hours is not None and self.cpu_core_hours is None:
            return GPU
        if self.cpu_core_hours is not None and self.gpu_hours is None:
            return CPU
        return None

    def to_json(self) -> dict[str, Any]:
        return {"gpu_hours": self.gpu_hours, "cpu_core_hours": self.cpu_core_hours, "unmeasured_jobs": self.unmeasured}


def total(amounts: Iterable[Amount]) -> Amount:
    out = Amount()
    for a in amounts:
        out = out + a
    return out


@dataclass
class LedgerRow:
    cell: str
    teacher: str
    student: str
    method: str
    data: str
    seeds: int
    accuracy: float | None
    accuracy_se: float | None
    acc_per_1k_tokens: float | None
    trainable_tokens: float | None
    ran_on: str  # what its (last) train job ran on
    parts: dict[str, Amount]
    total: Amount
    energy_kwh: float | None  # GPU jobs only (paper H.5)
    co2_kg: float | None

    def to_json(self) -> dict[str, Any]:
        return {"cell": self.cell, "teacher": self.teacher, "student": self.student, "method": self.method,
                "data": self.data, "seeds": self.seeds, "accuracy": self.accuracy, "accuracy_se": self.accuracy_se,
                "acc_per_1k_tokens": self.acc_per_1k_tokens, "trainable_tokens": self.trainable_tokens,
                "ran_on": self.ran_on, "cost": {k: v.to_json() for k, v in self.parts.items()},
                "total": self.total.to_json(), "energy_kwh": self.energy_kwh, "co2_kg": self.co2_kg}


@dataclass
class Ledger:
    rows: list[LedgerRow]
    unapportioned: dict[str, Amount] = field(default_factory=dict)  # by stage
    jobs: dict[str, Amount] = field(default_factory=dict)  # every job of the report, by stage
    energy: EnergyModel = EnergyModel()

    @property
    def evaluated(self) -> list[LedgerRow]:
        return [r for r in self.rows if r.accuracy is not None]

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": 1, "rule": RULE,
                "energy_model": {"tdp_w": self.energy.tdp_w, "pue": self.energy.pue,
                                 "gco2_per_kwh": self.energy.gco2_per_kwh},
                "cells": [r.to_json() for r in self.rows],
                "unapportioned": {k: v.to_json() for k, v in self.unapportioned.items()},
                "jobs_by_stage": {k: v.to_json() for k, v in self.jobs.items()}}


def build_ledger(d: ReportData) -> Ledger:
    em = energy_model(d)
    cell_of_run = {run: c.cell for c in d.cells for run in c.run_names} | {c.cell: c.cell for c in d.cells}
    parts: dict[str, dict[str, Amount]] = {c.cell: {p: Amount() for p in PARTS} for c in d.cells}
    unapportioned: dict[str, Amount] = {}
    by_stage: dict[str, Amount] = {}
    for r in d.jobs:
        stage, cost = str(r.get("stage") or "?"), JobCost.from_row(r)
        by_stage[stage] = by_stage.get(stage, Amount()).add(cost)
        cell = str(r.get("cell")) if r.get("cell") else None
        if stage in OWN and cell in parts:
            parts[cell][stage] = parts[cell][stage].add(cost)
            continue
        # distinct cells downstream (a seed's run counts for its cell); one outside the ledger keeps its share out
        fed = list(dict.fromkeys(cell_of_run.get(str(x), f"?{x}") for x in (r.get("feeds") or [])))
        if stage not in SHARED or not fed:
            unapportioned[stage] = unapportioned.get(stage, Amount()).add(cost)
            continue
        for name in fed:
            if name in parts:
                parts[name][stage] = parts[name][stage].add(cost, 1 / len(fed))
            else:
                unapportioned[stage] = unapportioned.get(stage, Amount()).add(cost, 1 / len(fed))
    trains = train_costs(d)
    rows = []
    for c in d.cells:
        m = d.metrics.get(c.cell)
        tot = total(parts[c.cell].values())
        gh = tot.gpu_hours
        rows.append(LedgerRow(
            cell=c.cell, teacher=c.teacher, student=c.student, method=c.method, data=c.data,
            seeds=max(1, len(c.run_names)), accuracy=m.accuracy if m else None,
            accuracy_se=m.accuracy_se if m else None, acc_per_1k_tokens=m.acc_per_1k_tokens if m else None,
            trainable_tokens=num(d.training.get(c.cell, {}).get("trainable_tokens")),
            ran_on=ran_on(trains[c.cell]) if trains.get(c.cell) else NA, parts=parts[c.cell], total=tot,
            energy_kwh=None if gh is None else em.kwh(gh), co2_kg=None if gh is None else em.co2_kg(gh)))
    return Ledger(rows, unapportioned, by_stage, em)


def f_amount(a: Amount) -> str:
    """'1.25 GPU-h', '0.0417 core-h', both joined by '+' when mixed; '*' when a job is unmeasured."""
    got = [f"{f_auto(v)} {unit}" for v, unit in ((a.gpu_hours, "GPU-h"), (a.cpu_core_hours, "core-h"))
           if v is not None]
    star = "*" if a.unmeasured else ""
    return (" + ".join(got) if got else NA) + star


TITLE = "Table 12. Cost ledger per cell: accuracy joined to measured cost"


def ledger_table(d: ReportData, ledger: Ledger | None = None) -> TableBlock:
    lg = ledger or build_ledger(d)
    if not lg.evaluated:
        return unavailable("ledger", TITLE, "no evaluated cells")
    t = TableBlock("ledger", TITLE, ["Teacher", "Student", "Method", "Data", "Accuracy (± SE)", "Acc / 1k tok",
                                     "Train tokens", "Train ran on", "Train", "Evaluate", "Generation share",
                                     "Compression share", "Total", "Energy (kWh)", "CO2 (kg)"])
    for r in lg.rows:
        cpu_only = r.total.resource == CPU  # energy is per GPU: none for a CPU-only cell, not zero
        t.rows.append([d.label(r.teacher), d.label(r.student), d.label(r.method), d.label(r.data),
                       f_acc_se(r.accuracy, r.accuracy_se), f_num(r.acc_per_1k_tokens, 4),
                       f_tokens(r.trainable_tokens), r.ran_on, *(f_amount(r.parts[p]) for p in PARTS),
                       f_amount(r.total), NO_GPU if cpu_only else f_auto(r.energy_kwh),
                       NO_GPU if cpu_only else f_auto(r.co2_kg)])
    t.notes.append("Cost: each job's own run time (jobcost.py: sacct ElapsedRaw on Slurm, start to exit locally) x "
                   "GPUs (GPU-h) for GPU jobs, x allocated cores (core-h) for jobs without GPUs; a cell's train "
                   "and evaluate jobs add up over retries and seeds. Total = train + evaluate + shares.")
    t.notes.append(RULE)
    em = lg.energy
    t.notes.append(f"Energy and CO2 for the GPU part of the total only: GPU-h x {em.tdp_w:g} W x PUE {em.pue:g}, "
                   f"x {em.gco2_per_kwh:g} g CO2/kWh (paper H.5); {NO_GPU}: the cell's jobs ran on CPUs only.")
    if any(a.unmeasured for r in lg.rows for a in r.parts.values()):
        t.notes.append("*: a job (or share) in it has no measured cost (see Table 11/11b); the number is a "
                       "lower bound.")
    if lg.unapportioned:
        t.notes.append("Not in any cell (jobs no evaluated cell was trained downstream of, e.g. model builds and "
                       "the judge): " + "; ".join(f"{s} {f_amount(a)}" for s, a in sorted(lg.unapportioned.items()))
                       + ".")
    return t


@dataclass
class CostAxis:
    """One Pareto panel's cost axis: per-cell totals in ONE unit, and the cells left out of it."""

    values: dict[str, float]
    unit: str   # "GPU-hours" | "CPU core-hours" | "hours"
    label: str  # names the unit and where the numbers come from
    left_out: list[str] = field(default_factory=list)

    def at(self, c: CellInfo) -> float | None:
        return self.values.get(c.cell)


def cost_axes(d: ReportData, ledger: Ledger | None = None) -> list[CostAxis]:
    """The Pareto figure's cost axes: one per resource the ledger's totals are in (GPU-hours, CPU
    core-hours), each with the cells whose whole measured total is in that resource; a cell with a
    mixed or partly unmeasured total is on no axis (a lower bound would look cheaper than it was)
    and is counted in the label. Without any job accounting: the optimizer loop's hours, labelled
    as such. Never empty: with no cell to place, one axis without values that says so."""
    lg = ledger or build_ledger(d)
    if not d.jobs:
        hours = {c: s / 3600 for c, tr in d.training.items() if (s := num(tr.get("train_seconds"))) is not None}
        return [CostAxis(hours, "hours", "training hours (optimizer loop; no job accounting, resources unknown)")]
    out = []
    evaluated = lg.evaluated
    for kind, unit in ((GPU, "GPU-hours"), (CPU, "CPU core-hours")):
        values = {r.cell: (r.total.gpu_hours if kind == GPU else r.total.cpu_core_hours) or 0.0
                  for r in evaluated if r.total.resource == kind and not r.total.unmeasured}
        if values:
            out.append(CostAxis(values, unit, f"total cost per cell, {unit}\n(train + evaluate + share of "
                                              "generation and compression; Table 12)"))
    placed = {c for a in out for c in a.values}
    left = [r.cell for r in evaluated if r.cell not in placed]
    if not out:  # an empty panel that says why
        return [CostAxis({}, "", "total cost per cell: no cell's total is measured in one resource", left)]
    if left:
        for a in out:
            a.left_out = left
            a.label += f"\n{len(left)} cell(s) left out (mixed resources or not measured)"
    return out
