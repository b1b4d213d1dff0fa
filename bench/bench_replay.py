"""Benchmark: replay the paper's schedule as sleep jobs on the REAL dev Slurm cluster (issues 4 and 7).

Not a test. Two replays, each run twice in the same invocation (the project's scheduler,
then the naive stage-barrier submission), on 2 nodes x 8 fake GPUs:

  train  issue 4: the 55 training jobs only, Table 11 GPUs and hours. Baseline barriers:
         the config's grid blocks one after another (qwen-main -> gptoss-main ->
         qwen-truncation), each block in plan order.
  dag    issue 7: the whole DAG: 2 teacher generations, 4 compression passes, 55 training
         cells (plus the 0-hour CPU steps and evaluations). Baseline barriers: generate all
         -> compress all -> train all, each stage in plan order.

Times come from the cost model (compress_distill/costmodel.py): Table 11, the upstream
table, and its stated ASSUMPTION for what the paper does not report: gpt-oss-120B
generation = 0.5 x the Qwen teacher's 43.5 h = 21.75 h, gpt-oss-trace compression = 0.5 x
the Qwen-trace pass. Verify/derive/prepare/report are CPU steps of ~0 h and evaluation
has no paper time: all of them count as 0 h and complete in the driver without a job.

Each job is `sleep <hours x SCALE>` with the task's GPU count, pinned (--nodelist) to the
node the scheduler placed it on, and writes its own start and end stamps (ns resolution).
The driver (compress_distill/schedule_slurm.py) submits a task when it can start, and with
`--ahead S` also what the scheduler's forecast starts within the next S seconds, queued
behind the jobs it waits for (--dependency), so that slurmctld starts it without waiting
for the driver. It polls all live jobs with one batched squeue/sacct per cycle. The same
Scheduler runs on a simulated clock for the prediction.

    .venv/bin/python bench/bench_replay.py [--scale 1] [--ahead 2] [--only train|dag] [--json out.json]

SCALE is seconds per paper hour; the issues ask for 1 h -> 1 s. Makespan = first sbatch to
the last job's end stamp. At that scale Slurm's own latency matters: the first job waits
for slurmctld's next 1-s pass, and each hand-over on a node costs ~40 ms (README,
"Scheduling"). The report gives each job's start latency (its start stamp minus the end
stamp of the last job it was queued behind, or its sbatch) and the prediction with the
median latency added to every job.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from compress_distill.backends.devcluster import ensure_dev_cluster, partition_nodes
from compress_distill.backends.slurm_cli import check, run_command
from compress_distill.config import load_config
from compress_distill.costmodel import CostModel
from compress_distill.plan import Node, Plan, build_plan
from compress_distill.schedule_slurm import (
    DriveResult,
    read_stamps,
    run_on_backend,
    sleep_job_name,
    sleep_submitter,
)
from compress_distill.scheduler import (
    Policy,
    Pool,
    Scheduler,
    SimResult,
    Task,
    simulate_tasks,
    task_priorities,
    tasks_from_plan,
    with_overhead,
)

REPO = Path(__file__).resolve().parents[1]
POLICIES: tuple[Policy, ...] = ("critical-path", "stage-barrier")


def replay_tasks(plan: Plan, cost: CostModel, which: str) -> dict[str, Task]:
    if which == "dag":
        return tasks_from_plan(plan, cost)
    blocks = [b.name for b in plan.config.grid]

    def block(node: Node) -> int:
        return blocks.index(node.cell.block) if node.cell else 0

    return tasks_from_plan(plan, cost, stages=["train"], phase=block)


def sacct_times(job_ids: list[str]) -> dict[str, tuple[float, float, str]]:
    """job id -> (start, end, node) in epoch seconds from accounting (1 s resolution)."""
    res = check(run_command(["sacct", "-X", "-n", "-P", f"--jobs={','.join(job_ids)}",
                             "--format=JobID,Start,End,NodeList"], 60))
    out = {}
    for line in res.stdout.splitlines():
        jid, start, end, node = line.split("|")
        if start[:1].isdigit() and end[:1].isdigit():
            out[jid] = (_epoch(start), _epoch(end), node)
    return out


def foreign_jobs(own: set[str], t0: float, t1: float) -> list[str]:
    """Other sessions' jobs that held GPUs on the cluster during [t0, t1]: they took GPUs from the
    replay (told apart by job id: with --state, sacct may print a job's name as "allocation")."""
    fmt = "%Y-%m-%dT%H:%M:%S"
    res = run_command(["sacct", "-a", "-X", "-n", "-P", f"--starttime={time.strftime(fmt, time.localtime(t0))}",
                       f"--endtime={time.strftime(fmt, time.localtime(t1))}", "--state=R,CD,F,CA,TO,OOM,NF",
                       "--format=JobID,JobName,Start,End,AllocTRES"], 60)
    out = []
    for line in res.stdout.splitlines():
        jid, name, start, end, tres = (line.split("|") + [""] * 5)[:5]
        if jid in own or not start[:1].isdigit() or "gres/gpu" not in tres:
            continue
        s, e = _epoch(start), (_epoch(end) if end[:1].isdigit() else t1)
        if s < t1 and e > t0:
            out.append(f"{jid} {name} {start}..{end} {tres}")
    return out


def _epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()


def replay(tasks: dict[str, Task], pool: Pool, policy: Policy, scale: float, nodes: list[str], partition: str,
           workdir: Path, poll_s: float, ahead_s: float) -> dict[str, Any]:
    sim: SimResult = simulate_tasks(tasks, pool, policy)
    tag = f"rp{uuid.uuid4().hex[:6]}"
    prio = {tid: math.ceil(h * 60) for tid, h in task_priorities(tasks).items()}  # as node_priorities
    backend, submit = sleep_submitter(workdir / tag, scale, tag=tag, partition=partition, gpu_type=None,
                                      pin_nodes=nodes, priorities=prio, stamps=True)
    sched = Scheduler(tasks, pool, policy)
    wall0, mono0 = time.time(), time.monotonic()
    res: DriveResult = run_on_backend(sched, backend, submit, node_names=nodes, poll_s=poll_s,
                                      timeout_s=3 * sim.makespan_h * scale + 300, ahead_s=ahead_s,
                                      seconds_per_hour=scale, clock=lambda: time.monotonic() - mono0)
    wall1 = time.time()
    jobs = [r for r in res.rows if r.job_id]
    # the makespan a user sees: first sbatch -> the last job's own end stamp (not the poll that saw it)
    stamps = [read_stamps(workdir / tag, sleep_job_name(tag, r.task)) for r in jobs]
    first_submit = wall0 + min(r.submit_s for r in jobs)
    stamped_s = max(s[1] for s in stamps if s) - first_submit if all(stamps) else None
    acct = sacct_times([r.job_id for r in jobs if r.job_id])
    acct_span = (max(e for _, e, _ in acct.values()) - min(s for s, _, _ in acct.values())) if acct else None
    # per job: own start stamp - the moment it could start (the end stamp of the last job it
    # was queued behind, or its sbatch): Slurm's start latency
    span = {r.job_id: st for r, st in zip(jobs, stamps, strict=True) if st}
    overhead = [span[r.job_id][0] - max([wall0 + r.submit_s] + [span[j][1] for j in r.waits_for if j in span])
                for r in jobs if r.job_id in span]
    measured_h = (stamped_s if stamped_s is not None else res.makespan_s) / scale
    # the same simulation with every job longer by the median latency: what is left between
    # it and the measurement is the scheduler's, not Slurm's
    lat_h = statistics.median(overhead) / scale if overhead else 0.0
    with_lat = simulate_tasks(with_overhead(tasks, lat_h), pool, policy)
    return {
        "policy": policy, "ahead_s": ahead_s, "tag": tag, "jobs": len(jobs), "polls": res.polls,
        "failed": res.failed, "predicted_h": round(sim.makespan_h, 3),
        "measured_s": round(stamped_s if stamped_s is not None else res.makespan_s, 3),
        "driver_seen_s": round(res.makespan_s, 3),
        "first_start_delay_s": round(min(s[0] for s in stamps if s) - first_submit, 3) if any(stamps) else None,
        "measured_h": round(measured_h, 3), "sacct_span_h": round(acct_span / scale, 3) if acct_span else None,
        "bound_h": round(sim.lower_bound_h, 3), "critical_path_h": round(sim.critical_path_h, 3),
        "total_gpu_h": round(sim.total_gpu_h, 2),
        "predicted_over_bound": round(sim.ratio, 4), "measured_over_bound": round(measured_h / sim.lower_bound_h, 4),
        "measured_over_predicted": round(measured_h / sim.makespan_h, 4),
        "predicted_with_latency_h": round(with_lat.makespan_h, 3),
        "measured_over_predicted_with_latency": round(measured_h / with_lat.makespan_h, 4),
        "start_latency_s": {"median": round(statistics.median(overhead), 3),
                                 "mean": round(statistics.fmean(overhead), 3), "max": round(max(overhead), 3)}
        if overhead else None,
        "raw_before_compress": raw_before_compress(res, tasks),
        "timeline": [[r.task, r.slurm_node, r.gpus, round(span[r.job_id][0] - first_submit, 3),
                      round(span[r.job_id][1] - first_submit, 3)] for r in jobs if r.job_id in span],
        "foreign_gpu_jobs": foreign_jobs({r.job_id for r in jobs if r.job_id}, wall0, wall1),
    }


def raw_before_compress(res: DriveResult, tasks: dict[str, Task]) -> list[str]:
    """Raw-trace training cells seen RUNNING before a compression pass of the same teacher had ended."""
    comp_end: dict[str, float] = {}
    for r in res.rows:
        if tasks[r.task].stage == "compress" and r.end_s is not None:
            teacher = r.task.split("/", 1)[1].split(".")[0]
            comp_end[teacher] = max(comp_end.get(teacher, 0.0), r.end_s)
    out = []
    for r in res.rows:
        if tasks[r.task].stage == "train" and r.task.endswith(".raw") and r.running_s is not None:
            teacher = r.task.split("/", 1)[1].split(".")[0]
            if teacher in comp_end and r.running_s < comp_end[teacher]:
                out.append(r.task)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "paper.yaml"))
    ap.add_argument("--scale", type=float, default=1.0, help="seconds per paper hour")
    ap.add_argument("--only", choices=("train", "dag"), help="run one replay (default: both)")
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated, run in this order")
    ap.add_argument("--partition", default="debug")
    ap.add_argument("--poll", type=float, default=0.1, help="seconds between batched polls (each takes ~0.2 s)")
    ap.add_argument("--ahead", type=float, default=2.0,
                    help="submit-ahead horizon in seconds (0: submit each job only once it can start)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--keep", type=Path, help="keep the jobs' logs and stamps under this directory")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    ensure_dev_cluster()
    plan = build_plan(load_config(args.config))
    cost = CostModel()
    nodes = partition_nodes(args.partition)
    gres = check(run_command(["sinfo", "-h", "-p", args.partition, "-o", "%G"], 20)).stdout
    m = re.search(r"gpu:(?:[^:,(]+:)?(\d+)", gres)
    if not m:
        raise SystemExit(f"partition {args.partition} has no GPUs: {gres.strip()}")
    gpus = int(m.group(1))
    pool = Pool.from_profile(plan.config.cluster, nodes=len(nodes), gpus_per_node=gpus)
    print(f"dev cluster: {len(nodes)} nodes ({', '.join(nodes)}) x {gpus} GPUs; scale 1 h -> {args.scale:g} s; "
          f"pool caps: max {pool.max_jobs} GPU jobs, shares {dict(pool.shares)}", flush=True)
    policies = [p for p in args.policies.split(",") if p]
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-replay-", ignore_cleanup_errors=True) as tmp:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            tmp = str(args.keep)
        for which in ([args.only] if args.only else ["train", "dag"]):
            tasks = replay_tasks(plan, cost, which)
            n_jobs = sum(1 for t in tasks.values() if t.hours > 0)
            results[which] = []
            for policy in policies:
                print(f"[{which}] {policy}: {n_jobs} jobs ...", flush=True)
                r = replay(tasks, pool, policy, args.scale, nodes, args.partition, Path(tmp), args.poll,  # type: ignore[arg-type]
                           args.ahead)
                results[which].append(r)
                print(f"  measured {r['measured_h']:.2f} h ({r['measured_s']:.0f} s), predicted {r['predicted_h']:.2f} h,"
                      f" bound {r['bound_h']:.2f} h -> measured/bound {r['measured_over_bound']:.3f},"
                      f" measured/predicted {r['measured_over_predicted']:.3f} (with Slurm latency"
                      f" {r['measured_over_predicted_with_latency']:.3f}); per-job start latency s {r['start_latency_s']};"
                      f" raw cells started before compression ended: {len(r['raw_before_compress'])};"
                      f" foreign GPU jobs during the run {len(r['foreign_gpu_jobs'])}", flush=True)
    print()
    print(f"{'replay':6s} {'policy':14s} {'bound h':>8s} {'pred h':>8s} {'meas h':>8s} {'meas/bound':>10s} "
          f"{'pred/bound':>10s} {'meas/pred':>9s}")
    for which, rows in results.items():
        for r in rows:
            print(f"{which:6s} {r['policy']:14s} {r['bound_h']:8.2f} {r['predicted_h']:8.2f} {r['measured_h']:8.2f} "
                  f"{r['measured_over_bound']:10.3f} {r['predicted_over_bound']:10.3f} "
                  f"{r['measured_over_predicted']:9.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"scale_s_per_h": args.scale, "nodes": nodes, "gpus_per_node": gpus,
                                         "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
