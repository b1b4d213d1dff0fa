"""Benchmark: a no-op re-run of the full PAPER grid against the dev Slurm cluster (issue 6).

Not a test. What a nightly run costs when nothing changed, against a first planning pass:

  (a) plan          `compress-distill plan configs/paper.yaml --json` on an empty store
                    (the first planning pass: config, DAG, keys, cache status of 129 nodes);
  (b) dry run       `compress-distill run ... --dry-run` on the empty store: every node says
                    "would run", nothing is submitted;
  (c) no-op re-run  the store is seeded with a committed artifact for all 129 nodes (synthetic
                    manifests, marked `bench_seed`), then a real `run` (not dry): every node
                    is a cache hit, so no job may be submitted;
  (d) no-op dry     (c) with --dry-run.

Runs go through Prefect against a `prefect server` this script starts on 127.0.0.1 (as
nightly runs do under `serve`), so ephemeral-server start-up is not counted. The cluster
profile points at the dev cluster's default partition, so any job submitted would really
reach Slurm. Jobs are counted twice: the run record (every submission passes through it)
and `sacct` (this grid's job names, since the run started).

    nice -n 10 .venv/bin/python bench/bench_noop_rerun.py [--rounds 3] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from compress_distill.backends.devcluster import ensure_dev_cluster
from compress_distill.config import load_config, parse_config
from compress_distill.jobs.flags import job_name
from compress_distill.plan import Plan, build_plan
from compress_distill.status import node_statuses
from compress_distill.store import ArtifactStore

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "compress_distill.cli"]


def paper_on_dev_cluster(path: Path) -> Path:
    data = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    data["cluster"]["partition"] = None  # the dev cluster's default partition; not part of any key
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def seed_store(plan: Plan, store: ArtifactStore) -> None:
    """Commit a placeholder artifact for every node, as if a full run had finished."""
    for nid, node in plan.nodes.items():
        key = plan.keys[nid]
        tmp = store.begin(node.stage, node.name, key)
        store.commit(tmp, node.stage, node.name, key, {
            "node": nid, "stage": node.stage, "name": node.name, "key": key, "identity": plan.identity(nid),
            "job": {"kind": node.job.kind, "gpus": node.job.gpus, "job_id": None, "backend": "bench"},
            "rows": {}, "metrics": {}, "placeholder": True, "bench_seed": True,
            "started_at": time.time(), "finished_at": time.time(), "seconds": 0.0})


def start_server(home: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(home / "prefect-home"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
                "PREFECT_SERVER_API_PORT": str(port), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"})
    log = open(home / "server.log", "ab")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                             "127.0.0.1", "--port", str(port)], env=env, cwd=home, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5):
                return proc, env
        except OSError:
            time.sleep(1)
    proc.kill()
    raise SystemExit("prefect server did not start")


def timed(cmd: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=3600)
    wall = time.perf_counter() - t0
    if res.returncode not in ok:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return wall, json.loads(res.stdout)


def sacct_count(names: set[str], since: str) -> int:
    out = subprocess.run(["sacct", "-X", "--noheader", "--parsable2", f"--starttime={since}",
                          "--format=JobID,JobName%250"], capture_output=True, text=True, timeout=60).stdout
    return sum(1 for line in out.splitlines() if line.partition("|")[2] in names)


def run_record_jobs(store: Path, run_id: str) -> int:
    path = store / ".runs" / run_id / "jobs.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    ensure_dev_cluster()
    work = Path(tempfile.mkdtemp(prefix="bench-noop-"))
    server, env = start_server(work)
    try:
        cfg = paper_on_dev_cluster(work / "paper-dev.yaml")
        plan = build_plan(parse_config(yaml.safe_load(cfg.read_text()), cfg))
        names = {job_name(f"cd-{n.stage}-{n.name}-{plan.keys[nid]}") for nid, n in plan.nodes.items()}
        empty, seeded = work / "empty", work / "seeded"
        seed_store(plan, ArtifactStore(seeded))
        results: dict[str, list[dict[str, Any]]] = {"plan": [], "dry_run": [], "noop_rerun": [], "noop_dry_run": []}
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 2))
        for _ in range(args.rounds):
            wall, doc = timed([*CLI, "plan", str(cfg), "--json", "--store", str(empty)], env)
            t0 = time.perf_counter()  # the same pass in this process: config, DAG and keys, 129 statuses
            node_statuses(build_plan(load_config(cfg)), ArtifactStore(empty))
            results["plan"].append({"wall_s": wall, "inproc_s": time.perf_counter() - t0,
                                    "nodes": doc["totals"]["nodes"]})
            for label, store, extra in (("dry_run", empty, ["--dry-run"]), ("noop_rerun", seeded, []),
                                        ("noop_dry_run", seeded, ["--dry-run"])):
                wall, s = timed([*CLI, "run", str(cfg), "--json", "--store", str(store), *extra], env)
                results[label].append({"wall_s": wall, "flow_s": s["seconds"], "nodes": s["nodes"],
                                       "cached": len(s["cached"]), "would_run": len(s["would_run"]),
                                       "jobs_submitted": s["jobs_submitted"],
                                       "run_record_jobs": run_record_jobs(store, s["run_id"])})
        time.sleep(5)  # accounting lags slurmctld by a few seconds
        sbatch = sacct_count(names, since)
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
        shutil.rmtree(work, ignore_errors=True)

    def med(label: str, key: str) -> float:
        return statistics.median(r[key] for r in results[label])

    plan_s, plan_in = med("plan", "wall_s"), med("plan", "inproc_s")
    report: dict[str, Any] = {"rounds": args.rounds, "nodes": results["plan"][0]["nodes"],
                              "sbatch_jobs_seen_by_sacct": sbatch, "plan_wall_s": round(plan_s, 2),
                              "plan_inproc_s": round(plan_in, 3)}
    print(f"paper grid: {report['nodes']} nodes; medians of {args.rounds} rounds; Prefect server on 127.0.0.1")
    print("wall = the whole command (interpreter, imports); flow = the grid flow itself (run's JSON `seconds`)")
    print(f"{'pass':<14}{'wall s':>8}{'x plan':>8}{'flow s':>8}{'x plan':>8}{'jobs':>6}  nodes")
    print(f"{'plan':<14}{plan_s:>8.2f}{1.0:>8.2f}{plan_in:>8.2f}{1.0:>8.2f}{'-':>6}  {report['nodes']} statuses "
          "(flow column: the same pass in-process)")
    for label in ("dry_run", "noop_rerun", "noop_dry_run"):
        wall, flow = med(label, "wall_s"), med(label, "flow_s")
        jobs = max(r["jobs_submitted"] for r in results[label])
        r0 = results[label][0]
        report[label] = {"wall_s": round(wall, 2), "flow_s": round(flow, 2), "wall_ratio": round(wall / plan_s, 2),
                         "flow_ratio": round(flow / plan_in, 2), "jobs_submitted": jobs, "cached": r0["cached"],
                         "would_run": r0["would_run"]}
        print(f"{label:<14}{wall:>8.2f}{wall / plan_s:>8.2f}{flow:>8.2f}{flow / plan_in:>8.2f}{jobs:>6}  "
              f"cached {r0['cached']}, would run {r0['would_run']}")
    print(f"sbatch submissions of this grid seen by sacct during the benchmark: {sbatch}")
    if args.out:
        args.out.write_text(json.dumps({**report, "raw": results}, indent=2))
    assert sbatch == 0 and all(r["jobs_submitted"] == 0 for k in results if k != "plan" for r in results[k])


if __name__ == "__main__":
    main()
