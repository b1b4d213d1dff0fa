"""The local OpenAI-compatible server: a real child process serving a tiny random-init Qwen3 on CPU."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import httpx
import pytest

from compress_distill.generation.client import (
    ChatClient,
    ChatRequest,
    ClientConfig,
    RequestRejected,
    Sampling,
)
from compress_distill.generation.local_server import _split_think, serve
from compress_distill.generation.testing import session_server
from compress_distill.generation.tiny_model import ensure_tiny_model

pytest.importorskip("torch", reason="the local server needs the `local` extra")
pytest.importorskip("transformers", reason="the local server needs the `local` extra")
log = logging.getLogger(__name__)
MSGS = [{"role": "user", "content": "What is 2 plus 3?"}]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_model(tmp_path_factory.getbasetemp() / "tiny-qwen3")


@pytest.fixture(scope="module")
def server(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    t0 = time.monotonic()
    s = session_server(pytestconfig, tmp_path_factory.getbasetemp())
    log.info("server ready after %.1fs", time.monotonic() - t0)
    return s.base_url, s.model, s.request_log


def _post(url: str, model: str, **kw) -> dict:  # noqa: ANN003
    r = httpx.post(f"{url}/chat/completions", json={"model": model, "messages": MSGS, **kw}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_health_and_models(server) -> None:  # noqa: ANN001
    url, model, _ = server
    assert httpx.get(url.removesuffix("/v1") + "/health").json() == {"status": "ok"}
    assert [m["id"] for m in httpx.get(f"{url}/models").json()["data"]] == [model]


def test_temperature_seed_max_tokens_and_usage_are_honoured(server) -> None:  # noqa: ANN001
    url, model, _ = server
    greedy = [_post(url, model, temperature=0, max_tokens=12, seed=s) for s in (1, 2)]
    assert greedy[0]["choices"] == greedy[1]["choices"]  # T=0 ignores the seed
    same = [_post(url, model, temperature=1.0, max_tokens=24, seed=7)["choices"][0]["message"]["content"]
            for _ in range(2)]
    diff = {_post(url, model, temperature=1.0, max_tokens=24, seed=s)["choices"][0]["message"]["content"]
            for s in range(3)}
    assert same[0] == same[1] and len(diff) == 3  # sampling really happens, and the seed pins it
    r = _post(url, model, temperature=1.0, max_tokens=5, seed=1)
    assert r["usage"]["completion_tokens"] <= 5 and r["usage"]["prompt_tokens"] > 0
    assert r["choices"][0]["finish_reason"] in ("length", "stop")
    if r["choices"][0]["finish_reason"] == "length":
        assert r["usage"]["completion_tokens"] == 5
    # `stop` strings cut the text and report "stop"
    seed, text = next((s, t) for s in range(7, 40) if len(t := _post(url, model, temperature=1.0, max_tokens=24,
                                                                     seed=s)["choices"][0]["message"]["content"]) >= 8)
    cut = _post(url, model, temperature=1.0, max_tokens=24, seed=seed, stop=[text[4:7]])["choices"][0]
    assert cut["finish_reason"] == "stop" and text.startswith(cut["message"]["content"])


def test_bad_requests_are_4xx_through_the_client(server) -> None:  # noqa: ANN001
    url, model, req_log = server

    async def go(cfg: ClientConfig, sampling: Sampling) -> None:
        async with ChatClient(cfg) as c:
            await c.complete(ChatRequest("bad", MSGS, sampling))

    with pytest.raises(RequestRejected, match="404.*does not exist"):
        asyncio.run(go(ClientConfig(model="no-such-model", base_url=url), Sampling(max_tokens=4)))
    # straight to the server: the client would clip max_tokens to fit (tests/test_context_fit.py)
    too_long = httpx.post(f"{url}/chat/completions", json={"model": model, "messages": MSGS, "max_tokens": 10**6},
                          headers={"X-Request-Id": "bad"}, timeout=60)
    assert too_long.status_code == 400 and "maximum context length" in too_long.json()["error"]["message"]
    with pytest.raises(RequestRejected, match="400.*n > 1"):
        asyncio.run(go(ClientConfig(model=model, base_url=url), Sampling(max_tokens=4, extra={"n": 2})))
    bad = [json.loads(line) for line in req_log.read_text().splitlines() if json.loads(line)["request_id"] == "bad"]
    assert [e["status"] for e in bad] == [404, 400, 400]  # one request each: none retried


def test_concurrent_requests_are_batched_and_answer_like_single_ones(server) -> None:  # noqa: ANN001
    url, model, req_log = server
    n = 24

    async def go() -> list:
        async with ChatClient(ClientConfig(model=model, base_url=url, max_concurrency=n)) as c:
            reqs = [ChatRequest(f"b{i}", [{"role": "user", "content": f"What is {i} plus 1?"}],
                                Sampling(temperature=0.8, top_p=0.95, max_tokens=32, seed=i)) for i in range(n)]
            return [r async for r in c.complete_many(reqs)]

    t0 = time.monotonic()
    results = asyncio.run(go())
    dt = time.monotonic() - t0
    log.info("%d concurrent requests in %.2fs: %.1f req/s", n, dt, n / dt)
    by_key = {r.key: r for r in results}
    assert len(by_key) == n
    entries = [json.loads(line) for line in req_log.read_text().splitlines()]
    assert max(e.get("batch", 0) for e in entries if e["request_id"].startswith("b")) > 1
    # a batched, seeded answer equals the same request sent alone
    alone = _post(url, model, messages=[{"role": "user", "content": "What is 3 plus 1?"}], temperature=0.8,
                  top_p=0.95, max_tokens=32, seed=3)
    assert alone["choices"][0]["message"]["content"] == by_key["b3"].content


def test_serve_fails_fast_and_clearly(tmp_path: Path, tiny_model: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no config.json"):
        with serve(tmp_path):
            pass
    # a child that dies before it is ready: the error carries its log tail
    with pytest.raises(RuntimeError, match="(?s)exited with 2 before it was ready.*--max-batch"):
        with serve(tiny_model, extra_args=["--max-batch", "lots"]):
            pass


@pytest.mark.parametrize("text, expected", [
    ("<think>a</think>b", {"reasoning_content": "a", "content": "b"}),
    ("<think>a", {"reasoning_content": "a", "content": None}),
    ("plain", {"reasoning_content": None, "content": "plain"}),
    ("a</think>b", {"reasoning_content": "a", "content": "b"}),
])
def test_reasoning_split_shape(text: str, expected: dict) -> None:
    assert _split_think(text) == expected


def test_batch_engine_is_batch_invariant(tiny_model: Path) -> None:
    """Left-padded batches give each row exactly what it gets alone (greedy and seeded sampling)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compress_distill.generation.batch_engine import BatchEngine, GenRequest

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    prompts = [tok(tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                           add_generation_prompt=True), add_special_tokens=False)["input_ids"]
               for q in ("What is 2 plus 3?", "hi", "What is 12 plus 33? The answer is")]
    eng = BatchEngine(model, {tok.eos_token_id}, tok.pad_token_id)
    for temp, seed in ((0.0, None), (1.0, 11)):
        alone = [eng.generate_batch([GenRequest(p, 16, temp, 1.0, seed)])[0].token_ids for p in prompts]
        batched = [r.token_ids for r in eng.generate_batch([GenRequest(p, 16, temp, 1.0, seed) for p in prompts])]
        assert alone == batched
    ref = model.generate(torch.tensor([prompts[0]]), max_new_tokens=16, do_sample=False)[0, len(prompts[0]):]
    assert eng.generate_batch([GenRequest(prompts[0], 16)])[0].token_ids == ref.tolist()
    # an end-of-sequence token stops a row with finish_reason "stop"
    first = eng.generate_batch([GenRequest(prompts[0], 4)])[0].token_ids[0]
    stop_eng = BatchEngine(model, {first}, tok.pad_token_id)
    res = stop_eng.generate_batch([GenRequest(prompts[0], 4)])[0]
    assert (res.token_ids, res.finish_reason) == ([first], "stop")


def test_tokenize_counts_the_chat_prompt_like_vllm(server) -> None:  # noqa: ANN001
    url, model, _ = server
    root = url.removesuffix("/v1")  # vLLM serves /tokenize at the root, not under /v1
    tok = httpx.post(f"{root}/tokenize", json={"model": model, "messages": MSGS, "add_generation_prompt": True},
                     timeout=60).json()
    bare = httpx.post(f"{root}/tokenize", json={"messages": MSGS, "add_generation_prompt": False}, timeout=60).json()
    chat = _post(url, model, temperature=0, max_tokens=4)
    assert set(tok) == {"count", "max_model_len", "tokens"} and tok["count"] == len(tok["tokens"])
    assert tok["count"] == chat["usage"]["prompt_tokens"] and tok["max_model_len"] == 2048
    assert bare["count"] < tok["count"]  # without the assistant header
    wrong = httpx.post(f"{root}/tokenize", json={"model": "nope", "messages": MSGS}, timeout=60)
    assert wrong.status_code == 404


def test_reasoning_effort_and_unknown_fields_are_accepted_and_ignored(server) -> None:  # noqa: ANN001
    url, model, _ = server
    plain = _post(url, model, temperature=0, max_tokens=8)
    effort = _post(url, model, temperature=0, max_tokens=8, reasoning_effort="high", some_vendor_field={"x": 1})
    assert effort["choices"][0]["message"] == plain["choices"][0]["message"]
