"""The `compress-distill` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .config import ConfigError, StudyConfig, load_config
from .costmodel import CostModel, measured_hours
from .plan import Plan, build_plan
from .status import explain as explain_node
from .status import node_statuses
from .store import ArtifactStore

app = typer.Typer(help="Reasoning-trace compression for knowledge distillation, as one cached DAG.",
                  no_args_is_help=True, add_completion=False)
console = Console()
err_console = Console(stderr=True)

ConfigArg = Annotated[Path, typer.Argument(help="study config YAML, e.g. configs/mini.yaml")]
StoreOpt = Annotated[Path | None, typer.Option("--store", help="artifact store root (default: config store_root)")]
SelectOpt = Annotated[list[str] | None, typer.Option(
    "--select", "-s", help="cell filter AXIS=GLOB (teacher/student/method/data), repeatable")]


def _load(config: Path) -> StudyConfig:
    try:
        return load_config(config)
    except ConfigError as err:
        err_console.print(f"[red]error:[/red] {err}", markup=True, highlight=False)
        raise typer.Exit(2) from None


def _plan(config: Path) -> Plan:
    cfg = _load(config)
    try:
        return build_plan(cfg)
    except ValueError as err:
        err_console.print(f"[red]error:[/red] {config}: {err}", highlight=False)
        raise typer.Exit(2) from None


def _parse_select(select: list[str] | None) -> dict[str, str]:
    out = {}
    for item in select or []:
        axis, sep, pattern = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r}: expected AXIS=GLOB, e.g. student=qwen*")
        out[axis.strip()] = pattern.strip()
    return out


def plan_document(plan: Plan, store: ArtifactStore) -> dict[str, Any]:
    """The stable `plan --json` document (see README, "plan --json")."""
    cfg = plan.config
    cost = CostModel(measured_hours(plan, store))
    statuses = node_statuses(plan, store)
    nodes: list[dict[str, Any]] = []
    est_by_node = {}
    for nid, node in plan.nodes.items():
        est = cost.estimate(plan, node)
        est_by_node[nid] = est
        res = cfg.cluster.job(node.job.kind)
        nodes.append({
            "id": nid, "stage": node.stage, "name": node.name, "key": plan.keys[nid], "deps": list(node.deps),
            "cell": node.cell.name if node.cell else None,
            "status": statuses[nid].state, "reason": statuses[nid].reason,
            "job": {"kind": node.job.kind, "gpus": node.job.gpus, "backend": cfg.cluster.backend,
                    "partition": cfg.cluster.partition, "time_limit": res.time_limit,
                    "cpus_per_task": res.cpus_per_task, "mem": res.mem},
            "est_hours": est.hours, "est_gpu_hours": est.gpu_hours, "estimate_source": est.source,
        })
    cells = []
    for c in plan.cells:
        est = est_by_node[f"train/{c.name}"]
        cells.append({"name": c.name, "teacher": c.teacher, "student": c.student, "method": c.method,
                      "data": c.data, "block": c.block, "gpus": c.gpus, "est_hours": est.hours,
                      "est_gpu_hours": est.gpu_hours, "estimate_source": est.source})

    def total(stages: tuple[str, ...]) -> float:
        return round(sum(n["est_gpu_hours"] or 0.0 for n in nodes if n["stage"] in stages), 3)

    return {
        "schema_version": 1,
        "config": cfg.name,
        "cells": cells,
        "nodes": nodes,
        "edges": [list(e) for e in plan.edges],
        "totals": {
            "cells": len(cells), "nodes": len(nodes),
            "train_gpu_hours": total(("train",)),
            "upstream_gpu_hours": total(("generate", "compress", "judge")),
            "all_gpu_hours": total(tuple({n["stage"] for n in nodes})),
            "status": {s: sum(1 for n in nodes if n["status"] == s) for s in ("done", "stale", "run")},
        },
    }


@app.command()
def plan(config: ConfigArg, store: StoreOpt = None,
         as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """Print the DAG: nodes, cache status, Slurm resources and estimated GPU-hours."""
    p = _plan(config)
    doc = plan_document(p, ArtifactStore(store or p.config.store_root))
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    style = {"done": "green", "stale": "yellow", "run": "cyan"}
    table = Table(title=f"plan {doc['config']}: {len(doc['cells'])} cells, {len(doc['nodes'])} nodes")
    for col in ("node", "status", "job", "est GPU-h", "reason"):
        table.add_column(col, overflow="fold")
    for n in doc["nodes"]:
        job = n["job"]
        res = f"{job['kind']} x{job['gpus']}gpu {job['time_limit']}" if job["kind"] != "cpu" else "cpu"
        gh = "-" if n["est_gpu_hours"] is None else f"{n['est_gpu_hours']:.1f}"
        table.add_row(n["id"], f"[{style[n['status']]}]{n['status']}[/]", res, gh, n["reason"])
    console.print(table)
    t = doc["totals"]
    console.print(f"training {t['train_gpu_hours']:.1f} GPU-h, upstream {t['upstream_gpu_hours']:.1f} GPU-h "
                  f"(estimates; cost model seeded with the paper's Table 11 and upstream times); "
                  f"status: {t['status']}")


@app.command()
def explain(config: ConfigArg, node: Annotated[str, typer.Argument(help="node id, e.g. train/<cell>")],
            store: StoreOpt = None) -> None:
    """Say why NODE will (re-)run: the diff of its identity against the stored manifest."""
    p = _plan(config)
    try:
        lines = explain_node(p, ArtifactStore(store or p.config.store_root), node)
    except KeyError as err:
        err_console.print(f"[red]error:[/red] {err.args[0]}", highlight=False)
        raise typer.Exit(2) from None
    for line in lines:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


@app.command()
def verify(
    path: Annotated[Path, typer.Argument(help="JSONL of {response, answer, answer_type[, choices]}; - for stdin")],
    workers: Annotated[int, typer.Option(help="processes for LaTeX verification")] = 1,
    expect_think: Annotated[bool, typer.Option(help="a response without <think> counts as truncated")] = False,
) -> None:
    """Audit answer extraction: each record comes back on stdout with `extracted` and `correct` added."""
    from .verify_cli import verify_jsonl

    if str(path) == "-":
        counts = verify_jsonl(sys.stdin.buffer, sys.stdout, workers=workers, expect_think=expect_think)
    else:
        try:
            stream = path.open("rb")  # bytes: a bad UTF-8 line is reported by number, not fatal
        except OSError as err:
            err_console.print(f"[red]error:[/red] {path}: {err.strerror}", highlight=False)
            raise typer.Exit(2) from None
        with stream:
            counts = verify_jsonl(stream, sys.stdout, workers=workers, expect_think=expect_think)
    err_console.print(f"{counts['records']} records, {counts['correct']} correct, "
                      f"{counts['errors']} malformed line(s)", highlight=False)
    if counts["errors"]:
        raise typer.Exit(1)


@app.command()
def render(config: ConfigArg, outdir: Annotated[Path, typer.Argument(help="directory for the rendered files")],
           override: Annotated[list[str] | None, typer.Option(
               "--override", help="job resource override KEY=VALUE for every job, e.g. partition=debug")] = None,
           ) -> None:
    """Write every cell's Axolotl YAML and the sbatch scripts of every job (for review or manual sbatch)."""
    from .render_all import render_study

    overrides = {}
    for item in override or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE")
        overrides[k.strip()] = v.strip()
    try:
        files = render_study(_load(config), outdir, overrides=overrides or None)
    except (ValueError, KeyError) as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False)
        raise typer.Exit(2) from None
    console.print(f"wrote {len(files)} files under {outdir}")


def _prefect_defaults() -> None:
    # Ephemeral mode starts a throwaway API server per process; give it time on a busy 2-core box.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # The throwaway server logs harmless CancelledError tracebacks while it shuts down.
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)


@app.command()
def run(config: ConfigArg, store: StoreOpt = None, select: SelectOpt = None,
        force: Annotated[list[str] | None, typer.Option("--force", help="node-id glob to re-run, repeatable")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="resolve the DAG, execute nothing")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="print the run summary as JSON")] = False,
        ) -> None:
    """Run the study's DAG through Prefect (ephemeral server unless PREFECT_API_URL is set)."""
    _load(config)  # fail fast with a clean message, before Prefect starts
    _prefect_defaults()
    from .flows.grid import GridFailed, GridParams, grid

    params = GridParams(config_path=str(config), select=_parse_select(select), force=force or [],
                        dry_run=dry_run, store_root=str(store) if store else None)
    t0 = time.time()
    try:
        summary = grid(params)
    except GridFailed as err:
        err_console.print(f"[red]grid failed[/red] after {time.time() - t0:.0f}s: {err}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps({**summary, "seconds": round(time.time() - t0, 2)}, indent=2) + "\n")
        return
    console.print(f"[green]done[/green] in {time.time() - t0:.1f}s: ran {len(summary['ran'])}, "
                  f"cached {len(summary['cached'])}, would run {len(summary['would_run'])} "
                  f"of {summary['nodes']} nodes")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
