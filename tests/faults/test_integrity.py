"""Integrity of committed artifacts (issue D5): file sizes and sha256 in the manifest, corrupt
artifacts are never done and are moved aside when recomputed, `check-store` verifies hashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compress_distill.cli import app
from compress_distill.config import load_config
from compress_distill.plan import Plan, build_plan, hash_identity
from compress_distill.runner import RunContext, check_inputs, run_node, snapshot_config
from compress_distill.status import explain, node_status
from compress_distill.store import MANIFEST, ArtifactStore, write_parquet

from ..conftest import CONFIGS
from ..support import SKELETON_ENV

POOL = "prepare/train-pool"


@pytest.fixture(autouse=True)
def _skeleton_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    # stand-in stages: real Parquet files and real commits, no model (milliseconds per node)
    for k, v in SKELETON_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("COMPRESS_DISTILL_SKELETON_DELAY_S", "0")


def _commit_model(store: ArtifactStore, key: str = "k1") -> Path:
    """A train-like artifact: a table and a model dir with weights in a subdirectory."""
    tmp = store.begin("train", "cell", key)
    write_parquet([{"step": i, "loss": 1.0 / (i + 1)} for i in range(50)], tmp / "loss.parquet")
    (tmp / "model").mkdir()
    (tmp / "model" / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (tmp / "model" / "config.json").write_text("{}")
    return store.commit(tmp, "train", "cell", key, {"name": "cell", "key": key, "finished_at": 1})


def _ran(tmp_path: Path) -> tuple[Plan, ArtifactStore, RunContext]:
    plan = build_plan(load_config(CONFIGS / "mini-ci.yaml"))
    store = ArtifactStore(tmp_path / "store")
    ctx = RunContext(plan, store, snapshot_config(plan, store))
    for nid in ("prepare/eval-suite", *plan.nodes["generate/mini-teacher"].deps):  # the pool needs the suite
        run_node(ctx, nid)
    return plan, store, ctx


def _art(plan: Plan, store: ArtifactStore, nid: str) -> Path:
    node = plan.nodes[nid]
    return store.path(node.stage, node.name, plan.keys[nid])


def _invoke(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.output


def test_manifest_records_every_file_recursively_with_size_and_sha256(tmp_path: Path) -> None:
    import hashlib

    final = _commit_model(ArtifactStore(tmp_path))
    files = json.loads((final / MANIFEST).read_text())["files"]
    assert sorted(files) == ["loss.parquet", "model/config.json", "model/model.safetensors"]  # no manifest
    weights = (final / "model" / "model.safetensors").read_bytes()
    assert files["model/model.safetensors"] == {"size": len(weights), "sha256": hashlib.sha256(weights).hexdigest()}


def test_truncated_parquet_is_corrupt_not_done_and_named(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    final = _commit_model(store)
    assert store.is_done("train", "cell", "k1")
    size = (final / "loss.parquet").stat().st_size
    with (final / "loss.parquet").open("r+b") as f:
        f.truncate(size // 2)
    found = store.check("train", "cell", "k1")
    assert found.state == "corrupt" and not store.is_done("train", "cell", "k1")
    assert found.problems == (f"loss.parquet: {size // 2} bytes, expected {size}",)


def test_deleted_weights_are_corrupt_and_named(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    final = _commit_model(store)
    size = (final / "model" / "model.safetensors").stat().st_size
    (final / "model" / "model.safetensors").unlink()
    assert not store.is_done("train", "cell", "k1")
    assert store.check("train", "cell", "k1").problems == (f"model/model.safetensors: missing (expected {size} bytes)",)


def test_plan_reports_a_truncated_table_and_run_recomputes_it_keeping_the_damaged_copy(tmp_path: Path) -> None:
    plan, store, ctx = _ran(tmp_path)
    art = _art(plan, store, POOL)
    table = art / "questions.parquet"
    size = table.stat().st_size
    table.write_bytes(table.read_bytes()[: size - 10])

    st = node_status(plan, store, POOL)
    assert st.state == "run"
    assert st.reason.startswith(f"corrupt artifact (questions.parquet: {size - 10} bytes, expected {size})")
    code, out = _invoke("plan", str(CONFIGS / "mini-ci.yaml"), "--store", str(store.root), "--json")
    assert code == 0
    [node] = [n for n in json.loads(out)["nodes"] if n["id"] == POOL]
    assert node["status"] == "run" and "questions.parquet" in node["reason"]
    code, out = _invoke("plan", str(CONFIGS / "mini-ci.yaml"), "--store", str(store.root))
    assert code == 0 and f"warning: 1 committed artifact(s) corrupt (see reason), e.g. {POOL}" in out
    assert "will run" in explain(plan, store, POOL)[0] and "expected" in explain(plan, store, POOL)[1]
    # a consumer refuses the damaged input instead of failing inside a Parquet reader
    with pytest.raises(RuntimeError, match=f"upstream artifact corrupt.*{POOL}.*questions.parquet"):
        check_inputs(plan, store, "generate/mini-teacher")

    outcome = run_node(ctx, POOL)
    assert not outcome.cached and store.is_done("prepare", "train-pool", plan.keys[POOL])
    assert table.stat().st_size == size  # the same stage, recomputed
    [moved] = [p for p in (store.root / "prepare" / ".corrupt").iterdir() if p.is_dir()]
    assert (moved / "questions.parquet").stat().st_size == size - 10  # kept, not deleted
    note = json.loads(moved.with_name(moved.name + ".quarantine.json").read_text())
    assert note["problems"] == [f"questions.parquet: {size - 10} bytes, expected {size}"]
    check_inputs(plan, store, "generate/mini-teacher")  # no error now


def test_a_forced_rerun_also_keeps_a_corrupt_copy(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    final = _commit_model(store)
    (final / "loss.parquet").unlink()
    tmp = store.begin("train", "cell", "k1")
    store.commit(tmp, "train", "cell", "k1", {"name": "cell"}, replace=True)
    assert [p.name.split(".")[0] for p in (tmp_path / "train" / ".corrupt").iterdir() if p.is_dir()] == ["cell-k1"]


def test_check_store_detects_a_flipped_byte_of_the_same_size(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    _commit_model(store, "k1")
    final = _commit_model(store, "k2")
    code, out = _invoke("check-store", "--store", str(tmp_path))
    assert code == 0 and "checked 2 artifact(s)" in out and "2 ok, 0 corrupt" in out

    weights = final / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[1000] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert store.is_done("train", "cell", "k2")  # same size: only the hash tells
    code, out = _invoke("check-store", "--store", str(tmp_path))
    assert code == 1
    [line] = [ln for ln in out.splitlines() if ln.startswith("CORRUPT")]
    assert line.startswith("CORRUPT train/cell-k2: model/model.safetensors: sha256 ") and "same size" in line
    assert "1 ok, 1 corrupt" in out

    code, out = _invoke("check-store", "--store", str(tmp_path), "--quarantine")
    assert code == 1 and "moved to train/.corrupt/cell-k2." in out
    assert not store.path("train", "cell", "k2").exists() and store.is_done("train", "cell", "k1")
    code, out = _invoke("check-store", "--store", str(tmp_path))
    assert code == 0 and "1 ok, 0 corrupt" in out  # .corrupt/ is not part of the store


def test_check_store_finds_the_store_from_the_config(tmp_path: Path) -> None:
    import yaml

    cfg = yaml.safe_load((CONFIGS / "mini-ci.yaml").read_text())
    cfg["store_root"] = str(tmp_path / "store")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _commit_model(ArtifactStore(tmp_path / "store"))
    code, out = _invoke("check-store", str(path))
    assert code == 0 and "1 ok" in out
    code, out = _invoke("check-store")
    assert code == 2 and "give CONFIG" in out
    code, out = _invoke("check-store", "--store", str(tmp_path / "nowhere"))
    assert code == 2 and "no artifact store" in out


def test_old_manifests_without_files_stay_done_as_unverified(tmp_path: Path) -> None:
    """A store written before this change must not be recomputed wholesale (GPU-hours)."""
    store = ArtifactStore(tmp_path)
    final = _commit_model(store)
    manifest = json.loads((final / MANIFEST).read_text())
    del manifest["files"]
    (final / MANIFEST).write_text(json.dumps(manifest))
    (final / "loss.parquet").unlink()  # nothing to compare against: it cannot be told
    assert store.check("train", "cell", "k1").state == "unverified" and store.is_done("train", "cell", "k1")
    code, out = _invoke("check-store", "--store", str(tmp_path))
    assert code == 0 and "0 ok, 0 corrupt, 1 unverified" in out


def test_an_unreadable_manifest_is_corrupt_and_does_not_break_planning(tmp_path: Path) -> None:
    plan, store, _ = _ran(tmp_path)
    art = _art(plan, store, POOL)
    (art / MANIFEST).write_text('{"trunc')
    assert node_status(plan, store, POOL).state == "run"
    assert store.check("prepare", "train-pool", plan.keys[POOL]).problems == (f"{MANIFEST}: unreadable or not JSON",)
    art.rename(art.with_name("train-pool-0123456789abcdef"))  # now an older key: read for the identity diff
    assert node_status(plan, store, POOL) == node_status(plan, ArtifactStore(tmp_path / "empty"), POOL)
    assert "was ever committed" in explain(plan, store, POOL)[0]


def test_file_hashes_never_enter_keys(tmp_path: Path) -> None:
    plan, store, _ = _ran(tmp_path)
    manifest = store.manifest("prepare", "train-pool", plan.keys[POOL])
    assert manifest is not None and manifest["files"]
    assert "files" not in manifest["identity"] and hash_identity(manifest["identity"]) == plan.keys[POOL]
