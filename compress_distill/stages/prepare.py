"""Stage `prepare`: load and normalise the datasets of one split kind into `questions.parquet`.

Bad rows go to `quarantine.parquet` with their reason and are counted; none
is silently dropped. The train pool comes after the evaluation suite: its
questions are checked against the suite's (datasets/contamination.py), the
pairs are listed in `contamination.parquet` / `.json`, and with
`contamination.quarantine` on the flagged ones are quarantined (reason
`contaminated`) before any teacher sees them.
"""

from __future__ import annotations

import pyarrow.parquet as pq

from ..config import ContaminationSpec
from ..datasets.loaders import prepare_questions
from . import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    datasets, seed = ctx.node.params["datasets"], ctx.node.params["seed"]
    if ctx.node.name == "train-pool":
        suite = pq.read_table(ctx.input("prepare", "eval-suite") / "questions.parquet").to_pylist()
        spec = ContaminationSpec.model_validate(ctx.node.params["contamination"])  # what the key hashed
        stats = prepare_questions(datasets, "train", ctx.out, seed=seed, eval_questions=suite, contamination=spec)
    else:
        stats = prepare_questions(datasets, "eval", ctx.out, seed=seed)
    rows = {"questions.parquet": stats["questions"], "quarantine.parquet": stats["quarantined"]}
    metrics = {"reasons": stats["reasons"], "skipped": stats["skipped"]}
    if "contamination" in stats:
        rows["contamination.parquet"] = stats["contamination"]["pairs"]
        metrics["contamination"] = stats["contamination"]
    return StageResult(rows, metrics)
