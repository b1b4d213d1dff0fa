"""Stage `report`: the paper's tables and figures, filled from this run's committed artifacts.

Every upstream artifact is read from the store (the report depends on all of
them, so its key changes whenever any input does); measured job times come
from the upstream manifests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..plan import Cell, expand_cells
from ..report.build import ReportInputs, write_report
from . import StageContext, StageResult

RECORD_COLUMNS = ["id", "dataset", "group", "correct", "truncated", "completion_tokens", "reasoning_chars", "failed"]


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    cell_of = {c.name: c for c in expand_cells(cfg)}
    paths: dict[str, dict[str, Path]] = {}
    for nid, path in ctx.inputs.items():
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
        # per-question records of each run (responses left out): paired comparisons, pooled over seeds
        records.extend({"cell": name, **r} for r in
                       pq.read_table(path / "records.parquet", columns=RECORD_COLUMNS).to_pylist())
    for name, path in sorted(paths.get("train", {}).items()):
        training.append({"cell": name, "gpus": cell_of[name].gpus,
                         **json.loads((path / "train_result.json").read_text())})
        losses.extend({"cell": name, **r} for r in pq.read_table(path / "loss.parquet").to_pylist())
    for stage in ("generate", "compress", "judge", "train", "evaluate"):
        for name, path in sorted(paths.get(stage, {}).items()):
            jobs.append(_job(stage, name, path, cell_of.get(name)))
    yield_rows = [r for p in paths.get("verify", {}).values() for r in pq.read_table(p / "yield.parquet").to_pylist()]
    compression = [r for p in paths.get("compress", {}).values()
                   for r in pq.read_table(p / "compressed.parquet").to_pylist()]
    judge = [r for p in paths.get("judge", {}).values() for r in pq.read_table(p / "verdicts.parquet").to_pylist()]
    labels = {k: v.label for group in (cfg.teachers, cfg.compressors, cfg.students, cfg.methods, cfg.data_sources)
              for k, v in group.items()}
    inputs = ReportInputs(cells=cells, eval_metrics=metrics, eval_records=records, training=training,
                          loss_curves=losses,
                          generation_yield=yield_rows, compression=compression, judge=judge or None, jobs=jobs,
                          groups=list(cfg.evaluation.groups), labels=labels,
                          title=f"Compress-Distill reproduction: {cfg.name}",
                          run_info={"config": cfg.name})
    files = write_report(inputs, ctx.out)
    return StageResult({}, {"cells": len(cells), "files": [str(f.relative_to(ctx.out)) for f in files]})


def _job(stage: str, name: str, path: Path, cell: Cell | None) -> dict[str, Any]:
    """Measured wall time of a committed step, from its manifest (local runs; Slurm adds sacct rows)."""
    m = json.loads((path / "manifest.json").read_text())
    return {"stage": stage, "name": name, "elapsed_s": m.get("seconds"), "gpus": m["job"]["gpus"],
            "cell": cell.name if cell else None, "job_id": m["job"].get("job_id"), "source": "local"}
