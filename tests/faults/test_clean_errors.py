"""Fault suite (issue 16, D7): a failed run prints one summary, no traceback; the summary names the
file that has the tracebacks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import CONFIGS, REPO
from ..support import SKELETON_ENV

pytestmark = pytest.mark.slow


def test_a_failed_run_prints_its_summary_and_names_the_traceback_file(tmp_path: Path) -> None:
    env = {**os.environ, **SKELETON_ENV,
           "COMPRESS_DISTILL_INJECT_JOBS": "train/mini-teacher.tiny.full.raw"}
    proc = subprocess.run([sys.executable, "-m", "compress_distill.cli", "run", str(CONFIGS / "mini-ci.yaml"),
                           "--store", str(tmp_path / "store"), "--select", "student=tiny", "--select", "method=full",
                           "--select", "data=raw", "--no-progress"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 1
    err = proc.stderr
    assert "Traceback" not in err, err[-3000:]
    assert "grid failed" in err and "train/mini-teacher.tiny.full.raw" in err
    m = re.search(r"tracebacks: (\S+)", err)
    assert m, err[-2000:]
    assert "Traceback" in Path(m.group(1)).read_text()
