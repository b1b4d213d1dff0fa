"""The plan: the paper grid's cells, GPU counts and GPU-hours; cache-key identity rules."""

from __future__ import annotations

import copy
import csv
import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from compress_distill.cli import app
from compress_distill.config import parse_config
from compress_distill.plan import build_plan
from compress_distill.selection import expand_force, nodes_for_selection

from .conftest import CONFIGS, REPO

PAPER_GPU_HOURS = 280.9


@pytest.fixture(scope="module")
def paper_doc(tmp_path_factory: pytest.TempPathFactory) -> dict:
    store = tmp_path_factory.mktemp("store")
    res = CliRunner().invoke(app, ["plan", str(CONFIGS / "paper.yaml"), "--json", "--store", str(store)])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture
def paper_raw() -> dict:
    return yaml.safe_load((CONFIGS / "paper.yaml").read_text())


def test_paper_plan_has_55_cells_with_table11_gpus_and_hours(paper_doc: dict) -> None:
    cells = paper_doc["cells"]
    assert len(cells) == 55
    table = {(r["teacher"], r["student"], r["method"], r["data"]): int(r["gpus"])
             for r in csv.DictReader((REPO / "compress_distill/data/table11_compute.csv").open())}
    got = {(c["teacher"], c["student"], c["method"], c["data"]): c["gpus"] for c in cells}
    assert got == table
    total = sum(c["est_gpu_hours"] for c in cells)
    assert abs(total - PAPER_GPU_HOURS) / PAPER_GPU_HOURS < 0.02
    assert paper_doc["totals"]["train_gpu_hours"] == pytest.approx(total, abs=0.01)


def test_paper_grid_shape_and_exclusions(paper_doc: dict) -> None:
    cells = paper_doc["cells"]
    trunc = [c for c in cells if c["data"] == "truncated"]
    main = [c for c in cells if c["data"] != "truncated"]
    assert len(main) == 48 and len(trunc) == 7
    assert Counter(c["teacher"] for c in main) == {"qwen3.5-397b": 27, "gpt-oss-120b": 21}
    assert {c["teacher"] for c in trunc} == {"qwen3.5-397b"}
    answer_only = [c for c in cells if c["data"] == "answer_only"]
    assert {c["teacher"] for c in answer_only} == {"qwen3.5-397b"}
    assert all(c["student"] != "gpt-oss-20b" for c in answer_only)
    assert {c["method"] for c in cells if c["student"] == "gpt-oss-20b"} == {"full"}


def test_plan_json_is_a_consistent_graph(paper_doc: dict) -> None:
    ids = [n["id"] for n in paper_doc["nodes"]]
    assert len(ids) == len(set(ids))
    pos = {nid: i for i, nid in enumerate(ids)}
    for a, b in paper_doc["edges"]:
        assert pos[a] < pos[b], "nodes are listed in topological order"
    stages = Counter(n["stage"] for n in paper_doc["nodes"])
    assert stages["train"] == stages["evaluate"] == 55
    assert stages["generate"] == stages["verify"] == 2
    assert stages["compress"] == 4 and stages["report"] == 1
    for n in paper_doc["nodes"]:
        assert set(n) >= {"id", "stage", "key", "deps", "status", "reason", "job", "est_gpu_hours"}
        assert n["status"] == "run"
    gen = next(n for n in paper_doc["nodes"] if n["id"] == "generate/qwen3.5-397b")
    assert gen["job"]["gpus"] == 8 and gen["est_gpu_hours"] == pytest.approx(348.0)


def _keys(data: dict) -> dict[str, str]:
    return build_plan(parse_config(data)).keys


# Which edits keep every key, and which change which keys (marin's identity table).
KEEP_ALL = [
    ("store root", lambda d: d.update(store_root="/somewhere/else")),
    ("partition", lambda d: d["cluster"].update(partition="other")),
    ("time limit", lambda d: d["cluster"]["jobs"]["train"].update(time_limit="48:00:00")),
    ("label", lambda d: d["students"]["qwen3.5-9b"].update(label="Qwen 9B")),
    ("description", lambda d: d.update(description="changed")),
    ("vllm memory fraction", lambda d: d["teachers"]["qwen3.5-397b"]["serve"].update(gpu_memory_utilization=0.9)),
    ("study name", lambda d: d.update(name="paper-copy")),
]


@pytest.mark.parametrize("what,edit", KEEP_ALL, ids=[k for k, _ in KEEP_ALL])
def test_edits_that_keep_every_key(paper_raw: dict, what: str, edit) -> None:  # type: ignore[no-untyped-def]
    before = _keys(paper_raw)
    changed = copy.deepcopy(paper_raw)
    edit(changed)
    assert _keys(changed) == before, what


def _changed(paper_raw: dict, edit) -> set[str]:  # type: ignore[no-untyped-def]
    before = _keys(paper_raw)
    changed = copy.deepcopy(paper_raw)
    edit(changed)
    after = _keys(changed)
    assert set(after) == set(before)
    return {k for k in before if before[k] != after[k]}


def test_student_learning_rate_changes_only_its_train_eval_and_report(paper_raw: dict) -> None:
    def edit(d: dict) -> None:
        d["students"]["qwen3.5-9b"]["method_overrides"] = {"full": {"learning_rate": 2e-5}}

    changed = _changed(paper_raw, edit)
    expected = {f"{s}/{t}.qwen3.5-9b.full.{d}" for s in ("train", "evaluate")
                for t, d in [("qwen3.5-397b", x) for x in ("raw", "llama70b", "ministral14b", "answer_only", "truncated")]
                + [("gpt-oss-120b", x) for x in ("raw", "llama70b", "ministral14b")]}
    assert changed == expected | {"report/study"}


def test_compressor_prompt_changes_its_branch_only(paper_raw: dict) -> None:
    changed = _changed(paper_raw, lambda d: d["compressors"]["ministral14b"].update(prompt="{question} {trace} shorter"))
    assert "compress/qwen3.5-397b.ministral14b" in changed
    assert "compress/qwen3.5-397b.llama70b" not in changed
    assert "generate/qwen3.5-397b" not in changed
    assert "train/qwen3.5-397b.qwen3.5-9b.full.truncated" in changed  # truncation matches Ministral lengths
    assert "train/qwen3.5-397b.qwen3.5-9b.full.raw" not in changed


def test_teacher_sampling_changes_everything_downstream_of_it(paper_raw: dict) -> None:
    changed = _changed(paper_raw, lambda d: d["teachers"]["gpt-oss-120b"]["sampling"].update(temperature=0.8))
    assert "generate/gpt-oss-120b" in changed and "generate/qwen3.5-397b" not in changed
    assert all("qwen3.5-397b" not in k for k in changed)


def test_selection_and_force(paper_raw: dict) -> None:
    plan = build_plan(parse_config(paper_raw))
    nodes = nodes_for_selection(plan, {"student": "gpt-oss-20b", "data": "raw"})
    assert "train/qwen3.5-397b.gpt-oss-20b.full.raw" in nodes and "generate/gpt-oss-120b" in nodes
    assert not any(n.startswith("compress/") for n in nodes)
    assert "report/study" not in nodes
    assert nodes_for_selection(plan, {})[-1] == "report/study"
    with pytest.raises(ValueError, match="matches no cell"):
        nodes_for_selection(plan, {"student": "nope"})
    with pytest.raises(ValueError, match="unknown selection axis"):
        nodes_for_selection(plan, {"size": "8b"})
    assert len(expand_force(plan, ["train/*gpt-oss-20b*"])) == 7
    with pytest.raises(ValueError, match="matches no node"):
        expand_force(plan, ["trian/*"])


def test_duplicate_cells_across_blocks_are_an_error(paper_raw: dict) -> None:
    paper_raw["grid"].append(dict(paper_raw["grid"][0], name="again"))
    with pytest.raises(ValueError, match="appears in blocks"):
        build_plan(parse_config(paper_raw))


def test_plan_cli_table_and_bad_config(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["plan", str(CONFIGS / "mini.yaml"), "--store", str(tmp_path)])
    assert r.exit_code == 0 and "plan mini" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [\n")
    r = CliRunner().invoke(app, ["plan", str(bad)])
    assert r.exit_code == 2 and "malformed YAML" in r.output


def test_plan_imports_no_serving_or_miniworld() -> None:
    """plan.py is pure: the models the study builds reach it as data (model_refs), not via serving/miniworld."""
    import ast

    tree = ast.parse((REPO / "compress_distill" / "plan.py").read_text())
    local = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            local.add(node.module or "")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            assert not any("compress_distill" in (a.name or "") for a in node.names)
            assert "compress_distill" not in (getattr(node, "module", "") or "")
    assert local == {"config", "cluster.families", "model_refs", "versions"}


def test_build_nodes_follow_declared_dependencies() -> None:
    """A compressor's build starts from the teacher's (its recipe says so); the order is the deps', not names'."""
    from compress_distill.model_refs import model_build

    cfg = parse_config(yaml.safe_load((CONFIGS / "mini-ci.yaml").read_text()))
    plan = build_plan(cfg)
    order = list(plan.nodes)
    builds = [model_build(n.params["ref"]) for n in plan.nodes.values() if n.stage == "build"]
    assert len(builds) == 4  # teacher, two compressors, the student
    for b in builds:
        assert b is not None
        node = plan.nodes[f"build/{b.name}"]
        assert node.params == {"ref": b.ref, "recipe_key": b.recipe_key}
        assert node.deps == tuple(f"build/{a.replace(':', '.')}" for a in b.after)
        assert all(order.index(d) < order.index(node.id) for d in node.deps)
    compressors = [b for b in builds if b is not None and b.after]
    assert len(compressors) == 2 and all(b.after == ("mini-quick:teacher",) for b in compressors)


def test_topological_order_is_stable_and_rejects_cycles() -> None:
    from compress_distill.plan import JobSpec, Node, topological

    def n(name: str, *deps: str) -> Node:
        return Node("prepare", name, {}, tuple(f"prepare/{d}" for d in deps), JobSpec("cpu"))

    nodes = {x.id: x for x in (n("c", "b"), n("a"), n("b", "a"), n("d"))}
    assert list(topological(nodes)) == ["prepare/a", "prepare/b", "prepare/c", "prepare/d"]
    ordered = {x.id: x for x in (n("a"), n("d"), n("b", "a"), n("c", "b"))}
    assert list(topological(ordered)) == list(ordered)  # already topological: kept as it is
    with pytest.raises(ValueError, match="cycle"):
        topological({x.id: x for x in (n("a", "b"), n("b", "a"), n("c"))})
    with pytest.raises(ValueError, match="not in the plan"):
        topological({x.id: x for x in (n("a", "zz"),)})


def _mini_ci(seeds: list[int] | None = None, block: int = 1) -> dict:
    data = yaml.safe_load((CONFIGS / "mini-ci.yaml").read_text())
    if seeds is not None:
        data["grid"][block]["seeds"] = seeds
    return data


def test_seeds_add_train_and_eval_nodes_per_seed_sharing_upstream() -> None:
    """N seeds -> N train and N evaluate nodes with distinct keys, on one shared derive (and everything
    above it); the run at training.seed (42) keeps today's name and keys, the others add `.s<seed>`."""
    base = build_plan(parse_config(_mini_ci()))
    plan = build_plan(parse_config(_mini_ci([42, 1, 2])))
    names = ["mini-teacher.tiny.lora.raw", "mini-teacher.tiny.lora.raw.s1", "mini-teacher.tiny.lora.raw.s2"]
    assert [c.name for c in plan.cells if c.method == "lora"] == names
    assert [c.seed for c in plan.cells if c.method == "lora"] == [42, 1, 2]
    for stage in ("train", "evaluate"):
        ids = [f"{stage}/{n}" for n in names]
        assert len({plan.keys[i] for i in ids}) == 3
    assert {plan.nodes[f"train/{n}"].deps for n in names} == {plan.nodes[f"train/{names[0]}"].deps}
    assert [plan.train_params(c).training.seed for c in plan.cells if c.method == "lora"] == [42, 1, 2]
    assert [plan.nodes[f"evaluate/{n}"].params["seed"] for n in names] == [42, 1, 2]
    # adding seeds only adds nodes: every existing key but the report's (it covers every cell) is kept
    assert set(plan.nodes) - set(base.nodes) == {f"{s}/{n}" for s in ("train", "evaluate") for n in names[1:]}
    assert {n for n in base.nodes if base.keys[n] != plan.keys[n]} == {"report/study"}
    # a single seed other than training.seed is named by it and keyed by it; upstream is unchanged
    other = build_plan(parse_config(_mini_ci([7])))
    assert "train/mini-teacher.tiny.lora.raw.s7" in other.nodes and f"train/{names[0]}" not in other.nodes
    assert all(other.keys[n] == base.keys[n] for n in base.nodes if n.split("/")[0] not in
               ("train", "evaluate", "report"))


def test_one_cell_at_two_seeds_in_two_blocks() -> None:
    data = _mini_ci([1])
    data["grid"].append(dict(data["grid"][1], name="more", seeds=[2]))
    assert [c.name for c in build_plan(parse_config(data)).cells][-2:] == \
        ["mini-teacher.tiny.lora.raw.s1", "mini-teacher.tiny.lora.raw.s2"]
    data["grid"][-1]["seeds"] = [1]
    with pytest.raises(ValueError, match=r"mini-teacher\.tiny\.lora\.raw\.s1 appears in blocks 'ci-lora' and 'more'"):
        build_plan(parse_config(data))


def test_select_by_seed() -> None:
    plan = build_plan(parse_config(_mini_ci([42, 1, 2], block=0)))
    assert [c.name for c in plan.select({"seed": "1"})] == [
        f"mini-teacher.tiny.full.{d}.s1" for d in ("raw", "mild", "aggressive", "answer_only", "truncated")]
    nodes = nodes_for_selection(plan, {"seed": "1", "data": "raw"})
    assert [n for n in nodes if n.split("/")[0] in ("train", "evaluate")] == [
        "train/mini-teacher.tiny.full.raw.s1", "evaluate/mini-teacher.tiny.full.raw.s1"]
    assert "derive/mini-teacher.raw" in nodes  # shared upstream comes along
    with pytest.raises(ValueError, match="allowed: teacher, student, method, data, seed"):
        plan.select({"sede": "1"})
