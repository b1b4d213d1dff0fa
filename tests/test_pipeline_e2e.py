"""The real pipeline end to end on the reduced CI grid (configs/mini-ci.yaml).

Served generation with rejection rounds, compression, every derived source,
TRL training (full and LoRA), served greedy evaluation and the report, on
CI-sized mini-world models built by the DAG's own build step. Asserts the
mechanics (every cell present, ratios computed, no NaN), not the science.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from .conftest import CONFIGS, REPO

pytestmark = pytest.mark.slow


def test_mini_ci_grid_runs_end_to_end(tmp_path: Path) -> None:
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if k != "COMPRESS_DISTILL_STAGES"}
    res = subprocess.run([sys.executable, "-m", "compress_distill.cli", "run", str(CONFIGS / "mini-ci.yaml"),
                          "--store", str(store), "--json"], capture_output=True, text=True, cwd=REPO, env=env,
                         timeout=1500)
    assert res.returncode == 0, res.stderr[-4000:]
    summary = json.loads(res.stdout)
    cfg = yaml.safe_load((CONFIGS / "mini-ci.yaml").read_text())
    n_cells = sum(len(b["teachers"]) * len(b["students"]) * len(b["methods"]) * len(b["data"]) for b in cfg["grid"])
    assert not summary["failed"] and len(summary["ran"]) == summary["nodes"]

    manifests = [json.loads(p.read_text()) for p in store.glob("*/*/manifest.json")]
    assert manifests and not any(m["placeholder"] for m in manifests if m["stage"] != "judge")

    train = [m for m in manifests if m["stage"] == "train"]
    evals = [m for m in manifests if m["stage"] == "evaluate"]
    assert len(train) == len(evals) == n_cells
    for m in train:
        assert m["metrics"]["steps"] > 0 and math.isfinite(m["metrics"]["final_loss"])
    for m in evals:
        assert 0.0 <= m["metrics"]["accuracy"] <= 1.0 and m["metrics"]["n"] > 0

    gen = next(store.glob("generate/*/attempts.parquet"))
    attempts = pq.read_table(gen).to_pylist()
    assert attempts and {a["round"] for a in attempts} >= {1}
    comp = [r for p in store.glob("compress/*/compressed.parquet") for r in pq.read_table(p).to_pylist()]
    assert all(r["rho"] is None or math.isfinite(r["rho"]) for r in comp)

    report_dir = next(store.glob("report/study-*"))  # not report/.work
    md = (report_dir / "report.md").read_text()
    html = (report_dir / "report.html").read_text()
    for m in train:
        assert m["name"].split(".", 1)[1].split(".")[0] in md  # every student appears
    assert "nan" not in md.lower().replace("nano", "")
    assert "<table" in html and "## Findings" in md
    assert len(list((report_dir / "figures").glob("*.png"))) >= 3

    again = subprocess.run([sys.executable, "-m", "compress_distill.cli", "run", str(CONFIGS / "mini-ci.yaml"),
                            "--store", str(store), "--json"], capture_output=True, text=True, cwd=REPO, env=env,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["ran"] == []

    undocumented = undocumented_parquet(store, (REPO / "README.md").read_text())
    assert not undocumented, f"README's Parquet section misses: {undocumented}"

    rep = subprocess.run([sys.executable, "-m", "compress_distill.cli", "report", str(CONFIGS / "mini-ci.yaml"),
                          "--store", str(store), "--out", str(tmp_path / "rep")], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=300)
    assert rep.returncode == 0 and "cached" in rep.stdout, rep.stderr[-2000:]
    assert (tmp_path / "rep" / "report.md").read_text() == md

    # The cost ledger of the same store: every cell, the report's Table 12, shares adding up to the jobs.
    assert "Table 12. Cost ledger" in md
    led = subprocess.run([sys.executable, "-m", "compress_distill.cli", "ledger", str(store), "--json"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert led.returncode == 0, led.stderr[-2000:]
    doc = json.loads(led.stdout)
    assert len(doc["cells"]) == n_cells
    for stage in ("generate", "compress"):
        shares = sum(c["cost"][stage]["cpu_core_hours"] or 0.0 for c in doc["cells"])
        left = doc["unapportioned"].get(stage, {}).get("cpu_core_hours") or 0.0
        assert shares + left == pytest.approx(doc["jobs_by_stage"][stage]["cpu_core_hours"])


def undocumented_parquet(store: Path, readme: str) -> list[str]:
    """`stage/file.parquet[:column]` for every published table or column the README does not describe."""
    section = readme.split("## Parquet artifacts and their schemas", 1)[1].split("\n## ", 1)[0]
    blocks = {}
    for block in section.split("\n#### ")[1:]:
        head, _, body = block.partition("\n")
        for path in head.split("`")[1::2]:  # a heading may name several files that share one column list
            blocks[(path.split("/", 1)[0], path.rsplit("/", 1)[1])] = body
    missing = []
    for f in sorted(store.glob("*/*/*.parquet")):
        stage = f.parent.parent.name
        body = blocks.get((stage, f.name))
        if body is None:
            missing.append(f"{stage}/{f.name}")
            continue
        missing += [f"{stage}/{f.name}:{c}" for c in pq.read_schema(f).names if f"`{c}`" not in body]
    return sorted(set(missing))
