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
from rich.markup import escape
from rich.table import Table

from .config import ConfigError, StudyConfig, load_config
from .costmodel import CostModel, measured_hours
from .owner import claim
from .plan import Plan, build_plan
from .scheduler import POLICIES
from .status import explain as explain_node
from .status import node_statuses
from .store import ArtifactStore, LeaseTimeout, check_dir

app = typer.Typer(help="Reasoning-trace compression for knowledge distillation, as one cached DAG.",
                  no_args_is_help=True, add_completion=False)
console = Console()
err_console = Console(stderr=True)

ConfigArg = Annotated[Path, typer.Argument(help="study config YAML, e.g. configs/mini.yaml")]
StoreOpt = Annotated[Path | None, typer.Option("--store", help="artifact store root (default: config store_root)")]
SelectOpt = Annotated[list[str] | None, typer.Option(
    "--select", "-s", help="cell filter AXIS=GLOB (teacher/student/method/data/seed), repeatable")]


def _error(message: str) -> None:
    """`error: <message>` on stderr. The message may quote a config's bytes or a file name: it is
    printed as text (never as rich markup, where `[/x]` would raise) without control characters,
    and not folded at the terminal width (one line per error stays one line in a log)."""
    clean = "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in message)
    err_console.print(f"[red]error:[/red] {escape(clean)}", highlight=False, soft_wrap=True)


def _load(config: Path) -> StudyConfig:
    try:
        return load_config(config)
    except ConfigError as err:
        _error(str(err))
        raise typer.Exit(2) from None


def _plan(config: Path) -> Plan:
    cfg = _load(config)
    try:
        return build_plan(cfg)
    except ValueError as err:
        _error(f"{config}: {err}")
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
                    "cpus_per_task": res.cpus_for(node.job.gpus), "mem": res.mem_for(node.job.gpus)},
            "est_hours": est.hours, "est_gpu_hours": est.gpu_hours, "estimate_source": est.source,
        })
    cells = []
    for c in plan.cells:
        est = est_by_node[f"train/{c.name}"]
        cells.append({"name": c.name, "teacher": c.teacher, "student": c.student, "method": c.method,
                      "data": c.data, "seed": c.seed, "block": c.block, "gpus": c.gpus, "est_hours": est.hours,
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
         as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
         simulate: Annotated[bool, typer.Option("--simulate", help="predict the makespan on the cluster profile "
                                                                 "(scheduler.py) instead of listing nodes")] = False,
         nodes: Annotated[int | None, typer.Option("--nodes", min=1, help="with --simulate: nodes "
                                                                          "(default: cluster profile)")] = None,
         gpus_per_node: Annotated[int | None, typer.Option("--gpus-per-node", min=1, help="with --simulate: GPUs "
                                                                                          "per node")] = None,
         job_overhead_h: Annotated[float, typer.Option("--job-overhead-h", min=0.0, help="with --simulate: hours "
                                                       "added to every GPU job (start latency, model load)")] = 0.0,
         ) -> None:
    """Print the DAG: nodes, cache status, Slurm resources and estimated GPU-hours (--simulate: the makespan)."""
    p = _plan(config)
    if simulate:
        from .scheduler import simulate_report

        cost = CostModel(measured_hours(p, ArtifactStore(store or p.config.store_root)))
        try:
            lines = simulate_report(p, cost, nodes, gpus_per_node, job_overhead_h)
        except ValueError as err:
            _error(str(err))
            raise typer.Exit(2) from None
        for line in lines:
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        return
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
        table.add_row(n["id"], f"[{style[n['status']]}]{n['status']}[/]", res, gh, escape(n["reason"]))
    console.print(table)
    t = doc["totals"]
    console.print(f"training {t['train_gpu_hours']:.1f} GPU-h, upstream {t['upstream_gpu_hours']:.1f} GPU-h "
                  f"(estimates; cost model seeded with the paper's Table 11 and upstream times); "
                  f"status: {t['status']}")
    corrupt = [n["id"] for n in doc["nodes"] if n["reason"].startswith("corrupt artifact")]
    if corrupt:
        err_console.print(f"warning: {len(corrupt)} committed artifact(s) corrupt (see reason), e.g. "
                          f"{', '.join(corrupt[:3])}; `run` recomputes them", highlight=False, markup=False)


@app.command()
def explain(config: ConfigArg, node: Annotated[str, typer.Argument(help="node id, e.g. train/<cell>")],
            store: StoreOpt = None) -> None:
    """Say why NODE will (re-)run: the diff of its identity against the stored manifest."""
    p = _plan(config)
    try:
        lines = explain_node(p, ArtifactStore(store or p.config.store_root), node)
    except KeyError as err:
        _error(str(err.args[0]))
        raise typer.Exit(2) from None
    for line in lines:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


@app.command("check-store")
def check_store(
    config: Annotated[Path | None, typer.Argument(help="study config whose store_root to check (or give --store)")]
    = None,
    store: StoreOpt = None,
    quarantine: Annotated[bool, typer.Option("--quarantine", help="move each corrupt artifact to "
                                             "<stage>/.corrupt/ so the next run recomputes it")] = False,
) -> None:
    """Verify every committed artifact of the store against its manifest: sizes and sha256 of all files.

    Prints one line per corrupt artifact and a summary; exits 1 if any is corrupt. The whole store is
    checked (a store can be shared by studies); CONFIG only says where it is."""
    if store is None:
        if config is None:
            _error("give CONFIG (its store_root is checked) or --store ROOT")
            raise typer.Exit(2)
        store = Path(_load(config).store_root)
    st = ArtifactStore(store)
    if not st.root.is_dir():
        _error(f"no artifact store at {st.root}")
        raise typer.Exit(2)
    counts = {"done": 0, "corrupt": 0, "unverified": 0}
    for stage, dirname, path in st.committed():
        found = check_dir(path, hashes=True)
        counts[found.state] += 1
        if found.state != "corrupt":
            continue
        line = f"CORRUPT {stage}/{dirname}: {'; '.join(found.problems)}"
        if quarantine:
            line += f" -> {_quarantine(st, stage, path)}"
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    total = sum(counts.values())
    console.print(f"checked {total} artifact(s) under {st.root}: {counts['done']} ok, {counts['corrupt']} corrupt, "
                  f"{counts['unverified']} unverified (manifests written before file hashes were recorded)",
                  highlight=False, markup=False, soft_wrap=True)
    if counts["corrupt"]:
        hint = "`run` recomputes what was moved aside" if quarantine else \
            "`check-store --quarantine` moves them aside, then `run` recomputes them"
        console.print(hint, highlight=False, markup=False)
        raise typer.Exit(1)


def _quarantine(st: ArtifactStore, stage: str, path: Path) -> str:
    """Move one corrupt artifact aside under its node's lease (a run may be replacing it right now)."""
    name, _, key = path.name.rpartition("-")  # `<name>-<key>`: a key has no '-', a name may
    try:
        with st.lease(stage, name, key, timeout_s=5):
            found = st.check(stage, name, key, hashes=True)  # re-check: a run may have replaced it
            if found.state != "corrupt":
                return f"not moved: now {found.state}"
            return f"moved to {st.rel(st.quarantine(stage, name, key, found.problems))}"
    except LeaseTimeout:
        return "not moved: a run holds its lease"


@app.command()
def report(config: ConfigArg, store: StoreOpt = None,
           out: Annotated[Path | None, typer.Option("--out", help="also copy the report directory here")] = None,
           ) -> None:
    """Write the study's report (Markdown, HTML, PNG figures) from the store's committed artifacts.

    The report is the DAG's `report` node: it is produced from what the store holds and is cached
    like any step; every upstream node must be committed (run the grid first)."""
    from .runner import RunContext, run_node, snapshot_config

    p = _plan(config)
    st = ArtifactStore(store or p.config.store_root)
    rid = next(n for n in p.nodes if p.nodes[n].stage == "report")
    missing = [d for d in p.nodes[rid].deps
               if not st.is_done(p.nodes[d].stage, p.nodes[d].name, p.keys[d])]
    if missing:
        _error(f"{len(missing)} upstream step(s) not in the store {st.root} (or corrupt), e.g. "
               f"{', '.join(missing[:3])}; run `compress-distill run {config}` first")
        raise typer.Exit(2)
    outcome = run_node(RunContext(plan=p, store=st, config_path=snapshot_config(p, st)), rid)
    path = st.root / outcome.path
    if out is not None:
        import shutil

        shutil.copytree(path, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json"))
        path = out
    console.print(f"report ({'cached' if outcome.cached else 'written'}): {path / 'report.md'}", highlight=False)


@app.command()
def ledger(
    store: Annotated[Path, typer.Argument(help="artifact store root")],
    config: Annotated[Path | None, typer.Option("--config", help="read this study's cells from the store (default: "
                                                                  "the store's newest committed report)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the ledger as JSON")] = False,
) -> None:
    """Print the cost ledger: each cell's accuracy joined to its measured cost (train, evaluate, and
    its share of generation and compression; GPU-hours, CPU core-hours, energy and CO2)."""
    from .report.build import build_data, render_table
    from .report.ledger import build_ledger, ledger_table
    from .stages.report import NoLedger, store_report_inputs

    st = ArtifactStore(store)
    if not st.root.is_dir():
        _error(f"no artifact store at {st.root}")
        raise typer.Exit(2)
    try:
        d = build_data(store_report_inputs(st, _load(config) if config else None))
    except (NoLedger, ConfigError) as err:
        _error(str(err))
        raise typer.Exit(2) from None
    lg = build_ledger(d)
    if not lg.evaluated:
        _error(f"the store {st.root} holds no evaluated cell with an accuracy")
        raise typer.Exit(2)
    text = json.dumps(lg.to_json(), indent=2) if as_json else render_table(ledger_table(d, lg))
    console.print(text, highlight=False, markup=False, soft_wrap=True)


@app.command("build-models")
def build_models_cmd(
    names: Annotated[list[str] | None, typer.Argument(help="subset: teacher, compressor-mild, compressor-aggressive, "
                                                           "student-tiny, student-small, student-tiny-base, "
                                                           "student-small-base (default: all)")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="CI-sized recipes (about a minute), into models/mini-quick/")
                     ] = False,
    root: Annotated[Path | None, typer.Option("--root", help="models directory (default: models/mini[-quick])")
                    ] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch threads")] = 2,
    force: Annotated[bool, typer.Option("--force", help="rebuild from scratch even when a model with the same "
                                                        "recipe key exists; it is replaced only once rebuilt")
                     ] = False,
) -> None:
    """Build the mini world's tokenizer, teacher, compressors, student inits and base students (cached by recipe
    key)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from .miniworld.build import build_models
    from .miniworld.recipes import DEFAULT_ROOT
    from .serving import QUICK_ROOT

    target = root or (QUICK_ROOT if quick else DEFAULT_ROOT)
    t0 = time.time()
    try:
        if not force:
            paths = build_models(names or None, quick=quick, threads=threads, root=target)
        else:
            import shutil
            import tempfile

            target.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target, prefix=".rebuild-") as scratch:
                built = build_models(names or None, quick=quick, threads=threads, root=Path(scratch))
                paths = {}
                for name, path in built.items():
                    final, old = target / path.name, target / f".old-{path.name}"
                    if final.exists():
                        final.rename(old)
                    path.rename(final)
                    shutil.rmtree(old, ignore_errors=True)
                    paths[name] = final
    except ValueError as err:
        _error(str(err))
        raise typer.Exit(2) from None
    for name, path in paths.items():
        console.print(f"{name}: {path}", highlight=False)
    console.print(f"done in {time.time() - t0:.0f}s", highlight=False)


@app.command()
def verify(
    path: Annotated[Path, typer.Argument(help="JSONL of {response, answer, answer_type[, choices]}; - for stdin")],
    workers: Annotated[int, typer.Option(help="processes for LaTeX verification")] = 1,
    expect_think: Annotated[bool, typer.Option(help="a response without <think> counts as truncated")] = False,
) -> None:
    """Audit answer extraction: each record comes back on stdout with `extracted` and `correct` added.

    A line without a verdict (malformed, or a record too big to judge) is reported as `line N: reason`
    on stderr and the others still come out. Exit status: 0 all verified, 1 some lines had no verdict,
    2 the input could not be opened.
    """
    from .traces.verify_cli import verify_jsonl

    if str(path) == "-":
        counts = verify_jsonl(sys.stdin.buffer, sys.stdout, workers=workers, expect_think=expect_think)
    else:
        try:
            stream = path.open("rb")  # bytes: a bad UTF-8 line is reported by number, not fatal
        except OSError as err:
            _error(f"{path}: {err.strerror}")
            raise typer.Exit(2) from None
        with stream:
            counts = verify_jsonl(stream, sys.stdout, workers=workers, expect_think=expect_think)
    err_console.print(f"{counts['records']} records, {counts['correct']} correct, "
                      f"{counts['errors']} line(s) without a verdict", highlight=False)
    if counts["errors"]:
        raise typer.Exit(1)


@app.command()
def render(config: ConfigArg, outdir: Annotated[Path, typer.Argument(help="directory for the rendered files")],
           store: StoreOpt = None,
           override: Annotated[list[str] | None, typer.Option(
               "--override", help="job resource override KEY=VALUE for every job, e.g. partition=debug "
                                  "(renders a variant: no longer what `run` submits)")] = None,
           ) -> None:
    """Write the job script of every job node, exactly as `run` submits it (and each cell's Axolotl YAML).

    Like `run`, this writes the config snapshot the jobs read into the store's .configs/."""
    from .jobs.study import render_study

    overrides = {}
    for item in override or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE")
        overrides[k.strip()] = v.strip()
    try:
        files = render_study(_load(config), outdir, overrides=overrides or None, store_root=store)
    except (ValueError, KeyError, FileNotFoundError) as err:
        _error(str(err))
        raise typer.Exit(2) from None
    console.print(f"wrote {len(files)} files under {outdir}")


@app.command()
def preflight(config: ConfigArg,
              skip: Annotated[list[str] | None, typer.Option("--skip", help="a check to leave out, repeatable")] = None,
              workdir: Annotated[Path | None, typer.Option(help="keep the rendered jobs and label-check configs here")]
              = None) -> None:
    """Check in minutes what would fail in the grid's first hour: envs, GPUs, weights, templates, labels, jobs."""
    from .cluster.preflight import CHECKS, run_preflight

    bad = sorted(set(skip or []) - set(CHECKS))
    if bad:
        raise typer.BadParameter(f"unknown check(s) {bad}; checks: {', '.join(CHECKS)}")
    rows = run_preflight(_load(config), workdir=workdir, skip=skip or ())
    table = Table(title=f"preflight {config}")
    for col in ("check", "subject", "status", "detail"):
        table.add_column(col, overflow="fold")
    style = {"PASS": "green", "FAIL": "red", "SKIP": "yellow"}
    for r in rows:
        table.add_row(r.check, r.subject, f"[{style[r.status]}]{r.status}[/]", r.detail)
    wide = Console(width=max(console.width, 160))  # a log file is not a terminal: do not fold the details
    wide.print(table)
    failed = sum(r.status == "FAIL" for r in rows)
    console.print(f"{failed} blocker(s)" if failed else "no blockers")
    raise typer.Exit(1 if failed else 0)


@app.command("stage-weights")
def stage_weights(config: ConfigArg,
                  dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be downloaded")] = False,
                  ) -> None:
    """Download every hub model of the config into cluster.weights.hf_home (run where the Hub is reachable)."""
    from .cluster.weights import stage

    cfg = _load(config)
    try:
        rows = stage(cfg, dry_run=dry_run)
    except ValueError as err:
        _error(str(err))
        raise typer.Exit(2) from None
    for ref, what in rows:
        console.print(f"{ref}: {what}", highlight=False)


@app.command()
def serve(
    paper: Annotated[Path, typer.Option(help="config of grid/full (and grid/nightly)")] = Path("configs/paper.yaml"),
    mini: Annotated[Path, typer.Option(help="config of grid/mini")] = Path("configs/mini.yaml"),
    nightly: Annotated[Path | None, typer.Option(help="config of grid/nightly (default: --paper)")] = None,
    store: StoreOpt = None,
    cron: Annotated[str, typer.Option(help="grid/nightly schedule")] = "0 2 * * *",
    timezone: Annotated[str | None, typer.Option(help="IANA timezone of --cron (default $COMPRESS_DISTILL_TIMEZONE "
                                                      "or UTC)")] = None,
    mini_select: Annotated[list[str] | None, typer.Option("--mini-select", help="AXIS=GLOB for grid/mini")] = None,
    limit: Annotated[int, typer.Option(help="flow runs executed at once by this process")] = 4,
    list_only: Annotated[bool, typer.Option("--list", help="print the deployments as JSON and exit")] = False,
) -> None:
    """Register grid/full, grid/mini, grid/nightly, grid/retry-failed and run their flow runs (needs PREFECT_API_URL)."""
    from .flows.deploy import ServeOptions, serve_command

    claim()  # the flow runs' local jobs and servers die with this process
    opts = ServeOptions(paper=paper, mini=mini, nightly=nightly, store=store, cron=cron, timezone=timezone,
                        mini_select=_parse_select(mini_select), limit=limit)
    raise typer.Exit(serve_command(opts, list_only=list_only))


def _prefect_defaults() -> None:
    # Ephemeral mode starts a throwaway API server per process; give it time on a busy 2-core box.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # The throwaway server logs harmless CancelledError tracebacks while it shuts down.
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)


class _NoTracebacks(logging.Filter):
    """Console side of a run: Prefect's failed-task and failed-flow records (each with a traceback)
    stay off it, and no record prints a traceback; the run's summary names the file that has them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.name.startswith(("prefect.flow_runs", "prefect.task_runs")):
            return False
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def _tracebacks_to_file(store_root: Path) -> Path:
    """Every log record of this run, tracebacks included, goes to a file under the store's .logs/ (not .runs/,
    whose entries are run records)."""
    path = (store_root / ".logs" / f"run-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log").absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(path, encoding="utf-8", delay=True)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    quiet = _NoTracebacks()
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs", "compress_distill"):
        lg = logging.getLogger(name)
        for handler in lg.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.addFilter(quiet)
    for name in ("prefect", "compress_distill"):
        logging.getLogger(name).addHandler(to_file)
    return path


@app.command()
def run(config: ConfigArg, store: StoreOpt = None, select: SelectOpt = None,
        force: Annotated[list[str] | None, typer.Option("--force", help="node-id glob to re-run, repeatable")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="resolve the DAG, execute nothing")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="print the run summary as JSON")] = False,
        progress: Annotated[bool | None, typer.Option(
            "--progress/--no-progress", help="live view on stderr: a bar per stage, the jobs in flight "
                                             "(default: when stderr is a terminal)")] = None,
        policy: Annotated[str, typer.Option(
            "--policy", help=f"the scheduler's admission policy: {', '.join(POLICIES)}")] = "critical-path",
        ) -> None:
    """Run the study's DAG through Prefect (ephemeral server unless PREFECT_API_URL is set)."""
    if policy not in POLICIES:
        err_console.print(f"error: unknown --policy {escape(policy)!r}; one of {', '.join(POLICIES)}", highlight=False)
        raise typer.Exit(2)
    cfg = _load(config)  # fail fast with a clean message, before Prefect starts
    claim()  # before Prefect starts its temporary server: it dies with this process, even on SIGKILL
    _prefect_defaults()
    from .flows.grid import GridFailed, grid
    from .flows.params import GridParams
    from .flows.progress import live_progress

    run_log = _tracebacks_to_file(Path(store or cfg.store_root))
    if os.environ.get("PREFECT_API_URL"):  # a real server, which can go away mid-run
        from .flows.api_watch import watch_api

        watch_api(os.environ["PREFECT_API_URL"])

    params = GridParams(config_path=str(config), select=_parse_select(select), force=force or [],
                        dry_run=dry_run, store_root=str(store) if store else None, policy=policy)
    t0 = time.time()
    try:
        with live_progress(err_console, enabled=err_console.is_terminal if progress is None else progress):
            summary = grid(params)
    except GridFailed as err:
        err_console.print(f"[red]grid failed[/red] after {time.time() - t0:.0f}s: {escape(str(err))}\n"
                          f"tracebacks: {run_log}", highlight=False, soft_wrap=True)
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
