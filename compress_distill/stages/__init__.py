"""Stage implementations. Each stage is `run(ctx: StageContext) -> StageResult`.

A stage reads its upstream artifacts from `ctx.inputs` (committed, read-only
directories) and writes only into `ctx.out` (a temporary directory that the
runner commits atomically) and `ctx.work` (resumable scratch that survives a
crash). It never touches the store itself.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import StudyConfig
from ..plan import Node

# stage -> "module:function"
REGISTRY: dict[str, str] = {
    "build": "compress_distill.stages.build:run",
    "prepare": "compress_distill.stages.prepare:run",
    "generate": "compress_distill.stages.generate:run",
    "verify": "compress_distill.stages.verify:run",
    "compress": "compress_distill.stages.compress:run",
    "judge": "compress_distill.stages.judge:run",
    "derive": "compress_distill.stages.derive:run",
    "train": "compress_distill.stages.train:run",
    "evaluate": "compress_distill.stages.evaluate:run",
    "report": "compress_distill.stages.report:run",
}
# COMPRESS_DISTILL_STAGES=skeleton swaps in stand-ins that run no model: the DAG-mechanics tests
# (caching, selective re-runs, kill/resume) exercise the orchestration in seconds with them.
SKELETON_ENV = "COMPRESS_DISTILL_STAGES"


@dataclass
class StageContext:
    config: StudyConfig
    node: Node
    inputs: Mapping[str, Path]  # upstream node id -> committed artifact dir
    out: Path
    # crash-surviving scratch for item-level resume (shards, checkpoints); removed after commit
    work: Path
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("compress_distill.stage"))

    def input(self, stage: str, name: str | None = None) -> Path:
        """The one upstream artifact of `stage` (optionally with `name`)."""
        hits = [p for nid, p in self.inputs.items()
                if nid.split("/", 1)[0] == stage and (name is None or nid.split("/", 1)[1] == name)]
        if len(hits) != 1:
            raise LookupError(f"{self.node.id}: expected one upstream {stage} artifact, found {len(hits)}")
        return hits[0]


@dataclass
class StageResult:
    rows: dict[str, int] = field(default_factory=dict)  # table file -> row count
    metrics: dict[str, Any] = field(default_factory=dict)
    placeholder: bool = False  # True while a stage is the skeleton stand-in


def skeleton_stages() -> bool:
    return os.environ.get(SKELETON_ENV) == "skeleton"


def stage_function(stage: str) -> Callable[[StageContext], StageResult]:
    if skeleton_stages():
        module, func = "compress_distill.stages.skeleton", stage
    else:
        module, func = REGISTRY[stage].split(":")
    return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]
