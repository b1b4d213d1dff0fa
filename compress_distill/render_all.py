"""Write every job file of a study to a directory: `compress-distill render CONFIG OUTDIR`.

Layout under OUTDIR (all paths inside the scripts are absolute):

    config.snapshot.yaml            the config the clients read (`--config`)
    manifest.json                   cells, GPU counts and file names (read by the validator)
    serve/<stage>.<name>.sbatch     vLLM jobs: generate (teacher), compress, judge
    cells/<cell>/axolotl.yaml       the cell's Axolotl config (CPU variant on a 0-GPU profile)
    cells/<cell>/train.sbatch       Axolotl training job
    cells/<cell>/eval.sbatch        evaluation job for the trained checkpoint

Store paths follow `ArtifactStore`'s `<root>/<stage>/<name>-<key>/`. Training
writes to `<root>/train/.work/<name>-<key>/`, a directory that stays put across
requeues (checkpoints live there) until the run is committed.

Each training job first runs `scripts/check_axolotl_labels.py` (in the Axolotl
env, on a fresh start only), so a chat template that drops the traces fails
the job instead of silently training answer-only.

The client argv is the runner's own job payload (`python -m
compress_distill.node_main --config SNAPSHOT --store ROOT --node NODE_ID --out
ROOT/<stage>/.tmp/<name>-<key>.attempt`, the runner's attempt dir) unless
`client_argv` is given.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .axolotl_config import AXOLOTL_VERSION, cpu_overlay, dump_yaml, render_axolotl_config
from .config import StudyConfig, load_config
from .jobscripts import payload_argv, served_model
from .plan import Node, TrainParams, build_plan
from .sbatch import render_eval_job, render_train_job, render_vllm_job
from .store import ArtifactStore

ClientArgv = Callable[[Node, Path], Sequence[str]]
# Run before a fresh training start; the path must be readable from the compute nodes.
LABEL_CHECK = Path(__file__).resolve().parent.parent / "scripts" / "check_axolotl_labels.py"
SERVE_STAGES = ("generate", "compress", "judge")




def render_study(
    config: StudyConfig | str | Path, outdir: str | Path, *, overrides: Mapping[str, Any] | None = None,
    store_root: str | Path | None = None, cpu: bool | None = None, client_argv: ClientArgv | None = None,
) -> list[Path]:
    """Render every cell's Axolotl YAML and sbatch scripts (and the serving jobs); return the files written.

    `overrides` are resource overrides for every job (keys of `sbatch.Resources`,
    e.g. a dev cluster's partition). `cpu` renders the CPU Axolotl variant;
    by default it does so when the cluster profile has no GPUs.
    """
    cfg = config if isinstance(config, StudyConfig) else load_config(config)
    out = Path(outdir).resolve()
    plan = build_plan(cfg)
    root = Path(store_root or cfg.store_root).resolve()
    store = ArtifactStore(root)
    cpu = cfg.cluster.gpus_per_node == 0 if cpu is None else cpu

    def payload(node: Node, snapshot: Path) -> list[str]:
        out = store.attempt_dir(node.stage, node.name, plan.keys[node.id])
        return payload_argv(cfg, node, config_path=snapshot, store_root=root, out=out)

    argv_for = client_argv or payload
    written: list[Path] = []

    def write(rel: str, text: str) -> Path:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
        return path

    snapshot = write("config.snapshot.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    logs = root / "logs"

    for node in plan.nodes.values():
        if node.stage not in SERVE_STAGES:
            continue
        model, serve = served_model(cfg, node)
        tag = f"{node.name}-{plan.keys[node.id]}"
        script = render_vllm_job(
            cfg, job_name=f"cd-{node.stage}-{node.name}", model=model, serve=serve,
            client_argv=argv_for(node, snapshot), workdir=root,
            log_path=logs / node.stage / f"{tag}.%j.log", overrides=overrides,
        )
        write(f"serve/{node.stage}.{node.name}.sbatch", script)

    manifest: list[dict[str, Any]] = []
    for cell in plan.cells:
        train = plan.nodes[f"train/{cell.name}"]
        evaluate = plan.nodes[f"evaluate/{cell.name}"]
        derive_id = train.deps[0]
        dataset = root / "derive" / f"{derive_id.split('/', 1)[1]}-{plan.keys[derive_id]}" / "train.jsonl"
        tag = f"{cell.name}-{plan.keys[train.id]}"
        work = store.work_dir("train", cell.name, plan.keys[train.id])
        axo = render_axolotl_config(train, dataset_path=dataset, output_dir=work)
        if cpu:
            axo = cpu_overlay(axo)
        header = (f"Axolotl {AXOLOTL_VERSION} config for cell {cell.name} ({cell.gpus} GPU)\n"
                  f"Rendered by compress-distill from {cfg.name}; edit the study config, not this file.")
        cell_dir = f"cells/{cell.name}"
        yaml_path = write(f"{cell_dir}/axolotl.yaml", dump_yaml(axo, header))
        write(f"{cell_dir}/train.sbatch", render_train_job(
            cfg, cell, job_name=f"cd-train-{cell.name}", axolotl_config=yaml_path, output_dir=work,
            workdir=root, log_path=logs / "train" / f"{tag}.%j.log", overrides=overrides,
            launcher="python" if cpu else "torchrun", preflight=LABEL_CHECK,
        ))
        write(f"{cell_dir}/eval.sbatch", render_eval_job(
            cfg, cell, job_name=f"cd-eval-{cell.name}", checkpoint=work, client_argv=argv_for(evaluate, snapshot),
            workdir=root, log_path=logs / "evaluate" / f"{cell.name}-{plan.keys[evaluate.id]}.%j.log",
            overrides=overrides, lora_rank=TrainParams.of(train).lora_rank,
        ))
        manifest.append({"cell": cell.name, "gpus": cell.gpus, "axolotl_config": f"{cell_dir}/axolotl.yaml",
                         "train_script": f"{cell_dir}/train.sbatch", "eval_script": f"{cell_dir}/eval.sbatch",
                         "train_key": plan.keys[train.id]})
    write("manifest.json", json.dumps({"config": cfg.name, "cpu": cpu, "cells": manifest}, indent=2) + "\n")
    return written
