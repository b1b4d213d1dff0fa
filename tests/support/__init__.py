"""Test support shared by test modules and by the jobs those tests start.

`SKELETON_ENV`: the environment that swaps the stand-in stages (skeleton_stages.py) in through the
package's hook, COMPRESS_DISTILL_STAGES (compress_distill/stages/__init__.py). Jobs run in their own
processes (local subprocesses, Slurm jobs on this machine) that inherit the environment, so it also
puts the repo root first on PYTHONPATH: `tests.support.skeleton_stages` imports there too.
"""

from __future__ import annotations

import os
from pathlib import Path

from compress_distill.stages import STAGES_ENV

REPO = Path(__file__).resolve().parents[2]
SKELETON_MODULE = "tests.support.skeleton_stages"


def _pythonpath() -> str:
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO)]
    return os.pathsep.join([str(REPO), *parts])


SKELETON_ENV: dict[str, str] = {STAGES_ENV: SKELETON_MODULE, "PYTHONPATH": _pythonpath()}
