"""Stage implementations. Each stage is `run(ctx: StageContext) -> StageResult`.

A stage reads its upstream artifacts from `ctx.inputs` (committed, read-only
directories) and writes only into `ctx.out` (a temporary directory that the
runner commits atomically) and `ctx.work` (resumable scratch that survives a
crash). It never touches the store itself.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import StudyConfig
from ..plan import Node

# stage -> "module:function". Stages land one by one; until then the skeleton stands in.
REGISTRY: dict[str, str] = {
    "prepare": "compress_distill.stages.skeleton:prepare",
    "generate": "compress_distill.stages.skeleton:generate",
    "verify": "compress_distill.stages.skeleton:verify",
    "compress": "compress_distill.stages.skeleton:compress",
    "judge": "compress_distill.stages.skeleton:judge",
    "derive": "compress_distill.stages.skeleton:derive",
    "train": "compress_distill.stages.skeleton:train",
    "evaluate": "compress_distill.stages.skeleton:evaluate",
    "report": "compress_distill.stages.skeleton:report",
}


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


def stage_function(stage: str) -> Callable[[StageContext], StageResult]:
    module, func = REGISTRY[stage].split(":")
    return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]
