"""Benchmark: the full mini grid (the README's main command) from an empty store.

Not a test. Runs `compress-distill run CONFIG --store FRESH` as the user would, then
reads every committed node's manifest and reports:

- the grid's wall time (the issue's budget: under 30 minutes on 2 cores, aim 20);
- the baseline in the same run: the sum of the nodes' own seconds, i.e. the wall time of
  the same work run one node at a time with no overlap; wall / sum is what the DAG's
  overlap (two one-thread cells at once, training beside compression) buys;
- seconds per stage, and the longest nodes;
- a second, no-op run of the same command (everything cached): its wall time.

    .venv/bin/python bench/bench_mini_grid.py [--config configs/mini.yaml] [--keep DIR] [--json OUT]

The speed-up of two parallel one-thread cells over one two-thread cell is
bench/bench_parallel_cells.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "compress_distill.cli"]


def run_grid(config: Path, store: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([*CLI, "run", str(config), "--store", str(store), "--no-progress"], check=True, cwd=REPO)
    return time.perf_counter() - t0


def node_manifests(store: Path) -> list[dict[str, Any]]:
    out = []
    for path in store.glob("*/*/manifest.json"):
        if path.parent.parent.name.startswith("."):
            continue
        out.append(json.loads(path.read_text()))
    return out


def summarize(wall: float, manifests: list[dict[str, Any]], noop_wall: float) -> dict[str, Any]:
    per_stage: dict[str, float] = defaultdict(float)
    for m in manifests:
        per_stage[m["stage"]] += m["seconds"]
    serial = sum(per_stage.values())
    span = max(m["finished_at"] for m in manifests) - min(m["started_at"] for m in manifests)
    longest = sorted(manifests, key=lambda m: -m["seconds"])[:8]
    return {
        "wall_s": round(wall, 1), "wall_min": round(wall / 60, 2),
        "nodes": len(manifests), "node_seconds_sum": round(serial, 1),
        "nodes_span_s": round(span, 1),
        "overlap_ratio_sum_over_wall": round(serial / wall, 2),
        "per_stage_s": {k: round(v, 1) for k, v in sorted(per_stage.items(), key=lambda kv: -kv[1])},
        "longest_nodes": [(m["node"], round(m["seconds"], 1)) for m in longest],
        "noop_rerun_wall_s": round(noop_wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "mini.yaml")
    ap.add_argument("--keep", type=Path, help="store directory to use and keep (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cd-bench-grid-") as tmp:
        store = args.keep or Path(tmp) / "store"
        if store.exists() and any(store.iterdir()):
            sys.exit(f"{store} is not empty: the benchmark needs an empty store")
        wall = run_grid(args.config, store)
        noop = run_grid(args.config, store)
        summary = summarize(wall, node_manifests(store), noop)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
