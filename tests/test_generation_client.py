"""The generation client against real HTTP servers on 127.0.0.1 (scripted, fault-injecting; no mocks)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable

import pytest

from compress_distill.generation.client import (
    ChatClient,
    ChatRequest,
    ClientConfig,
    Completion,
    Failure,
    GenerationError,
    PromptTooLong,
    RequestRejected,
    RetriesExhausted,
    Sampling,
    normalize_message,
    prompt_token_bound,
)
from compress_distill.generation.fake_server import FakeServer, Reply, SeenRequest, completion, fail_first

FAST = dict(backoff_base_s=0.01, backoff_max_s=0.05)
MSGS = [{"role": "user", "content": "What is 2 + 2?"}]


def ok(req: SeenRequest) -> Reply:
    return Reply(200, completion("<think>2 plus 2</think>The answer is 4.", prompt_tokens=7, completion_tokens=11))


def run(coro):  # noqa: ANN001, ANN201 - tiny test helper
    return asyncio.run(coro)


async def _one(cfg: ClientConfig, key: str = "q1", sampling: Sampling | None = None) -> Completion:
    async with ChatClient(cfg) as c:
        return await c.complete(ChatRequest(key, MSGS, sampling or Sampling(max_tokens=16)))


async def _many(cfg: ClientConfig, keys: list[str]) -> list[Completion | Failure]:
    async with ChatClient(cfg) as c:
        return [r async for r in c.complete_many(ChatRequest(k, MSGS, Sampling()) for k in keys)]


# --- normalisation of the two response shapes -------------------------------------------------------------

@pytest.mark.parametrize("message, finish, expected", [
    # raw think tags in content
    ({"content": "<think>abc</think>Answer: 4"}, "stop", ("<think>abc</think>Answer: 4", "abc", "Answer: 4", True)),
    ({"content": "\n<think>abc</think>x"}, "stop", ("<think>abc</think>x", "abc", "x", True)),
    # the template opened <think> in the prompt: only the closing tag comes back
    ({"content": "abc</think>x"}, "stop", ("<think>abc</think>x", "abc", "x", True)),
    # split fields (vLLM reasoning parsers), both spellings
    ({"content": "x", "reasoning_content": "abc"}, "stop", ("<think>abc</think>x", "abc", "x", True)),
    ({"content": "x", "reasoning": "abc"}, "stop", ("<think>abc</think>x", "abc", "x", True)),
    ({"content": None, "reasoning_content": "abc"}, "stop", ("<think>abc</think>", "abc", "", True)),
    # truncated inside the think block: must stay unclosed so extraction sees the truncation
    ({"content": None, "reasoning_content": "abc"}, "length", ("<think>abc", "abc", "", False)),
    ({"content": "<think>abc"}, "length", ("<think>abc", "abc", "", False)),
    # no think block at all, and empty answers
    ({"content": "The answer is 4."}, "stop", ("The answer is 4.", None, "The answer is 4.", None)),
    ({"content": ""}, "stop", ("", None, "", None)),
    ({"content": None}, "stop", ("", None, "", None)),
    ({"content": None, "reasoning_content": ""}, "stop", ("", None, "", None)),
    ({"content": [{"type": "text", "text": "<think>a</think>b"}]}, "stop", ("<think>a</think>b", "a", "b", True)),
])
def test_normalize_message(message, finish, expected) -> None:  # noqa: ANN001
    assert normalize_message(message, finish) == expected


def test_a_lone_surrogate_from_the_server_becomes_a_replacement_character() -> None:
    """JSON can carry "\\ud800"; UTF-8 (Parquet, the shard files) cannot, so it would fail the batch."""
    message = json.loads('{"content": "5 \\ud800", "reasoning": "x\\udc00y"}')
    response, reasoning, content, _ = normalize_message(message, "stop")
    assert content == "5 \ufffd" and reasoning == "x\ufffdy"
    response.encode("utf-8")  # no UnicodeEncodeError


# --- success path and what is recorded ---------------------------------------------------------------------

def test_completion_records_usage_latency_model_and_request_id() -> None:
    with FakeServer(ok) as srv:
        c = run(_one(ClientConfig(model="m", base_url=srv.base_url), sampling=Sampling(0.3, 0.9, 16, seed=5)))
    assert c.response == "<think>2 plus 2</think>The answer is 4."
    assert (c.reasoning, c.content, c.think_closed) == ("2 plus 2", "The answer is 4.", True)
    assert (c.finish_reason, c.prompt_tokens, c.completion_tokens, c.attempts) == ("stop", 7, 11, 1)
    assert c.model == "fake-model" and c.latency_s > 0
    (req,) = srv.requests
    assert req.request_id == "q1" and req.path == "/v1/chat/completions"
    assert {k: req.body[k] for k in ("model", "temperature", "top_p", "max_tokens", "seed", "n")} == \
        {"model": "m", "temperature": 0.3, "top_p": 0.9, "max_tokens": 16, "seed": 5, "n": 1}


def test_reasoning_effort_is_a_request_field_sent_only_when_set() -> None:
    class Spec:  # config.SamplingSpec's attributes
        temperature, top_p, max_tokens, seed, batch_size, reasoning_effort = 0.6, 0.95, 16, 3, 8, "high"

    with FakeServer(ok) as srv:
        cfg = ClientConfig(model="m", base_url=srv.base_url)
        run(_one(cfg, "with", Sampling.from_spec(Spec())))
        run(_one(cfg, "without", Sampling(max_tokens=16)))
    with_effort, without = (r.body for r in srv.requests)
    assert with_effort["reasoning_effort"] == "high" and with_effort["seed"] == 3
    assert "reasoning_effort" not in without


def test_split_reasoning_field_is_normalised() -> None:
    with FakeServer(lambda r: Reply(200, completion("The answer is 4.", reasoning="2+2=4"))) as srv:
        c = run(_one(ClientConfig(model="m", base_url=srv.base_url)))
    assert c.response == "<think>2+2=4</think>The answer is 4." and c.think_closed


# --- transient errors: retried with backoff ----------------------------------------------------------------

@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_transient_status_is_retried_then_succeeds(status: int) -> None:
    with FakeServer(fail_first(2, ok, status=status)) as srv:
        c = run(_one(ClientConfig(model="m", base_url=srv.base_url, max_attempts=4, **FAST)))
    assert c.attempts == 3 and c.response.endswith("4.")
    assert srv.ids_requested() == ["q1"] * 3


def test_500_forever_exhausts_retries_and_becomes_a_failure_record() -> None:
    with FakeServer(fail_first(10**6, ok)) as srv:
        cfg = ClientConfig(model="m", base_url=srv.base_url, max_attempts=3, **FAST)
        with pytest.raises(RetriesExhausted, match="3 attempts.*HTTP 500"):
            run(_one(cfg))
        results = run(_many(cfg, ["a", "b"]))
    assert sorted((r.key, r.kind, r.attempts) for r in results if isinstance(r, Failure)) == \
        [("a", "retries_exhausted", 3), ("b", "retries_exhausted", 3)]
    assert len(srv.requests) == 3 + 6


def test_retry_after_header_is_honoured() -> None:
    script = fail_first(1, ok, status=429)
    with FakeServer(lambda r: Reply(429, "slow down", {"Retry-After": "0.3"}) if r.index == 0 else script(r)) as srv:
        t0 = time.monotonic()
        c = run(_one(ClientConfig(model="m", base_url=srv.base_url, **FAST)))
    assert c.attempts == 2 and time.monotonic() - t0 >= 0.3


def test_non_json_200_and_dropped_connections_are_transient() -> None:
    def script(r: SeenRequest) -> Reply:
        return [Reply(200, "<html>bad gateway</html>"), Reply(200, {"choices": []}), Reply(drop=True)][r.index] \
            if r.index < 3 else ok(r)

    with FakeServer(script) as srv:
        c = run(_one(ClientConfig(model="m", base_url=srv.base_url, max_attempts=5, **FAST)))
    assert c.attempts == 4


def test_read_timeout_is_retried() -> None:
    with FakeServer(lambda r: Reply(delay_s=1.0, body=completion("x")) if r.index == 0 else ok(r)) as srv:
        c = run(_one(ClientConfig(model="m", base_url=srv.base_url, timeout_s=0.2, **FAST)))
    assert c.attempts == 2


def test_connection_refused_exhausts_retries() -> None:
    with FakeServer(ok) as srv:
        url = srv.base_url
    with pytest.raises(RetriesExhausted, match="ConnectError"):
        run(_one(ClientConfig(model="m", base_url=url, max_attempts=2, **FAST)))


# --- configuration errors: no retry, clear message, no secrets ---------------------------------------------

@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_config_errors_are_not_retried(status: int) -> None:
    body = '{"error": {"message": "The model `m` does not exist."}}'
    with FakeServer(lambda r: Reply(status, body)) as srv:
        with pytest.raises(RequestRejected) as ei:
            run(_one(ClientConfig(model="m", base_url=srv.base_url, **FAST)))
    assert len(srv.requests) == 1
    assert f"HTTP {status}" in str(ei.value) and "does not exist" in str(ei.value)
    assert ei.value.run_fatal == (status in (401, 404))


def test_run_fatal_rejection_stops_complete_many_but_item_rejection_does_not() -> None:
    with FakeServer(lambda r: Reply(400, "prompt too long") if r.request_id == "long" else ok(r)) as srv:
        results = run(_many(ClientConfig(model="m", base_url=srv.base_url, **FAST), ["a", "long", "b"]))
    fails = [r for r in results if isinstance(r, Failure)]
    assert [(f.key, f.kind, f.status) for f in fails] == [("long", "rejected", 400)]
    assert sorted(r.key for r in results) == ["a", "b", "long"]
    with FakeServer(lambda r: Reply(401, "bad key")) as srv:
        with pytest.raises(RequestRejected, match="401"):
            run(_many(ClientConfig(model="m", base_url=srv.base_url, **FAST), ["a", "b", "c"]))


def test_api_key_from_env_is_sent_but_never_logged_or_raised(monkeypatch, caplog) -> None:  # noqa: ANN001
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("CD_TEST_KEY", secret)
    # A hostile server echoes the header back in a 401 body and in 500 bodies.
    echo = lambda r: Reply(r.index and 401 or 500, f"bad {r.headers.get('Authorization')}")  # noqa: E731
    caplog.set_level(logging.DEBUG)
    with FakeServer(echo) as srv:
        cfg = ClientConfig(model="m", base_url=srv.base_url, api_key_env="CD_TEST_KEY", **FAST)
        with pytest.raises(RequestRejected) as ei:
            run(_one(cfg))
        client_repr = repr(ChatClient(cfg))
    assert srv.requests[0].headers["Authorization"] == f"Bearer {secret}"
    assert "[REDACTED]" in str(ei.value)
    for text in (str(ei.value), caplog.text, repr(cfg), client_repr):
        assert secret not in text


def test_base_url_without_scheme_fails_at_once() -> None:
    with pytest.raises(GenerationError, match="bad base_url"):
        run(_one(ClientConfig(model="m", base_url="127.0.0.1:9/v1", **FAST)))


def test_missing_api_key_env_var_is_a_clear_error(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.delenv("CD_MISSING_KEY", raising=False)
    with pytest.raises(GenerationError, match="CD_MISSING_KEY"):
        ChatClient(ClientConfig(model="m", api_key_env="CD_MISSING_KEY"))


# --- concurrency cap ---------------------------------------------------------------------------------------

def test_concurrency_cap_bounds_requests_in_flight() -> None:
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    def script(r: SeenRequest) -> Reply:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.1)
        with lock:
            state["now"] -= 1
        return ok(r)

    with FakeServer(script) as srv:
        # 20 requests > the lazy window of 4 x 3: the window refills as results come back
        keys = [str(i) for i in range(20)]
        results = run(_many(ClientConfig(model="m", base_url=srv.base_url, max_concurrency=3), keys))
    assert sorted(r.key for r in results) == sorted(keys) and all(isinstance(r, Completion) for r in results)
    assert state["max"] == 3


# --- requests fit the context ------------------------------------------------------------------------------

CONTEXT_400 = ('{"object": "error", "message": "This model\'s maximum context length is 1000 tokens. However, you '
               'requested 1100 tokens (900 in the messages, 200 in the completion).", "code": 400}')


def tokenizing(count: int, max_model_len: int | None = 1000, chat: Callable[[SeenRequest], Reply] = ok,
               ) -> Callable[[SeenRequest], Reply]:
    """A vLLM-like script: `/tokenize` at the root counts `count` prompt tokens; chat answers `chat`."""
    def script(r: SeenRequest) -> Reply:
        if r.path == "/tokenize":
            return Reply(200, {"count": count, "max_model_len": max_model_len, "tokens": list(range(count))})
        return chat(r)
    return script


def _long(n_bytes: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": "x" * n_bytes}]


async def _fit(cfg: ClientConfig, messages: list[dict[str, str]], max_tokens: int) -> Completion | Failure:
    async with ChatClient(cfg) as c:
        return [r async for r in c.complete_many([ChatRequest("k", messages, Sampling(max_tokens=max_tokens))])][0]


def test_prompt_within_the_byte_bound_is_sent_without_counting() -> None:
    assert prompt_token_bound(MSGS) == len(MSGS[0]["content"].encode()) + 128 + 8
    assert prompt_token_bound([{"role": "user", "content": "é"}]) == 2 + 136  # bytes, not characters
    with FakeServer(tokenizing(10)) as srv:
        c = run(_fit(ClientConfig(model="m", base_url=srv.base_url, max_model_len=1000), MSGS, 200))
    assert isinstance(c, Completion) and c.max_tokens_sent is None
    assert [r.path for r in srv.requests] == ["/v1/chat/completions"] and srv.requests[0].body["max_tokens"] == 200


def test_long_prompt_is_counted_by_tokenize_and_max_tokens_clipped() -> None:
    with FakeServer(tokenizing(900)) as srv:
        c = run(_fit(ClientConfig(model="m", base_url=srv.base_url, max_model_len=1000), _long(3000), 200))
    tok, chat = srv.requests
    assert tok.path == "/tokenize" and tok.body == {"model": "m", "messages": _long(3000), "add_generation_prompt": True}
    assert chat.body["max_tokens"] == 100 and isinstance(c, Completion) and c.max_tokens_sent == 100
    assert c.to_record()["max_tokens_sent"] == 100


def test_a_counted_prompt_that_still_fits_is_not_clipped() -> None:
    with FakeServer(tokenizing(700)) as srv:
        c = run(_fit(ClientConfig(model="m", base_url=srv.base_url, max_model_len=1000), _long(3000), 200))
    assert isinstance(c, Completion) and c.max_tokens_sent is None and srv.requests[1].body["max_tokens"] == 200


def test_prompt_longer_than_the_context_is_a_failure_and_never_sent() -> None:
    with FakeServer(tokenizing(1000)) as srv:
        f = run(_fit(ClientConfig(model="m", base_url=srv.base_url, max_model_len=1000), _long(5000), 200))
        with pytest.raises(PromptTooLong, match="1000 tokens"):
            run(_one(ClientConfig(model="m", base_url=srv.base_url, max_model_len=1000),
                     sampling=Sampling(max_tokens=2000)))
    assert isinstance(f, Failure) and (f.kind, f.attempts) == ("prompt_too_long", 0) and "not sent" in f.error
    assert all(r.path == "/tokenize" for r in srv.requests)


def test_context_length_400_is_refitted_once_with_the_servers_count() -> None:
    """No max_model_len configured: the server's 400 sends the client to /tokenize, which names the limit."""
    chat = lambda r: Reply(400, CONTEXT_400) if r.body["max_tokens"] > 100 else ok(r)  # noqa: E731
    with FakeServer(tokenizing(900, chat=chat)) as srv:
        c = run(_fit(ClientConfig(model="m", base_url=srv.base_url, **FAST), MSGS, 200))
    assert [(r.path, (r.body.get("max_tokens"))) for r in srv.requests] == \
        [("/v1/chat/completions", 200), ("/tokenize", None), ("/v1/chat/completions", 100)]
    assert isinstance(c, Completion) and c.max_tokens_sent == 100 and c.attempts == 2


def test_context_length_400_that_refitting_cannot_fix_stays_a_rejection() -> None:
    # the server keeps refusing, and /tokenize says there is room: one refit, then the 400 stands
    with FakeServer(tokenizing(100, chat=lambda r: Reply(400, CONTEXT_400))) as srv:
        f = run(_fit(ClientConfig(model="m", base_url=srv.base_url, **FAST), MSGS, 200))
    assert isinstance(f, Failure) and (f.kind, f.status) == ("rejected", 400)
    assert [r.path for r in srv.requests] == ["/v1/chat/completions", "/tokenize"]


def test_a_server_without_tokenize_gets_max_tokens_unclipped_once_asked() -> None:
    script = lambda r: Reply(404, "no route") if r.path == "/tokenize" else ok(r)  # noqa: E731
    with FakeServer(script) as srv:
        async def two() -> list[Completion]:
            async with ChatClient(ClientConfig(model="m", base_url=srv.base_url, max_model_len=1000)) as c:
                return [await c.complete(ChatRequest(k, _long(3000), Sampling(max_tokens=200))) for k in "ab"]
        results = run(two())
    assert all(r.max_tokens_sent is None for r in results)
    assert [r.path for r in srv.requests] == ["/tokenize", "/v1/chat/completions", "/v1/chat/completions"]
