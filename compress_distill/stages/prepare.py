"""Stage `prepare`: load and normalise the datasets of one split kind into `questions.parquet`.

Bad rows go to `quarantine.parquet` with their reason and are counted; none
is silently dropped.
"""

from __future__ import annotations

from ..datasets.loaders import prepare_questions
from . import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    datasets, seed = ctx.node.params["datasets"], ctx.node.params["seed"]
    if ctx.node.name == "train-pool":
        stats = prepare_questions(datasets, "train", ctx.out, seed=seed)
    else:
        stats = prepare_questions(datasets, "eval", ctx.out, seed=seed)
    return StageResult({"questions.parquet": stats["questions"], "quarantine.parquet": stats["quarantined"]},
                       {"reasons": stats["reasons"], "skipped": stats["skipped"]})
