"""Stage `train`: one student cell on one training set.

`training.backend: trl` trains on CPU with TRL (the mini world). Checkpoints
and the loss log live in the node's work dir, so a killed job resumes; the
final model, `loss.parquet` and `train_result.json` are published.
`training.backend: axolotl` cells run the rendered Axolotl job on the cluster
(`compress-distill render`), not through this in-process path.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..serving import resolve_model_dir
from . import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    if cfg.training.backend != "trl":
        raise NotImplementedError(
            "training.backend 'axolotl' runs as the rendered Axolotl sbatch job (compress-distill render); "
            "the in-process trainer is TRL (training.backend: trl)")
    from ..training.trl_backend import train_student

    cell = ctx.node.cell
    assert cell is not None
    method = cfg.method_for(cell.student, cell.method)
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    result = train_student(resolve_model_dir(cfg.students[cell.student].model),
                           ctx.input("derive") / "train.parquet", ctx.work, method, cfg.training,
                           threads=threads, max_steps=cfg.training.max_steps, save_steps=cfg.training.save_steps)
    for name in ("model", "loss.parquet", "train_result.json"):
        src = ctx.work / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, ctx.out / name)
    return StageResult({"loss.parquet": _rows(ctx.out / "loss.parquet")}, result.to_dict())


def _rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows
