"""Measured GPU-hours, energy and CO2 of Slurm jobs (paper H.5), from `sacct`.

Per job: elapsed seconds x allocated GPUs (AllocTRES `gres/gpu`). Every attempt counts:
a requeued or preempted run held its GPUs too (`sacct --duplicates`). Energy assumes
each allocated GPU draws its TDP (700 W, H100 SXM) for the whole allocation, times the
data centre's PUE (1.15); CO2 = energy x grid intensity (default 79 gCO2/kWh; configurable).

`fetch_usage` is the one sacct call; `parse_usage` and `summarize` are pure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .backends.slurm_cli import Runner, check, run_command
from .backends.slurm_parse import parsable_rows

TDP_W = 700.0
PUE = 1.15
GCO2_PER_KWH = 79.0
USAGE_FIELDS = ("JobID", "JobIDRaw", "State", "ElapsedRaw", "AllocTRES", "Submit", "JobName")


@dataclass(frozen=True)
class JobUsage:
    job_id: str          # as sacct shows it: "123" or "21_3" (array task)
    raw_id: str
    name: str
    state: str
    elapsed_s: float
    gpus: int
    submit: str

    @property
    def gpu_hours(self) -> float:
        return self.elapsed_s * self.gpus / 3600.0


@dataclass(frozen=True)
class Footprint:
    jobs: int
    gpu_hours: float
    energy_kwh: float
    co2_kg: float


def gpus_from_tres(tres: str) -> int:
    """'cpu=2,gres/gpu:h100=4,gres/gpu=4,mem=2G' -> 4. Typed counts only when no plain one."""
    plain = None
    typed = 0
    for item in tres.split(","):
        key, _, value = item.partition("=")
        if not value.isdigit():
            continue
        if key == "gres/gpu":
            plain = int(value)
        elif key.startswith("gres/gpu:"):
            typed += int(value)
    return plain if plain is not None else typed


def parse_usage(text: str) -> list[JobUsage]:
    """`sacct -X -D --parsable2 --noheader --format=<USAGE_FIELDS>` -> one JobUsage per attempt."""
    out = []
    for parts in parsable_rows(text, len(USAGE_FIELDS)):
        job_id, raw, state, elapsed, tres, submit, name = parts
        out.append(JobUsage(job_id, raw, name, state, float(elapsed) if elapsed.isdigit() else 0.0,
                            gpus_from_tres(tres), submit))
    return out


def footprint(gpu_hours: float, *, tdp_w: float = TDP_W, pue: float = PUE,
              gco2_per_kwh: float = GCO2_PER_KWH) -> tuple[float, float]:
    """GPU-hours -> (energy kWh, CO2 kg)."""
    energy_kwh = gpu_hours * tdp_w / 1000.0 * pue
    return energy_kwh, energy_kwh * gco2_per_kwh / 1000.0


def summarize(usages: Iterable[JobUsage], key: Callable[[JobUsage], str] = lambda u: "total", *,
              tdp_w: float = TDP_W, pue: float = PUE, gco2_per_kwh: float = GCO2_PER_KWH) -> dict[str, Footprint]:
    """Group jobs (e.g. by run or stage, from the job name) and total each group."""
    hours: dict[str, float] = {}
    jobs: dict[str, set[str]] = {}
    for u in usages:
        k = key(u)
        hours[k] = hours.get(k, 0.0) + u.gpu_hours
        jobs.setdefault(k, set()).add(u.job_id)
    out = {}
    for k in sorted(hours):
        energy, co2 = footprint(hours[k], tdp_w=tdp_w, pue=pue, gco2_per_kwh=gco2_per_kwh)
        out[k] = Footprint(len(jobs[k]), hours[k], energy, co2)
    return out


def fetch_usage(job_ids: Iterable[str], *, since: str | None = None, runner: Runner = run_command,
                timeout: float = 60.0) -> list[JobUsage]:
    """ONE sacct call for all the ids. `since` (sacct -S) defaults to a year ago: without
    -S sacct may show only today's jobs."""
    ids = list(dict.fromkeys(str(j) for j in job_ids))
    if not ids:
        return []
    if since is None:
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 365 * 86400))
    argv = ["sacct", "--noheader", "--parsable2", "--allocations", "--duplicates", f"--starttime={since}",
            f"--jobs={','.join(ids)}", f"--format={','.join(USAGE_FIELDS)}"]
    return parse_usage(check(runner(argv, timeout)).stdout)
