"""GPU-hour estimates per node, seeded with the paper's measured times.

Seeds: Table 11 (student runs, `data/table11_compute.csv`) and the upstream
table (`data/upstream_compute.csv`). Measured durations of earlier runs of
the same node (from the artifact store's manifests) take precedence.

Assumptions where the paper reports no time (stated in README, "Cost model"):
- gpt-oss-120B generation: 0.5x the Qwen teacher's 43.5 h, because its traces
  are about half as long character for character (paper 5.1).
- compression of gpt-oss traces: 0.5x the matching Qwen-teacher compression.
- evaluation and judge jobs: no estimate (None).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from .jobcost import node_job_cost
from .plan import Node, Plan
from .store import ArtifactStore

GPT_OSS_SCALE = 0.5


@dataclass(frozen=True)
class Estimate:
    hours: float | None  # wall-clock hours of the job
    gpus: int
    source: str  # "measured" | "paper" | "assumption" | "none"

    @property
    def gpu_hours(self) -> float | None:
        return None if self.hours is None else self.hours * max(self.gpus, 1)


def _read_csv(name: str) -> list[dict[str, str]]:
    text = resources.files("compress_distill").joinpath("data", name).read_text()
    return list(csv.DictReader(text.splitlines()))


class CostModel:
    def __init__(self, measured_hours: Mapping[str, float] | None = None):
        # node id -> measured wall-clock hours (refinement from earlier runs)
        self.measured = dict(measured_hours or {})
        self.train: dict[tuple[str, str, str, str], tuple[int, float]] = {}
        for r in _read_csv("table11_compute.csv"):
            gpus = int(r["gpus"])
            # GPU-h is more precise than the rounded hours column (4.5 vs 4 x 1.1).
            self.train[(r["teacher"], r["student"], r["method"], r["data"])] = (gpus, float(r["gpu_hours"]) / gpus)
        self.generate: dict[str, float] = {}
        self.compress: dict[tuple[str, str], float] = {}
        for r in _read_csv("upstream_compute.csv"):
            if not r["hours"]:
                continue
            if r["stage"] == "generate":
                self.generate[r["teacher"]] = float(r["hours"])
            elif r["stage"] == "compress":
                self.compress[(r["teacher"], _compressor_key(r["model"]))] = float(r["hours"])

    def estimate(self, plan: Plan, node: Node) -> Estimate:
        gpus = node.job.gpus
        if node.id in self.measured:
            return Estimate(self.measured[node.id], gpus, "measured")
        if node.stage == "train" and node.cell is not None:
            c = node.cell
            hit = self.train.get((c.teacher, c.student, c.method, c.data))
            if hit is not None and hit[0] == c.gpus:
                return Estimate(hit[1], gpus, "paper")
        teacher = node.refs.get("teacher", "")
        if node.stage == "generate":
            if teacher in self.generate:
                return Estimate(self.generate[teacher], gpus, "paper")
            if self.generate and teacher.startswith("gpt-oss"):
                return Estimate(max(self.generate.values()) * GPT_OSS_SCALE, gpus, "assumption")
        if node.stage == "compress":
            model = plan.config.compressors[node.refs["compressor"]].model
            key = _compressor_key(model)
            if (teacher, key) in self.compress:
                return Estimate(self.compress[(teacher, key)], gpus, "paper")
            seeds = [h for (_, k), h in self.compress.items() if k == key]
            if seeds and teacher.startswith("gpt-oss"):
                return Estimate(seeds[0] * GPT_OSS_SCALE, gpus, "assumption")
        if node.job.kind == "cpu":
            return Estimate(0.0, 0, "none")
        return Estimate(None, gpus, "none")


def measured_hours(plan: Plan, store: ArtifactStore) -> dict[str, float]:
    """Run hours of the newest committed run of each job node (any key): the job's own clock
    (jobcost.node_job_cost: its state file), else the manifest's `seconds`, which also count
    the job's wait for a worker or slot (a job queued behind others would look that much longer)."""
    out = {}
    for nid, node in plan.nodes.items():
        if node.job.kind == "cpu":
            continue
        previous = store.previous_manifests(node.stage, node.name)
        if previous and not previous[0].get("placeholder") and previous[0].get("seconds") is not None:
            m = previous[0]
            states = []
            for f in sorted((store.root / node.stage / ".jobs" / f"{node.name}-{m.get('key')}").glob("*.state.json")):
                try:
                    states.append(json.loads(f.read_text()))
                except (OSError, ValueError):
                    continue
            own = node_job_cost(m, states).seconds
            out[nid] = (own if own is not None else float(m["seconds"])) / 3600
    return out


def _compressor_key(model: str) -> str:
    return model.rsplit("/", 1)[-1].lower()
