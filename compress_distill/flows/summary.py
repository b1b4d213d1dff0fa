"""What a grid run shows about itself: plan, per-stage progress, results per cell. No Prefect here.

Everything is read from the plan and the artifact store (manifests, `.jobs/*/job.json`,
`records.parquet`), so a cell that was cached still shows the job, log and artifact that
produced it. `artifacts.py` publishes these as Prefect artifacts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..costmodel import CostModel, measured_hours
from ..plan import STAGES, Plan
from ..store import ArtifactStore

OUTCOMES = ("cached", "ran", "would_run", "failed", "blocked")
MAX_PLAN_ROWS = 200


def stage_order(node_ids: Iterable[str], plan: Plan) -> list[str]:
    present = {plan.nodes[n].stage for n in node_ids}
    return [s for s in STAGES if s in present]


def plan_markdown(plan: Plan, store: ArtifactStore, node_ids: list[str], dry_run: bool) -> str:
    cost = CostModel(measured_hours(plan, store))
    done = {n for n in node_ids if store.is_done(plan.nodes[n].stage, plan.nodes[n].name, plan.keys[n])}
    todo = [n for n in node_ids if n not in done]
    cluster = plan.config.cluster
    lines = [f"# Plan: {plan.config.name}{' (dry run)' if dry_run else ''}", "",
             f"{len(node_ids)} nodes selected of {len(plan.nodes)}; {len(done)} already in the store "
             f"(`{store.root}`), {len(todo)} to run. Backend `{cluster.backend}`"
             f"{f', partition `{cluster.partition}`' if cluster.partition else ''}.", "",
             "| stage | nodes | in store | to run | GPU jobs to run | est. GPU-h to run |",
             "|---|---:|---:|---:|---:|---:|"]
    for stage in stage_order(node_ids, plan):
        ids = [n for n in node_ids if plan.nodes[n].stage == stage]
        run = [n for n in ids if n not in done]
        gpu_jobs = [n for n in run if plan.nodes[n].job.gpus > 0 and plan.nodes[n].job.kind != "cpu"]
        gh = sum(cost.estimate(plan, plan.nodes[n]).gpu_hours or 0.0 for n in run)
        lines.append(f"| {stage} | {len(ids)} | {len(ids) - len(run)} | {len(run)} | {len(gpu_jobs)} | {gh:.1f} |")
    if todo:
        lines += ["", "## Nodes to run", "", "| node | job | GPUs | time limit |", "|---|---|---:|---|"]
        for n in todo[:MAX_PLAN_ROWS]:
            node = plan.nodes[n]
            res = cluster.job(node.job.kind)
            lines.append(f"| `{n}` | {node.job.kind} | {node.job.gpus} | {res.time_limit or '-'} |")
        if len(todo) > MAX_PLAN_ROWS:
            lines.append(f"| ... {len(todo) - MAX_PLAN_ROWS} more | | | |")
    return "\n".join(lines) + "\n"


def stage_counts(plan: Plan, node_ids: list[str], outcomes: Mapping[str, str]) -> list[dict[str, Any]]:
    """One row per stage: nodes and how many ended in each outcome (missing = still pending)."""
    rows = []
    for stage in stage_order(node_ids, plan):
        ids = [n for n in node_ids if plan.nodes[n].stage == stage]
        row: dict[str, Any] = {"stage": stage, "nodes": len(ids)}
        for o in OUTCOMES:
            row[o] = sum(1 for n in ids if outcomes.get(n) == o)
        row["pending"] = len(ids) - sum(row[o] for o in OUTCOMES)
        rows.append(row)
    return rows


def _job_file(store: ArtifactStore, plan: Plan, node_id: str) -> dict[str, Any]:
    node = plan.nodes[node_id]
    path = store.root / node.stage / ".jobs" / f"{node.name}-{plan.keys[node_id]}" / "job.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def node_links(plan: Plan, store: ArtifactStore, node_id: str) -> dict[str, str | None]:
    """Job id, log path and artifact path of a node (the committed run if any, else the last submission)."""
    node = plan.nodes[node_id]
    key = plan.keys[node_id]
    manifest = store.manifest(node.stage, node.name, key)
    job = _job_file(store, plan, node_id)
    job_id = (manifest or {}).get("job", {}).get("job_id") or job.get("job_id")
    log = job.get("log") if job.get("job_id") == job_id else None
    artifact = str(store.path(node.stage, node.name, key)) if manifest else None
    return {"job_id": str(job_id) if job_id else None, "log": log, "artifact": artifact}


def eval_metrics(store: ArtifactStore, plan: Plan, node_id: str) -> dict[str, float | None]:
    """Overall accuracy and mean completion tokens of an evaluate node, from its records table."""
    node = plan.nodes[node_id]
    manifest = store.manifest(node.stage, node.name, plan.keys[node_id])
    if not manifest:
        return {}
    metrics = manifest.get("metrics") or {}
    out: dict[str, float | None] = {}
    if isinstance(metrics.get("accuracy"), int | float):
        out["accuracy"] = float(metrics["accuracy"])
    records = store.path(node.stage, node.name, plan.keys[node_id]) / "records.parquet"
    # a truncated table would raise ArrowInvalid here; a corrupt artifact is recomputed by the next run
    if records.is_file() and store.is_done(node.stage, node.name, plan.keys[node_id]):
        cols = set(pq.read_schema(records).names)
        table = pq.read_table(records, columns=[c for c in ("correct", "completion_tokens") if c in cols])
        if table.num_rows and "correct" in cols and "accuracy" not in out:
            out["accuracy"] = float(pc.mean(table["correct"].cast("float64")).as_py())
        if table.num_rows and "completion_tokens" in cols:
            out["avg_tokens"] = float(pc.mean(table["completion_tokens"].cast("float64")).as_py())
    return out


def results_rows(plan: Plan, store: ArtifactStore, node_ids: list[str],
                 outcomes: Mapping[str, str]) -> list[dict[str, Any]]:
    """One row per selected cell: its train/evaluate outcome, job ids, logs, artifact and metrics."""
    selected = set(node_ids)
    rows = []
    for cell in plan.cells:
        tr, ev = f"train/{cell.name}", f"evaluate/{cell.name}"
        if tr not in selected:
            continue
        t_links, e_links = node_links(plan, store, tr), node_links(plan, store, ev)
        m = eval_metrics(store, plan, ev)
        rows.append({
            "cell": cell.name, "teacher": cell.teacher, "student": cell.student, "method": cell.method,
            "data": cell.data, "seed": cell.seed, "gpus": cell.gpus,
            "train": outcomes.get(tr, "pending"), "evaluate": outcomes.get(ev, "pending"),
            "accuracy": _round(m.get("accuracy"), 4),
            "avg_tokens": _round(m.get("avg_tokens"), 1),
            "train_job": t_links["job_id"], "eval_job": e_links["job_id"],
            "train_log": t_links["log"], "eval_log": e_links["log"],
            "artifact": e_links["artifact"] or t_links["artifact"],
        })
    return rows


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _path_link(path: str | None, text: str) -> str:
    return f"[{text}](file://{path})" if path else "-"


def results_markdown(config_name: str, rows: list[dict[str, Any]], failed: Mapping[str, str],
                     blocked: list[str], backend: str) -> str:
    ok = sum(1 for r in rows if r["evaluate"] in ("cached", "ran"))
    lines = [f"# Results: {config_name}", "",
             f"{len(rows)} cells, {ok} evaluated, {len(failed)} node(s) failed, {len(blocked)} blocked. "
             f"Job ids are {backend} job ids; paths are on the cluster filesystem.", "",
             "| cell | train | evaluate | accuracy | train job | eval job | logs | artifact |",
             "|---|---|---|---:|---|---|---|---|"]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        logs = " ".join(x for x in (_path_link(r["train_log"], "train"), _path_link(r["eval_log"], "eval"))
                        if x != "-") or "-"
        art = f"`{Path(r['artifact']).name}`" if r["artifact"] else "-"
        lines.append(f"| `{r['cell']}` | {r['train']} | {r['evaluate']} | {acc} | {r['train_job'] or '-'} | "
                     f"{r['eval_job'] or '-'} | {logs} | {art} |")
    if failed:
        lines += ["", "## Failed nodes", ""]
        for nid, msg in failed.items():
            first = (msg or "failed").strip().splitlines()[0]
            lines.append(f"- `{nid}`: {first}")
    if blocked:
        lines += ["", f"Blocked by a failed upstream node: {', '.join(f'`{b}`' for b in blocked)}"]
    return "\n".join(lines) + "\n"
