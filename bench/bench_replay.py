"""Benchmark: the paper's DAG replayed through `compress-distill run` on the REAL dev Slurm cluster.

Not a test. What runs is the product: the Prefect flow, its scheduler (the one admission policy),
the job scripts from compress_distill/jobs, sbatch, the job watcher and the artifact store. Only
the payloads differ (`cluster.replay`): each job sleeps its cost-model hours x SCALE seconds,
after its inputs are committed, and stamps its start and end into its artifact; CPU steps do
nothing. The replay config is paper.yaml with the dev cluster as its profile: 2 nodes x 8 fake
GPUs, at most 8 GPU jobs at once, submit-ahead `--ahead` seconds.

Both policies (critical path, stage barrier) run in the same invocation, one after the other,
each on a fresh store, as `compress-distill run REPLAY.yaml --policy P`. Makespan = the first
sbatch (job.json) to the last job's own end stamp. The prediction is `plan --simulate`'s
(scheduler.simulate on the same tasks); the bound is max(critical path, GPU-h / GPUs).

Times come from the cost model (compress_distill/costmodel.py): Table 11, the upstream table,
and its stated ASSUMPTION for what the paper does not report (gpt-oss-120B generation = 0.5 x
43.5 h, its compressions = 0.5 x the Qwen-trace pass). Evaluation has no paper time: its 55 jobs
sleep 0 s but are real jobs (a GPU each), as in a run.

    .venv/bin/python bench/bench_replay.py [--scale 1] [--ahead 2] [--policies critical-path,stage-barrier]
                                          [--json out.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from compress_distill.backends.devcluster import ensure_dev_cluster, partition_nodes
from compress_distill.config import StudyConfig, load_config
from compress_distill.costmodel import CostModel
from compress_distill.jobs.replay import gates, job_records, replay_profile, spans
from compress_distill.plan import Plan, build_plan
from compress_distill.scheduler import POLICIES, Pool, lower_bound, simulate_tasks, tasks_from_plan

REPO = Path(__file__).resolve().parents[1]


def replay_config(paper: Path, scale: float, ahead_s: float, dest: Path) -> Path:
    """paper.yaml with the dev cluster as its profile and sleep payloads."""
    data = yaml.safe_load(paper.read_text())
    data["cluster"] = replay_profile(scale, ahead_s, partition_nodes("debug"),
                                     max_concurrent_gpu_jobs=data["cluster"].get("max_concurrent_gpu_jobs"))
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def predicted(plan: Plan, cfg: StudyConfig, policy: str) -> dict[str, float]:
    """What `plan --simulate` predicts for this pool and policy, and the bound."""
    tasks = tasks_from_plan(plan, CostModel())
    pool = Pool.from_profile(cfg.cluster)
    sim = simulate_tasks(tasks, pool, policy)  # type: ignore[arg-type]
    bound, cp, gpu_h = lower_bound(tasks, pool)
    return {"predicted_h": sim.makespan_h, "bound_h": bound, "critical_path_h": cp, "total_gpu_h": gpu_h}


def measure(plan: Plan, store: Path) -> dict[str, Any]:
    """Makespan and latencies from the store: job.json (sbatch time) and each artifact's stamps."""
    submitted = {nid: float(rec["submitted_at"]) for nid, rec in job_records(store).items()}
    span = spans(store)
    seconds = [float(m["seconds"]) for man in store.glob("*/*/manifest.json")
               if (m := json.loads(man.read_text()))["job"]["job_id"] is None]  # in-process CPU steps
    t0 = min(submitted.values())
    jobs = set(span)
    handover, ahead = [], 0
    for nid, (start, _) in span.items():
        g = gates(plan, nid, jobs)
        ready = max([span[x][1] for x in g], default=t0)
        if submitted[nid] < ready:
            ahead += 1
            handover.append(start - ready)  # queued ahead: its start after its inputs' jobs ended
    return {
        "jobs": len(span), "submitted_ahead": ahead,
        "makespan_s": max(e for _, e in span.values()) - t0,
        "first_start_s": min(s for s, _ in span.values()) - t0,
        "handover_s": {"median": statistics.median(handover), "p90": sorted(handover)[int(0.9 * len(handover))],
                       "max": max(handover)} if handover else None,
        "cpu_step_s": {"n": len(seconds), "median": statistics.median(seconds)} if seconds else None,
    }


def run_policy(cfg_path: Path, plan: Plan, cfg: StudyConfig, policy: str, store: Path, scale: float) -> dict[str, Any]:
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "compress_distill.cli", "run", str(cfg_path), "--store", str(store),
                           "--policy", policy, "--json", "--no-progress"], capture_output=True, text=True, cwd=REPO)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run --policy {policy} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    got = measure(plan, store)
    pred = predicted(plan, cfg, policy)
    measured_h = got["makespan_s"] / scale
    return {
        "policy": policy, "nodes_ran": len(summary["ran"]), "jobs_submitted": summary["jobs_submitted"],
        "run_wall_s": round(wall, 1), **{k: round(v, 3) for k, v in pred.items()},
        "measured_h": round(measured_h, 3),
        "measured_over_bound": round(measured_h / pred["bound_h"], 4),
        "measured_over_predicted": round(measured_h / pred["predicted_h"], 4),
        "predicted_over_bound": round(pred["predicted_h"] / pred["bound_h"], 4),
        **{k: v for k, v in got.items() if k != "makespan_s"}, "makespan_s": round(got["makespan_s"], 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "paper.yaml")
    ap.add_argument("--scale", type=float, default=1.0, help="seconds per paper hour")
    ap.add_argument("--ahead", type=float, help="submit-ahead horizon in seconds (default: 2 x scale)")
    ap.add_argument("--policies", default="critical-path,stage-barrier", help="comma-separated, run in this order")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--keep", type=Path, help="keep the replay config and stores under this directory")
    args = ap.parse_args()
    policies = [p for p in args.policies.split(",") if p]
    bad = [p for p in policies if p not in POLICIES]
    if bad:
        ap.error(f"unknown policies {bad}; one of {POLICIES}")
    ensure_dev_cluster()
    work = args.keep or Path(tempfile.mkdtemp(prefix="cd-replay-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = replay_config(args.config, args.scale, args.ahead if args.ahead is not None else 2 * args.scale,
                             work / "replay.yaml")
    cfg = load_config(cfg_path)
    plan = build_plan(cfg)
    results = []
    for policy in policies:
        res = run_policy(cfg_path, plan, cfg, policy, work / f"store-{policy}-{int(time.time())}", args.scale)
        results.append(res)
        print(json.dumps(res), flush=True)
    out = {"scale_s_per_h": args.scale, "ahead_s": cfg.cluster.submit_ahead_s, "results": results}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
