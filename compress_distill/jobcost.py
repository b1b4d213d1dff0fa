"""Measured cost of one node's job: the job's own run time and what it ran on (paper H.4-H.5).

One rule, used by Table 11, Table 11b, the Pareto figure and the Slurm accounting CLI:

- run seconds come from the job's own clock, never from its queue wait:
  Slurm: `sacct` ElapsedRaw (start to end of the allocation), which the Slurm backend writes
  into the job's state file when it sees the job end; local backend: the job process's own
  start to its exit (the state file's `elapsed_s`; while the exit is not recorded yet, its
  `started_at` to the node's commit); a node run inside the orchestrator: the manifest's
  `started_at`..`finished_at`, which wrap the stage call alone. The manifest's `seconds` of a
  backend job is NOT used: it starts before the submit, so it counts the wait for a worker
  or a Slurm slot.
- a job that ran on GPUs costs GPU-hours = GPUs x hours, and energy and CO2 by the paper's
  rule (each GPU at its TDP for the whole run, times the PUE; CO2 = energy x grid intensity);
- a job without GPUs (the mini world; a `device: cpu` profile, whose planned GPUs are not
  used) costs CPU core-hours = allocated cores x hours, and has no GPU-hours, energy or CO2:
  the paper's energy model is per GPU and says nothing about a CPU.

A value that was not measured is None, with the reason in `unmeasured`; callers print "—".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TDP_W = 700.0         # H100 SXM (paper H.5)
PUE = 1.15
GCO2_PER_KWH = 79.0   # Finnish grid average 2023 (paper H.5)
GPU, CPU, UNKNOWN = "gpu", "cpu", "unknown"
NO_GPU = "n/a: no GPU"


@dataclass(frozen=True)
class EnergyModel:
    tdp_w: float = TDP_W
    pue: float = PUE
    gco2_per_kwh: float = GCO2_PER_KWH

    def kwh(self, gpu_hours: float) -> float:
        return gpu_hours * self.tdp_w / 1000.0 * self.pue

    def co2_kg(self, gpu_hours: float) -> float:
        return self.kwh(gpu_hours) * self.gco2_per_kwh / 1000.0


@dataclass(frozen=True)
class JobCost:
    """What one job cost. `gpus` are the GPUs it ran on (0: a CPU job; None: not recorded, so
    neither GPU-hours nor core-hours can be given), `cpus` its allocated cores (None: not
    recorded). `clock` names where `seconds` came from."""

    seconds: float | None
    gpus: int | None
    cpus: int | None
    clock: str
    unmeasured: str | None = None  # why `seconds` (or the resources) are unknown

    @property
    def resource(self) -> str:
        if self.gpus is None:
            return UNKNOWN
        return GPU if self.gpus > 0 else CPU

    @property
    def hours(self) -> float | None:
        return None if self.seconds is None else self.seconds / 3600.0

    @property
    def gpu_hours(self) -> float | None:
        """GPUs x hours; None for a CPU job (it has no GPU-hours, not zero of them) or when unmeasured."""
        if self.gpus is None or self.resource != GPU or self.hours is None:
            return None
        return self.gpus * self.hours

    @property
    def cpu_core_hours(self) -> float | None:
        """Cores x hours of a CPU job; None for a GPU job (its cost is GPU-hours) or when unknown."""
        if self.resource != CPU or self.hours is None or self.cpus is None:
            return None
        return self.cpus * self.hours

    def cost(self) -> tuple[float | None, str]:
        """(value, unit) in the job's own unit: GPU-hours for a GPU job, CPU core-hours for a CPU job."""
        if self.resource == GPU:
            return self.gpu_hours, "GPU-hours"
        if self.resource == CPU:
            return self.cpu_core_hours, "CPU core-hours"
        return None, "unknown"

    def energy_kwh(self, model: EnergyModel = EnergyModel()) -> float | None:
        gh = self.gpu_hours
        return None if gh is None else model.kwh(gh)

    def co2_kg(self, model: EnergyModel = EnergyModel()) -> float | None:
        gh = self.gpu_hours
        return None if gh is None else model.co2_kg(gh)

    def to_row(self) -> dict[str, Any]:
        """The report's `jobs` columns (model.ReportInputs): elapsed_s is the measured run time."""
        return {"elapsed_s": self.seconds, "gpus": self.gpus, "cpus": self.cpus, "source": self.clock,
                "unmeasured": self.unmeasured}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> JobCost:
        """A `jobs` row back to a JobCost (rows given by hand need elapsed_s, gpus; cpus optional)."""
        secs, gpus, cpus = _num(row.get("elapsed_s")), _num(row.get("gpus")), _num(row.get("cpus"))
        return cls(seconds=secs, gpus=None if gpus is None else int(gpus), cpus=None if cpus is None else int(cpus),
                   clock=str(row.get("source") or "job"),
                   unmeasured=row.get("unmeasured") or (None if secs is not None else "no run time recorded"))


def _num(x: Any) -> float | None:
    if x is None or isinstance(x, bool | str):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if f == f and f not in (float("inf"), float("-inf")) else None


def node_job_cost(manifest: Mapping[str, Any], states: Sequence[Mapping[str, Any]] = ()) -> JobCost:
    """The measured cost of the job that produced a committed node.

    `manifest`: the node's manifest.json (runner.run_node): started_at, finished_at, and `job`
    with backend, job_id, gpus_used, cpus. `states`: the node's job state files
    (backends/common.py); only the one of the manifest's job_id counts (an earlier failed
    attempt is not the run that produced the artifact).
    """
    job = manifest.get("job") or {}
    backend = str(job.get("backend") or "inprocess")
    gpus_used = _num(job.get("gpus_used"))
    cpus = _num(job.get("cpus"))
    why: str | None = None
    if gpus_used is None:
        # Manifests written before the runner recorded the GPUs a job ran on: the planned count
        # is not evidence that a GPU was used (a `device: cpu` profile plans GPUs it never touches).
        why = "what the job ran on was not recorded (manifest of an older run)"
    gpus = None if gpus_used is None else int(gpus_used)
    cpus_i = None if cpus is None else int(cpus)
    if backend == "inprocess":  # ran inside the orchestrator: started/finished wrap the stage alone
        start, end = _num(manifest.get("started_at")), _num(manifest.get("finished_at"))
        secs = end - start if start is not None and end is not None else None
        if secs is None:
            why = why or "no start/end in the manifest"
        elif cpus_i is None:
            why = why or "the cores of a step run inside the orchestrator are not recorded"
        return JobCost(secs, gpus, cpus_i, "in-process stage", why)
    job_id = str(job.get("job_id") or "")
    mine = [s for s in states if str(s.get("job_id") or "") == job_id] if job_id else []
    if not mine:
        return JobCost(None, gpus, cpus_i, backend, why or f"no state file of job {job_id or '?'}")
    st = mine[-1]
    elapsed = _num(st.get("elapsed_s"))
    if elapsed is not None:
        clock = "sacct ElapsedRaw" if backend == "slurm" else f"{backend} job start to exit"
        return JobCost(elapsed, gpus, cpus_i, clock, why)
    started, committed = _num(st.get("started_at")), _num(manifest.get("finished_at"))
    if started is not None and committed is not None and committed >= started:
        # The runner commits as soon as the job wrote its result; its exit was not recorded yet.
        return JobCost(committed - started, gpus, cpus_i, f"{backend} job start to commit", why)
    return JobCost(None, gpus, cpus_i, backend, why or f"job {job_id} has no recorded run time yet")


def sacct_cost(elapsed_s: float | None, gpus: int | None, cpus: int | None) -> JobCost:
    """One sacct attempt (ElapsedRaw, AllocTRES counts) as a JobCost."""
    return JobCost(elapsed_s, gpus, cpus, "sacct ElapsedRaw", None if elapsed_s is not None else "no ElapsedRaw")


def total(costs: Sequence[JobCost]) -> dict[str, float | None]:
    """Sums over jobs: hours, GPU-hours (GPU jobs), CPU core-hours (CPU jobs with cores recorded).
    A sum with no measured member is None, not 0."""
    def s(values: list[float | None]) -> float | None:
        got = [v for v in values if v is not None]
        return sum(got) if got else None
    return {"hours": s([c.hours for c in costs]), "gpu_hours": s([c.gpu_hours for c in costs]),
            "cpu_core_hours": s([c.cpu_core_hours for c in costs])}
