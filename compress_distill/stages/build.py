"""Stage `build`: a mini-world model (teacher, compressors, student inits) built from its recipe.

The model directory lives in `models/mini/<name>-<recipe key>/` (shipped in
the repo for the full recipes) or `models/mini-quick/` (CI-sized recipes,
built on demand). A directory already carrying the key is reused; the node's
artifact records which directory and key it resolved.
"""

from __future__ import annotations

import json
import os

from ..serving import mini_ref, mini_root, resolve_model_dir
from . import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    ref = ctx.node.params["ref"]
    mini = mini_ref(ref)
    assert mini is not None
    from ..miniworld.build import build_models
    from ..miniworld.recipes import parse_ref

    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    build_models([parse_ref(mini[0])], quick=mini[1], threads=threads, root=mini_root(mini[1]))
    model_dir = resolve_model_dir(ref)
    info = {"ref": ref, "dir": model_dir.name, "recipe_key": ctx.node.params["recipe_key"]}
    (ctx.out / "model.json").write_text(json.dumps(info, indent=1))
    return StageResult({}, info)
