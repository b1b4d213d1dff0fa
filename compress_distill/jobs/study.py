"""`compress-distill render CONFIG OUTDIR`: every job of a study's DAG, as the runner would submit it.

For each job node of the plan (not the in-process `cpu` nodes) this writes the script
`node.node_job` returns, the one the runner writes and submits for that node and key,
byte for byte (tests/test_render_golden.py): same payload (`python -m
compress_distill.node_main --config SNAPSHOT --store ROOT --node ID --out ATTEMPT_DIR`),
same config snapshot (`<store>/.configs/`, written here as a run would), same job dir and
working directory (the current one). Its `#SBATCH` header carries the resources the
runner's request carries, so `sbatch FILE` by hand asks for the same; the runner's Slurm
backend puts them on sbatch's argv and runs the script inside its requeue wrapper.

Layout under OUTDIR:

    serve/<stage>.<name>.sbatch     serving jobs: generate (teacher), compress, judge
    cells/<cell>/train.sbatch       the cell's train node (the train stage: TRL or Axolotl)
    cells/<cell>/eval.sbatch        the cell's evaluate node
    cells/<cell>/axolotl.yaml       the cell's Axolotl config, for review and the validator (the
                                    train stage writes its own copy into its work dir)
    jobs/<stage>.<name>.sbatch      any other job node (e.g. a mini-world build)
    manifest.json                   nodes, keys, resources and file names

`overrides` (resource keys, e.g. a dev cluster's partition) render a variant for another
site: those scripts are then NOT what the DAG submits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..axolotl_config import AXOLOTL_VERSION, cpu_overlay, dump_yaml, render_axolotl_config
from ..config import StudyConfig, load_config
from ..plan import Plan, build_plan
from ..store import ArtifactStore
from .node import SERVE_STAGES, NodeJob, node_job


def script_relpath(plan: Plan, node_id: str) -> str:
    node = plan.nodes[node_id]
    if node.stage in SERVE_STAGES:
        return f"serve/{node.stage}.{node.name}.sbatch"
    if node.cell is not None and node.stage in ("train", "evaluate"):
        return f"cells/{node.cell.name}/{'train' if node.stage == 'train' else 'eval'}.sbatch"
    return f"jobs/{node.stage}.{node.name}.sbatch"


def study_jobs(plan: Plan, store: ArtifactStore, *, overrides: Mapping[str, Any] | None = None,
               workdir: Path | None = None) -> dict[str, NodeJob]:
    """node id -> its job, for every job node, as the runner builds it (runner.snapshot_config is
    the `--config` every payload reads; it is written here, as a run writes it)."""
    from ..runner import snapshot_config  # the runner's own snapshot: same path, same bytes

    config_path = snapshot_config(plan, store)
    return {nid: node_job(plan, store, nid, config_path=config_path,
                          out=store.attempt_dir(node.stage, node.name, plan.keys[nid]), workdir=workdir,
                          overrides=overrides, require_env=False)
            for nid, node in plan.nodes.items() if node.job.kind != "cpu"}


def render_study(
    config: StudyConfig | str | Path, outdir: str | Path, *, overrides: Mapping[str, Any] | None = None,
    store_root: str | Path | None = None, cpu: bool | None = None,
) -> list[Path]:
    """Write every job node's script (and each cell's Axolotl YAML); return the files written.

    `store_root`: as `run --store` (default the config's `store_root`). `cpu` renders the CPU
    Axolotl variant of the review YAML; by default when the cluster profile has no GPUs.
    """
    cfg = config if isinstance(config, StudyConfig) else load_config(config)
    out = Path(outdir).resolve()
    plan = build_plan(cfg)
    store = ArtifactStore(Path(store_root or cfg.store_root))
    cpu = cfg.cluster.gpus_per_node == 0 if cpu is None else cpu
    written: list[Path] = []

    def write(rel: str, text: str) -> Path:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
        return path

    jobs = study_jobs(plan, store, overrides=overrides)
    entries: list[dict[str, Any]] = []
    for nid, job in jobs.items():
        rel = script_relpath(plan, nid)
        write(rel, job.script)
        res = job.resources
        entries.append({"node": nid, "key": plan.keys[nid], "script": rel, "kind": job.kind, "gpus": res.gpus,
                        "cpus": res.cpus_per_task, "mem": res.mem, "time": res.time_limit})

    cells: list[dict[str, Any]] = []
    for cell in plan.cells:
        train = plan.nodes[f"train/{cell.name}"]
        derive_id = train.deps[0]
        dataset = store.path("derive", plan.nodes[derive_id].name, plan.keys[derive_id]) / "train.jsonl"
        work = store.work_dir("train", cell.name, plan.keys[train.id])
        axo = render_axolotl_config(train, dataset_path=dataset, output_dir=work)
        if cpu:
            axo = cpu_overlay(axo)
        header = (f"Axolotl {AXOLOTL_VERSION} config for cell {cell.name} ({cell.gpus} GPU)\n"
                  f"Rendered by compress-distill from {cfg.name}; edit the study config, not this file.")
        write(f"cells/{cell.name}/axolotl.yaml", dump_yaml(axo, header))
        cells.append({"cell": cell.name, "gpus": cell.gpus, "axolotl_config": f"cells/{cell.name}/axolotl.yaml",
                      "train_script": script_relpath(plan, train.id),
                      "eval_script": script_relpath(plan, f"evaluate/{cell.name}"), "train_key": plan.keys[train.id]})
    write("manifest.json", json.dumps({"config": cfg.name, "cpu": cpu, "store": str(store.root.absolute()),
                                       "overrides": dict(overrides or {}), "jobs": entries, "cells": cells},
                                      indent=2) + "\n")
    return written
