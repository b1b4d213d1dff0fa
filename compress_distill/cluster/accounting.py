"""Measured GPU-hours, energy and CO2 of Slurm jobs (paper H.5), from `sacct`.

Per job: run seconds (ElapsedRaw: start to end, never the queue wait) x allocated GPUs
(AllocTRES `gres/gpu`); a job without GPUs costs CPU core-hours (AllocTRES `cpu`) and has no
energy or CO2 (the one cost rule: jobcost.py). Every attempt counts:
a requeued or preempted run held its GPUs too (`sacct --duplicates`). Energy assumes
each allocated GPU draws its TDP (700 W, H100 SXM) for the whole allocation, times the
data centre's PUE (1.15); CO2 = energy x grid intensity (default 79 gCO2/kWh; configurable).

`fetch_usage` is the one sacct call; `parse_usage`, `summarize` and `table11` are pure.
`run_jobs` finds the Slurm jobs of a store (the runner leaves a state file per attempt
under `<store>/<stage>/.jobs/<node>-<key>/`), so the paper's Table 11 is reported from
measured numbers:

    python -m compress_distill.cluster.accounting STORE [--gco2-per-kwh 79]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from ..backends.slurm_cli import Runner, check, run_command
from ..backends.slurm_parse import parsable_rows
from ..jobcost import GCO2_PER_KWH, NO_GPU, PUE, TDP_W, EnergyModel, JobCost, sacct_cost

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
    cpus: int | None = None  # AllocTRES cpu=

    @property
    def cost(self) -> JobCost:
        """This attempt through the one cost rule (jobcost.py): ElapsedRaw is run time, not queue time."""
        return sacct_cost(self.elapsed_s, self.gpus, self.cpus)

    @property
    def gpu_hours(self) -> float:
        return self.cost.gpu_hours or 0.0


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


def cpus_from_tres(tres: str) -> int | None:
    """'cpu=2,gres/gpu=4,mem=2G' -> 2; None when not recorded."""
    for item in tres.split(","):
        key, _, value = item.partition("=")
        if key == "cpu" and value.isdigit():
            return int(value)
    return None


def parse_usage(text: str) -> list[JobUsage]:
    """`sacct -X -D --parsable2 --noheader --format=<USAGE_FIELDS>` -> one JobUsage per attempt."""
    out = []
    for parts in parsable_rows(text, len(USAGE_FIELDS)):
        job_id, raw, state, elapsed, tres, submit, name = parts
        out.append(JobUsage(job_id, raw, name, state, float(elapsed) if elapsed.isdigit() else 0.0,
                            gpus_from_tres(tres), submit, cpus_from_tres(tres)))
    return out


def footprint(gpu_hours: float, *, tdp_w: float = TDP_W, pue: float = PUE,
              gco2_per_kwh: float = GCO2_PER_KWH) -> tuple[float, float]:
    """GPU-hours -> (energy kWh, CO2 kg)."""
    model = EnergyModel(tdp_w, pue, gco2_per_kwh)
    return model.kwh(gpu_hours), model.co2_kg(gpu_hours)


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


# --------------------------------------------------------------------------- Table 11 of a store

def run_jobs(store_root: Path | str, backend: str = "slurm") -> dict[str, str]:
    """Slurm job id -> node id for every job attempt the runner submitted into this store."""
    out: dict[str, str] = {}
    for job_dir in sorted(Path(store_root).glob("*/.jobs/*")):
        try:
            node = json.loads((job_dir / "job.json").read_text())["node"]
        except (OSError, ValueError, KeyError):
            continue
        for state in sorted(job_dir.glob("*.state.json")):
            try:
                rec = json.loads(state.read_text())
            except (OSError, ValueError):
                continue
            if rec.get("backend") == backend and rec.get("job_id"):
                out[str(rec["job_id"])] = node
    return out


def used_gpus(store_root: Path | str) -> dict[str, int]:
    """Node id -> the GPUs its committed job ran on, as the runner recorded in its manifest
    (`job.gpus_used`; 0 on a `device: cpu` profile). Nodes without that record are left out."""
    out: dict[str, int] = {}
    for job_dir in sorted(Path(store_root).glob("*/.jobs/*")):
        try:
            node = json.loads((job_dir / "job.json").read_text())["node"]
            used = json.loads((job_dir.parent.parent / job_dir.name / "manifest.json").read_text())["job"]["gpus_used"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(used, int):
            out[node] = used
    return out


@dataclass(frozen=True)
class Table11Row:
    node: str      # e.g. train/mini-teacher.tiny.full.raw
    stage: str
    jobs: int      # attempts (a requeued/retried job counts each time)
    gpus: int      # allocated GPUs of the last attempt
    hours: float   # run hours (sacct ElapsedRaw, never queue time), all attempts
    gpu_hours: float
    cpu_core_hours: float | None = None  # jobs without GPUs: allocated cores x hours


def table11(usages: Iterable[JobUsage], node_of: Mapping[str, str],
            gpus_used: Mapping[str, int] | None = None) -> list[Table11Row]:
    """Per node: GPUs, hours and GPU-hours from sacct rows (jobs not in `node_of` are left out).
    `gpus_used` (node -> GPUs, from the manifests: `used_gpus()`) overrides AllocTRES: the GRES of a
    `device: cpu` profile (the dev cluster) are fake, and its jobs cost CPU core-hours."""
    by_node: dict[str, list[JobUsage]] = {}
    for u in usages:
        node = node_of.get(u.raw_id) or node_of.get(u.job_id)
        if node is not None:
            if gpus_used is not None and node in gpus_used:
                u = replace(u, gpus=gpus_used[node])
            by_node.setdefault(node, []).append(u)
    rows = []
    for node, us in by_node.items():
        us.sort(key=lambda u: u.submit)
        costs = [u.cost for u in us]
        core_h = [c.cpu_core_hours for c in costs if c.cpu_core_hours is not None]
        rows.append(Table11Row(node, node.split("/", 1)[0], len(us), us[-1].gpus,
                               sum(u.elapsed_s for u in us) / 3600.0, sum(u.gpu_hours for u in us),
                               sum(core_h) if core_h else None))
    order = {"build": 0, "generate": 1, "compress": 2, "judge": 3, "train": 4, "evaluate": 5}
    return sorted(rows, key=lambda r: (order.get(r.stage, 9), r.node))


def format_table11(rows: list[Table11Row], *, gco2_per_kwh: float = GCO2_PER_KWH) -> str:
    """Markdown: one line per job node, then totals per stage with energy and CO2 (paper H.5).
    A job without GPUs shows CPU core-hours, and "n/a: no GPU" for GPU-hours, energy and CO2."""
    def core(r: Table11Row) -> str:
        return f"{r.cpu_core_hours:.4f}" if r.gpus == 0 and r.cpu_core_hours is not None else "—"

    lines = ["| node | GPUs | jobs | hours | GPU-hours | CPU core-hours |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.node} | {r.gpus} | {r.jobs} | {r.hours:.4f} | "
              f"{f'{r.gpu_hours:.4f}' if r.gpus else NO_GPU} | {core(r)} |" for r in rows]
    lines += ["", f"| stage | jobs | GPU-hours | energy (kWh) | CO2 (kg at {gco2_per_kwh:g} g/kWh) |",
              "|---|---:|---:|---:|---:|"]
    stages: dict[str, list[Table11Row]] = {}
    for r in rows:
        stages.setdefault(r.stage, []).append(r)
    for name, rs in [*stages.items(), ("total", rows)]:
        gh = sum(r.gpu_hours for r in rs)
        if not any(r.gpus for r in rs):
            lines.append(f"| {name} | {sum(r.jobs for r in rs)} | {NO_GPU} | {NO_GPU} | {NO_GPU} |")
            continue
        energy, co2 = footprint(gh, gco2_per_kwh=gco2_per_kwh)
        lines.append(f"| {name} | {sum(r.jobs for r in rs)} | {gh:.4f} | {energy:.4f} | {co2:.5f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compress_distill.cluster.accounting",
                                 description="Table 11 (GPU-hours per job node, energy, CO2) of a store's "
                                             "Slurm jobs, measured with one sacct call.")
    ap.add_argument("store", type=Path)
    ap.add_argument("--gco2-per-kwh", type=float, default=GCO2_PER_KWH)
    a = ap.parse_args(argv)
    node_of = run_jobs(a.store)
    if not node_of:
        print(f"no Slurm jobs recorded under {a.store}", file=sys.stderr)
        return 1
    rows = table11(fetch_usage(node_of), node_of, used_gpus(a.store))
    sys.stdout.write(format_table11(rows, gco2_per_kwh=a.gco2_per_kwh))
    return 0


if __name__ == "__main__":
    sys.exit(main())
