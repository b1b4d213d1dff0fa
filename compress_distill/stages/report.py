"""Stage `report`: the paper's tables and figures, filled from this run's committed artifacts.

Every upstream artifact is read from the store (the report depends on all of
them, so its key changes whenever any input does); measured job times come
from the upstream manifests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..config import StudyConfig, parse_config
from ..datasets.chance import dataset_chance
from ..datasets.contamination import contamination_counts
from ..jobcost import node_job_cost
from ..plan import Cell, build_plan, expand_cells
from ..report.build import ReportInputs, write_report
from ..report.model import rows_of
from ..store import ArtifactStore
from . import StageContext, StageResult

# The per-question columns the report reads (responses left out); those a record lacks are skipped.
RECORD_COLUMNS = ("id", "dataset", "group", "correct", "failed", "truncated", "completion_tokens", "reasoning_chars",
                  "reasoning_tokens", "seed")


def run(ctx: StageContext) -> StageResult:
    inputs = report_inputs(ctx.config, ctx.inputs)
    files = write_report(inputs, ctx.out)
    return StageResult({}, {"cells": len(rows_of(inputs.cells)),
                            "files": [str(f.relative_to(ctx.out)) for f in files]})


def report_inputs(cfg: StudyConfig, inputs: Mapping[str, Path]) -> ReportInputs:
    """The report's inputs read from committed artifacts: `inputs` maps node id -> artifact dir
    (the report node's deps; or those of them a store holds). The report stage and
    `compress-distill ledger` both read a store through this function."""
    cell_of = {c.name: c for c in expand_cells(cfg)}
    paths: dict[str, dict[str, Path]] = {}
    for nid, path in inputs.items():
        stage, name = nid.split("/", 1)
        paths.setdefault(stage, {})[name] = path
    cells: list[dict[str, Any]] = []
    metrics: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    training: list[dict[str, Any]] = []
    losses: list[dict[str, Any]] = []
    jobs: list[dict[str, Any]] = []
    for name, path in sorted(paths.get("evaluate", {}).items()):
        c = cell_of[name]
        src = cfg.data_sources[c.data]
        cells.append({"cell": name, "teacher": c.teacher, "student": c.student, "method": c.method,
                      "data": c.data, "data_kind": src.kind, "compressor": src.compressor,
                      "method_kind": cfg.methods[c.method].kind, "gpus": c.gpus, "block": c.block,
                      "seed": c.seed})
        metrics.append({"cell": name, **json.loads((path / "metrics.json").read_text())})
        # Per-question records for the paired comparisons; the responses themselves are not needed.
        recs = pq.read_table(path / "records.parquet")
        records.extend({"cell": name, **r} for r in recs.select([c for c in RECORD_COLUMNS
                                                                 if c in recs.column_names]).to_pylist())
    for name, path in sorted(paths.get("train", {}).items()):
        training.append({"cell": name, "gpus": cell_of[name].gpus,
                         **json.loads((path / "train_result.json").read_text())})
        losses.extend({"cell": name, **r} for r in pq.read_table(path / "loss.parquet").to_pylist())
    upstream = _upstream(inputs)  # the generate and build jobs are no input of the report, yet cost
    feeds = _feeds(upstream)
    for stage in ("build", "generate", "compress", "judge", "train", "evaluate"):
        for nid, path in sorted(upstream.items()):
            if nid.split("/", 1)[0] == stage and (path / "manifest.json").is_file():
                name = nid.split("/", 1)[1]
                row = _job(stage, name, path, cell_of.get(name))
                if stage in ("generate", "compress"):  # the ledger's shares (report/ledger.py)
                    row["feeds"] = sorted(feeds.get(nid, ()))
                jobs.append(row)
    yield_rows = [r for p in paths.get("verify", {}).values() for r in pq.read_table(p / "yield.parquet").to_pylist()]
    compression = [r for p in paths.get("compress", {}).values()
                   for r in pq.read_table(p / "compressed.parquet").to_pylist()]
    judge = [r for p in paths.get("judge", {}).values() for r in pq.read_table(p / "verdicts.parquet").to_pylist()]
    labels = {k: v.label for group in (cfg.teachers, cfg.compressors, cfg.students, cfg.methods, cfg.data_sources)
              for k, v in group.items()}
    pool = paths.get("prepare", {}).get("train-pool")
    found = contamination_counts(pool) if pool is not None else None  # per dataset, train and eval side
    return ReportInputs(cells=cells, eval_metrics=metrics, eval_records=records, datasets=dataset_rows(cfg, found),
                        contamination=found, training=training, loss_curves=losses,
                        generation_yield=yield_rows, compression=compression, judge=judge or None, jobs=jobs,
                        groups=list(cfg.evaluation.groups), labels=labels,
                        title=f"Compress-Distill reproduction: {cfg.name}", run_info={"config": cfg.name})


class NoLedger(ValueError):
    """The store holds nothing the ledger can be read from (no report, no evaluated cell)."""


def store_report_inputs(store: ArtifactStore, cfg: StudyConfig | None = None) -> ReportInputs:
    """The report's inputs read from a store, for `compress-distill ledger`.

    Without `cfg`: the store's newest committed report node; its manifest names its inputs (node id
    -> key) and the store's config snapshot of that key (`runner.snapshot_config`) is its config.
    With `cfg`: the inputs of that study's report node the store holds, so a study whose report was
    not run yet (some cells evaluated) has a ledger too. Raises NoLedger with what to do."""
    if cfg is None:
        found = []
        for stage, _, path in store.committed():
            if stage == "report":
                m = json.loads((path / "manifest.json").read_text())
                found.append((float(m.get("finished_at") or 0), path, m))
        if not found:
            raise NoLedger(f"no committed report in the store {store.root}; run `compress-distill report CONFIG`, "
                           "or give --config CONFIG to read the cells the store holds")
        _, path, m = max(found, key=lambda f: f[0])
        snaps = sorted((store.root / ".configs").glob(f"*-{m['key']}.json"))
        if not snaps:
            raise NoLedger(f"{store.rel(path)}: the store has no config snapshot of this report "
                           f"(.configs/*-{m['key']}.json); give --config CONFIG")
        cfg = parse_config(json.loads(snaps[0].read_text()), snaps[0])
        wanted = dict(m.get("identity", {}).get("upstream") or {})
    else:
        plan = build_plan(cfg)
        rid = next(n for n in plan.nodes if plan.nodes[n].stage == "report")
        wanted = {dep: plan.keys[dep] for dep in plan.nodes[rid].deps}
    inputs = {}
    for nid, key in wanted.items():
        stage, name = nid.split("/", 1)
        if store.is_done(stage, name, key):  # a study not run to the end: the cells it has
            inputs[nid] = store.path(stage, name, key)
    if not any(nid.startswith("evaluate/") for nid in inputs):
        raise NoLedger(f"the store {store.root} holds no evaluated cell of the study {cfg.name!r}; "
                       f"run `compress-distill run CONFIG` first")
    return report_inputs(cfg, inputs)


def dataset_rows(cfg: StudyConfig, found: dict[str, dict[str, int]] | None) -> list[dict[str, Any]]:
    """Table 1: each evaluated dataset with its group and chance level (`datasets.chance`), and how
    many of its questions the contamination check matched in the training pool."""
    out = []
    for group, names in cfg.evaluation.groups.items():
        for ds in names:
            spec = cfg.datasets.get(ds)
            if spec is None:
                continue
            ch = dataset_chance(ds, spec.source, spec.answer_type, spec.subset)
            row: dict[str, Any] = {"dataset": ds, "group": group, "source": spec.source,
                                   "answer_type": spec.answer_type, "chance": ch.level, "chance_basis": ch.basis}
            if found is not None:  # a dataset the check found nothing in is absent from its counts
                row["eval_matched"] = found.get(ds, {}).get("eval_matched", 0)
            out.append(row)
    return out


def _upstream(inputs: Mapping[str, Path]) -> dict[str, Path]:
    """The report's inputs and every committed node upstream of them, followed through the
    manifests' identities (node id -> upstream key), so every job of the study is accounted."""
    seen = dict(inputs)
    todo = list(inputs.items())
    while todo:
        _, path = todo.pop()
        try:
            ups = json.loads((path / "manifest.json").read_text()).get("identity", {}).get("upstream") or {}
        except (OSError, ValueError):
            continue
        for nid, key in ups.items():
            if nid not in seen:
                stage, name = nid.split("/", 1)
                seen[nid] = path.parent.parent / stage / f"{name}-{key}"  # store.path(stage, name, key)
                todo.append((nid, seen[nid]))
    return seen


def _feeds(nodes: Mapping[str, Path]) -> dict[str, set[str]]:
    """Node id -> the cells (runs) trained downstream of it: the train nodes whose upstream closure,
    followed through the manifests, holds it. The ledger splits a generate or compress job's cost
    over these cells."""
    deps: dict[str, list[str]] = {}
    for nid, path in nodes.items():
        try:
            ups = json.loads((path / "manifest.json").read_text()).get("identity", {}).get("upstream") or {}
        except (OSError, ValueError):
            ups = {}
        deps[nid] = list(ups)
    out: dict[str, set[str]] = {}
    for nid in nodes:
        if not nid.startswith("train/"):
            continue
        cell, todo, seen = nid.split("/", 1)[1], list(deps[nid]), set()
        while todo:
            up = todo.pop()
            if up in seen:
                continue
            seen.add(up)
            out.setdefault(up, set()).add(cell)
            todo += deps.get(up, [])
    return out


def _job(stage: str, name: str, path: Path, cell: Cell | None) -> dict[str, Any]:
    """Measured cost of a committed step's job (jobcost.node_job_cost): the job's own run time from
    its state file, never the manifest's `seconds` (that counts the wait for a worker or slot)."""
    m = json.loads((path / "manifest.json").read_text())
    states = []
    for f in sorted((path.parent / ".jobs" / path.name).glob("*.state.json")):  # jobs.node.job_dir
        try:
            states.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    cost = node_job_cost(m, states)
    return {"stage": stage, "name": name, "cell": cell.name if cell else None, "job_id": m["job"].get("job_id"),
            **cost.to_row()}
