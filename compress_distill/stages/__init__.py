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
from types import ModuleType
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
# COMPRESS_DISTILL_STAGES=<module>: a hook to replace stages (the package ships no stand-ins). The named
# module is imported and its function named after a stage (`generate(ctx)`, ...) runs instead of the
# REGISTRY's; stages it lacks stay real. An optional `SERVE_WITH` string in it replaces what serving
# jobs start (`stage`: no server, for stand-ins that serve no model). Jobs import it in their own
# process (a local subprocess, a Slurm job), which inherits this environment: the module must be
# importable there, e.g. through PYTHONPATH. The DAG-mechanics tests use tests/support/skeleton_stages.py.
STAGES_ENV = "COMPRESS_DISTILL_STAGES"


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
    placeholder: bool = False  # True when a stand-in wrote it: no model ran


def stage_overrides() -> ModuleType | None:
    """The module named by COMPRESS_DISTILL_STAGES, or None when it is unset."""
    name = os.environ.get(STAGES_ENV)
    if not name:
        return None
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(f"{STAGES_ENV}={name}: cannot import it ({err}); it must be an importable module "
                          "in this process and in the jobs' (PYTHONPATH)") from err


def override_serve_with() -> str | None:
    """`SERVE_WITH` of the override module: what serving jobs start instead of the config's choice."""
    mod = stage_overrides()
    return getattr(mod, "SERVE_WITH", None) if mod is not None else None


def stage_function(stage: str) -> Callable[[StageContext], StageResult]:
    mod = stage_overrides()
    if mod is not None and callable(getattr(mod, stage, None)):
        return getattr(mod, stage)  # type: ignore[no-any-return]
    module, func = REGISTRY[stage].split(":")
    return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]
