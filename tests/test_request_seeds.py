"""Every served request carries its own seed, derived from its item id and round: what an item gets
depends on neither batching nor the other items, on vLLM (a per-request generator) as on the
project's server. The compress and evaluate stages are run against a scripted server that records
each request body."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from compress_distill.config import parse_config
from compress_distill.generation.client import Sampling, request_seed
from compress_distill.generation.fake_server import FakeServer, Reply, SeenRequest, completion
from compress_distill.miniworld.recipes import resolve_model
from compress_distill.plan import build_plan
from compress_distill.serving import SERVER_URL_ENV
from compress_distill.stages import StageContext

from .conftest import CONFIGS


def test_request_seeds_are_per_item_and_round_and_stable() -> None:
    s = Sampling(temperature=0.7, max_tokens=8, seed=0)
    seeds = {(k, r): s.for_request(k, r).seed for k in ("a", "b", "c") for r in (0, 1, 2)}
    assert len(set(seeds.values())) == len(seeds)
    assert s.for_request("a", 1) == s.for_request("a", 1) and s.for_request("a", 1).temperature == 0.7
    assert Sampling(seed=1).for_request("a", 1).seed != seeds[("a", 1)]  # the base seed enters it
    assert Sampling(seed=None).for_request("a", 1).seed is None  # unseeded stays unseeded
    # pinned: generation requests have carried this seed since before this helper existed; a change
    # alters every teacher request (and must bump the generate stage's code version)
    assert request_seed(0, "add-17", 2) == 1985170347
    assert all(0 <= v < 2**31 for v in seeds.values())


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Any:
    def script(req: SeenRequest) -> Reply:
        return Reply(body=completion("3", reasoning="a b c"))

    with FakeServer(script) as srv:
        monkeypatch.setenv(SERVER_URL_ENV, srv.base_url)
        yield srv


def _plan(seeds: list[int]) -> Any:
    data = yaml.safe_load((CONFIGS / "mini-ci.yaml").read_text())
    data["compressors"]["mini-mild"]["model"] = "mini:compressor-mild"  # shipped: its tokenizer is here
    data["grid"][1]["seeds"] = seeds
    return build_plan(parse_config(data, "<test>"))


def _write(rows: list[dict[str, Any]], path: Path) -> Path:
    path.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), path / ("traces.parquet" if "verify" in path.name
                                                       else "questions.parquet"))
    return path


QUESTIONS = [{"id": f"add-{i}", "question": f"What is ({i} + 1) mod 10?", "answer": str((i + 1) % 10),
              "answer_type": "numeric", "dataset": "add", "domain": "math"} for i in range(6)]


def test_compress_requests_are_seeded_per_trace(server: Any, tmp_path: Path) -> None:
    from compress_distill.stages import compress

    plan = _plan([42])
    node = plan.nodes["compress/mini-teacher.mini-mild"]
    traces = [{**q, "response": f"<think>{q['id']} reasoning</think>{q['answer']}"} for q in QUESTIONS]
    verify = _write(traces, tmp_path / "verify")
    out = tmp_path / "out"
    out.mkdir()
    compress.run(StageContext(plan.config, node, {"verify/mini-teacher": verify}, out, tmp_path / "w"))
    base = plan.config.compressors["mini-mild"].sampling.seed
    sent = sorted(r.body["seed"] for r in server.requests)
    assert sent == sorted(request_seed(base, q["id"], 0) for q in QUESTIONS) and len(set(sent)) == len(QUESTIONS)


@pytest.mark.parametrize("seed", [42, 3])
def test_evaluate_requests_are_seeded_by_the_run_seed_and_question(server: Any, tmp_path: Path, seed: int) -> None:
    from compress_distill.stages import evaluate

    plan = _plan([42, 3])
    cell = "mini-teacher.tiny.lora.raw" + ("" if seed == 42 else f".s{seed}")
    node = plan.nodes[f"evaluate/{cell}"]
    suite = _write(QUESTIONS, tmp_path / "suite")
    # the trained student's directory: evaluate counts reasoning tokens with its tokenizer
    shutil.copytree(resolve_model("mini:student-tiny"), tmp_path / "model" / "model")
    out = tmp_path / "out"
    out.mkdir()
    evaluate.run(StageContext(plan.config, node, {f"train/{cell}": tmp_path / "model",
                                                  "prepare/eval-suite": suite}, out, tmp_path / "w"))
    by_q = {r.body["messages"][-1]["content"]: r.body["seed"] for r in server.requests}
    assert sorted(by_q.values()) == sorted(request_seed(seed, q["id"], 0) for q in QUESTIONS)
    assert len(set(by_q.values())) == len(QUESTIONS)
