"""Requests fit the context, against the real local server with a small `--max-model-len`: a long
prompt gets a clipped max_tokens and succeeds, a prompt longer than the context is a counted
`prompt_too_long` failure that is never sent, and a context-length 400 is refitted once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from compress_distill.generation.client import (
    ChatClient,
    ChatRequest,
    ClientConfig,
    Completion,
    Failure,
    Sampling,
)
from compress_distill.generation.local_server import serve
from compress_distill.generation.tiny_model import ensure_tiny_model

pytest.importorskip("torch", reason="the local server needs the `local` extra")
pytest.importorskip("transformers", reason="the local server needs the `local` extra")
CONTEXT = 160


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    base = tmp_path_factory.getbasetemp()
    model_dir = ensure_tiny_model(base / "tiny-qwen3")  # the session server's model, built once
    log = base / "context-fit-requests.jsonl"
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(serve(model_dir, extra_args=["--max-model-len", str(CONTEXT),
                                                               "--request-log", str(log)]))
        yield url, str(model_dir), log


def _messages(words: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": " ".join(["the answer is"] * words)}]


def _count(url: str, model: str, messages: list[dict[str, str]]) -> int:
    r = httpx.post(url.removesuffix("/v1") + "/tokenize", json={"model": model, "messages": messages}, timeout=60)
    assert r.json()["max_model_len"] == CONTEXT
    return int(r.json()["count"])


def _ask(cfg: ClientConfig, key: str, messages: list[dict[str, str]], max_tokens: int) -> Completion | Failure:
    async def go() -> Completion | Failure:
        async with ChatClient(cfg) as c:
            req = ChatRequest(key, messages, Sampling(temperature=0, max_tokens=max_tokens))
            return [r async for r in c.complete_many([req])][0]
    return asyncio.run(go())


def _paths(log: Path, key: str, n: int) -> list[tuple[str, int]]:
    """The request log's (path, status) for `key`, once it has `n` of them: the server writes an
    entry just after answering, so the last one may land a moment after the client has its answer."""
    deadline = time.monotonic() + 10
    while True:
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        found = [(e["path"], e["status"]) for e in entries if e["request_id"] == key]
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_server_enforces_max_model_len_with_a_vllm_400(server) -> None:  # noqa: ANN001
    url, model, _ = server
    n = _count(url, model, _messages(10))
    r = httpx.post(f"{url}/chat/completions", json={"model": model, "messages": _messages(10),
                                                     "max_tokens": CONTEXT}, timeout=60)
    assert r.status_code == 400
    assert (f"maximum context length is {CONTEXT} tokens. However, you requested {n + CONTEXT} tokens "
            f"({n} in the messages, {CONTEXT} in the completion)") in r.json()["error"]["message"]


def test_long_prompt_gets_a_clipped_max_tokens_and_succeeds(server) -> None:  # noqa: ANN001
    url, model, log = server
    messages = _messages(30)
    n = _count(url, model, messages)
    assert 40 < n < CONTEXT - 20, n  # long enough that the byte bound sends it to /tokenize
    c = _ask(ClientConfig(model=model, base_url=url, max_model_len=CONTEXT), "long", messages, 100)
    assert isinstance(c, Completion), c
    assert c.max_tokens_sent == CONTEXT - n and c.prompt_tokens == n
    assert c.completion_tokens is not None and c.completion_tokens <= CONTEXT - n
    assert _paths(log, "long", 2) == [("/tokenize", 200), ("/v1/chat/completions", 200)]


def test_prompt_longer_than_the_context_is_a_prompt_too_long_failure(server) -> None:  # noqa: ANN001
    url, model, log = server
    f = _ask(ClientConfig(model=model, base_url=url, max_model_len=CONTEXT), "huge", _messages(100), 50)
    assert isinstance(f, Failure) and f.kind == "prompt_too_long" and f"context {CONTEXT}" in f.error
    assert _paths(log, "huge", 1) == [("/tokenize", 200)]  # counted, never sent


def test_a_context_smaller_than_configured_is_refitted_after_the_400(server) -> None:  # noqa: ANN001
    url, model, log = server
    messages = _messages(30)
    n = _count(url, model, messages)
    # the config believes in a larger context: the byte bound passes, the server refuses, /tokenize fixes it
    c = _ask(ClientConfig(model=model, base_url=url, max_model_len=16384), "stale", messages, 100)
    assert isinstance(c, Completion) and c.max_tokens_sent == CONTEXT - n
    assert _paths(log, "stale", 3) == [("/v1/chat/completions", 400), ("/tokenize", 200), ("/v1/chat/completions", 200)]
