"""Stage `train`: one student cell on one training set.

`training.backend: trl` trains in-process with TRL (the mini world's CPU default);
`training.backend: axolotl` runs Axolotl in its own environment (`training.axolotl_backend`):
the cluster's config as is where the job has GPUs, with the CPU overlay where it has none.
Either way checkpoints and the loss log live in the node's work dir, so a killed job
resumes; the final model, `loss.parquet` and `train_result.json` are published.

The hyperparameters come from the node's identity (`TrainParams.of(ctx.node)`: the method
with the student's overrides folded in, the FSDP decision, the family), i.e. the values
its key hashed; the config gives only what is not identity (environments, `save_steps`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..plan import TrainParams
from ..serving import mini_ref, resolve_model_dir
from . import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    train = TrainParams.of(ctx.node)
    if train.training.backend == "axolotl":
        from ..training.axolotl_backend import train_cell

        result = train_cell(cfg, ctx.node, ctx.input("derive") / "train.jsonl", ctx.work,
                            base_model=_base_model(train.student))
    else:
        from ..training.trl_backend import train_student

        threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
        result = train_student(resolve_model_dir(train.student), ctx.input("derive") / "train.parquet", ctx.work,
                               train.method, train.training, threads=threads, max_steps=train.training.max_steps,
                               save_steps=cfg.training.save_steps)
    for name in ("model", "loss.parquet", "train_result.json"):
        src = ctx.work / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, ctx.out / name)
    return StageResult({"loss.parquet": _rows(ctx.out / "loss.parquet")}, result.to_dict())


def _base_model(ref: str) -> str:
    """A local dir for mini-world refs and model dirs; a hub id as is (Axolotl downloads it)."""
    if mini_ref(ref) or Path(ref).is_dir():
        return str(resolve_model_dir(ref))
    return ref


def _rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows
