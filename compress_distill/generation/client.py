"""Async client for any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, the local server).

- A concurrency cap (one semaphore per client) bounds requests in flight.
- Transient failures (connect errors, timeouts, 408/429/5xx, a 200 whose
  body is not a chat completion) are retried with exponential backoff and
  jitter, honouring Retry-After, up to `max_attempts`; then `RetriesExhausted`.
- Other 4xx answers are configuration errors (bad model name, bad key, bad
  parameter): no retry, `RequestRejected` names the status and a body excerpt.
- The API key comes from an environment variable whose NAME is configured;
  the key itself is never stored in config, logged or put in an error.
- Each answer becomes a `Completion`: finish_reason, usage, latency, attempts,
  and the text normalised to `<think>{reasoning}</think>{content}`, whether the
  server sent raw `<think>` tags in `content` or a split `reasoning_content`
  / `reasoning` field (vLLM reasoning parsers).
- Requests fit the context (`ClientConfig.max_model_len`): vLLM answers 400 when
  prompt + max_tokens exceeds it. A cheap byte bound clears most prompts; the
  others are counted by the server's `POST /tokenize` and max_tokens is clipped
  to what is left (`Completion.max_tokens_sent`). A prompt that leaves no room
  is not sent: `PromptTooLong`, a `prompt_too_long` failure. A context-length
  400 that still comes back is re-fitted once with the exact count.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import httpx

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Rejections that say the whole run is misconfigured, not this one item (wrong key, wrong model, wrong URL).
RUN_FATAL_STATUS = frozenset({401, 403, 404, 405})
# vLLM: "This model's maximum context length is N tokens. However, you requested M tokens (...)".
CONTEXT_ERROR = re.compile(r"maximum context length|context length", re.IGNORECASE)
# The byte bound's allowance for what the chat template adds around the contents (role headers,
# special tokens; harmony models add a system header of their own). Too small only costs a 400
# and one /tokenize round trip; too large only costs a /tokenize call for borderline prompts.
TEMPLATE_OVERHEAD_TOKENS = 128
MESSAGE_OVERHEAD_TOKENS = 8
MIN_COMPLETION_TOKENS = 1  # a prompt leaving less room than this is not sent
T = TypeVar("T")


class GenerationError(RuntimeError):
    """Base class: a request that produced no completion."""


class RequestRejected(GenerationError):
    """The server refused the request (4xx other than 408/429): retrying cannot help."""

    def __init__(self, status: int, body_excerpt: str, url: str):
        self.status, self.body_excerpt, self.url = status, body_excerpt, url
        super().__init__(f"HTTP {status} from {url} (not retried: fix the request or config): {body_excerpt}")

    @property
    def run_fatal(self) -> bool:
        return self.status in RUN_FATAL_STATUS


class RetriesExhausted(GenerationError):
    def __init__(self, attempts: int, last_error: str):
        self.attempts, self.last_error = attempts, last_error
        super().__init__(f"gave up after {attempts} attempts; last error: {last_error}")


class MalformedResponse(GenerationError):
    """A 200 whose body is not a chat completion (proxy glitch, crashed worker): treated as transient."""


class PromptTooLong(GenerationError):
    """The prompt leaves no room for a completion within the model's context: not sent."""

    def __init__(self, prompt_tokens: int, max_model_len: int):
        self.prompt_tokens, self.max_model_len = prompt_tokens, max_model_len
        super().__init__(f"the prompt has {prompt_tokens} tokens, the model's context {max_model_len}: "
                         f"no room for a completion (not sent)")


@dataclass(frozen=True)
class ClientConfig:
    model: str
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str | None = None  # NAME of the env var holding the key, never the key
    max_concurrency: int = 16
    max_attempts: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 120.0  # a server's Retry-After is honoured up to this
    timeout_s: float = 600.0  # per attempt; long reasoning traces take minutes on a busy server
    connect_timeout_s: float = 10.0
    max_model_len: int | None = None  # the served context; set: max_tokens is clipped to fit (module doc)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # e.g. response_format, stop, top_k
    reasoning_effort: str | None = None  # "low" / "medium" / "high"; sent only when set

    @classmethod
    def from_spec(cls, spec: Any, **overrides: Any) -> Sampling:
        """From config.SamplingSpec (or anything with the same attributes)."""
        names = ("temperature", "top_p", "max_tokens", "seed", "reasoning_effort")
        kw = {k: getattr(spec, k) for k in names if hasattr(spec, k)}
        return cls(**{**kw, **overrides})

    def for_request(self, key: str, rnd: int = 0) -> Sampling:
        """This sampling with the seed of one request (`request_seed` of its id and round): every
        request carries its own seed, so what an item gets depends on nothing else in the batch."""
        return dataclasses.replace(self, seed=request_seed(self.seed, key, rnd))


def request_seed(base: int | None, key: str, rnd: int) -> int | None:
    """A request's seed: distinct per (item id, round), stable across resumes, batch order and
    servers (vLLM seeds a per-request generator with it, as does the local server). None: unseeded."""
    if base is None:
        return None
    return int.from_bytes(hashlib.sha256(f"{base}/{key}/{rnd}".encode()).digest()[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class ChatRequest:
    key: str  # the item's id: results and failures carry it
    messages: list[dict[str, Any]]
    sampling: Sampling
    request_id: str | None = None  # sent as X-Request-Id (default: key) so server logs can be joined

    @property
    def header_id(self) -> str:
        return self.request_id or self.key


@dataclass(frozen=True)
class Completion:
    key: str
    model: str
    response: str  # `<think>{reasoning}</think>{content}`; `<think>{reasoning}` if the think block never closed
    reasoning: str | None  # None: the answer had no think block at all
    content: str
    think_closed: bool | None  # None: no think block; False: opened but never closed (truncated)
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float  # of the attempt that succeeded
    attempts: int
    max_tokens_sent: int | None = None  # set when max_tokens was clipped to fit the context: the value sent
    # True: the server sent the reasoning in its own field (a vLLM reasoning parser split it); False:
    # any think block came as tags inside `content`, normalised here
    reasoning_field: bool = False

    @property
    def empty(self) -> bool:
        return not self.response.strip()

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Failure:
    """A request that produced no completion; goes to the failed-requests file, never dropped."""

    key: str
    error: str
    kind: str  # "retries_exhausted" | "rejected" | "prompt_too_long"
    attempts: int
    status: int | None = None

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_error(cls, key: str, err: GenerationError) -> Failure:
        if isinstance(err, RequestRejected):
            return cls(key, str(err), "rejected", 1, err.status)
        if isinstance(err, RetriesExhausted):
            return cls(key, str(err), "retries_exhausted", err.attempts)
        if isinstance(err, PromptTooLong):
            return cls(key, str(err), "prompt_too_long", 0)
        return cls(key, str(err), "error", 0)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _utf8(text: str) -> str:
    """A lone surrogate (JSON can carry `"\\ud800"`) cannot be written as UTF-8: Parquet and the
    shard files would refuse the whole batch. It becomes U+FFFD, the replacement character."""
    return _SURROGATE.sub("\ufffd", text)


def split_reasoning(message: Mapping[str, Any]) -> str | None:
    """The trace a reasoning parser split off: `reasoning` (vLLM >= 0.16) or `reasoning_content`
    (older vLLM, the project's CPU server); None when the server sent none."""
    split = message.get("reasoning_content")
    if split is None:
        split = message.get("reasoning")
    return _utf8(split) if isinstance(split, str) and split else None


def normalize_message(message: Mapping[str, Any], finish_reason: str | None) -> tuple[str, str | None, str, bool | None]:
    """(response, reasoning, content, think_closed) from an OpenAI `message` of either shape."""
    content = message.get("content") or ""
    if not isinstance(content, str):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    content = _utf8(content)
    split = split_reasoning(message)
    if split:
        # vLLM's parsers put an unterminated think block (cut by max_tokens) in reasoning with no content.
        # Appending </think> there would hide the truncation from the extraction cascade.
        if finish_reason == "length" and not content:
            return f"<think>{split}", split, "", False
        return f"<think>{split}</think>{content}", split, content, True
    stripped = content.lstrip()
    opened = stripped.startswith("<think>")
    inner = stripped[len("<think>"):] if opened else content
    if "</think>" in inner:
        # Templates that open <think> in the prompt (Qwen3, R1) return content with only the closing tag.
        reasoning, rest = inner.split("</think>", 1)
        return f"<think>{reasoning}</think>{rest}", reasoning, rest, True
    if opened:
        return f"<think>{inner}", inner, "", False
    return content, None, content, None


class ChatClient:
    """Use as `async with ChatClient(cfg) as c:`; one client per endpoint."""

    def __init__(self, cfg: ClientConfig, *, rng: random.Random | None = None):
        self.cfg = cfg
        self._rng = rng or random.Random()
        self._sem = asyncio.Semaphore(cfg.max_concurrency)
        headers = {"Content-Type": "application/json"}
        self._secret: str | None = None
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise GenerationError(f"environment variable {cfg.api_key_env} (the API key) is not set or empty")
            self._secret = key
            headers["Authorization"] = f"Bearer {key}"
        limits = httpx.Limits(max_connections=cfg.max_concurrency, max_keepalive_connections=cfg.max_concurrency)
        timeout = httpx.Timeout(cfg.timeout_s, connect=cfg.connect_timeout_s)
        self._http = httpx.AsyncClient(base_url=cfg.base_url.rstrip("/"), headers=headers, limits=limits,
                                       timeout=timeout)
        # vLLM serves /tokenize at the server root, not under /v1
        self._root = cfg.base_url.rstrip("/").removesuffix("/v1")
        self._no_tokenize = False  # set once the server showed it has no /tokenize

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def __repr__(self) -> str:  # no headers: they hold the key
        return f"ChatClient(model={self.cfg.model!r}, base_url={self.cfg.base_url!r})"

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "[REDACTED]") if self._secret else text

    async def complete(self, req: ChatRequest) -> Completion:
        """One chat completion with retries. Raises RequestRejected, RetriesExhausted or PromptTooLong."""
        max_tokens = await self._fit(req, exact=False)
        try:
            return await self._chat(req, max_tokens)
        except RequestRejected as e:
            if e.status != 400 or not CONTEXT_ERROR.search(e.body_excerpt):
                raise
            # The server counts differently from our bound or its /tokenize (or its context is smaller
            # than configured): fit once more on its exact count, and give up if that changes nothing.
            refit = await self._fit(req, exact=True, fallback=e)
            if refit >= max_tokens:
                raise
            log.info("request %s: context-length 400 with max_tokens %d; retrying with %d", req.key, max_tokens,
                     refit)
            c = await self._chat(req, refit)
            return dataclasses.replace(c, attempts=c.attempts + 1)

    async def _chat(self, req: ChatRequest, max_tokens: int) -> Completion:
        s = req.sampling
        body: dict[str, Any] = {"model": self.cfg.model, "messages": req.messages, "n": 1,
                                "temperature": s.temperature, "top_p": s.top_p, "max_tokens": max_tokens, **s.extra}
        if s.seed is not None:
            body["seed"] = s.seed
        if s.reasoning_effort is not None:
            body["reasoning_effort"] = s.reasoning_effort
        clipped = max_tokens if max_tokens < s.max_tokens else None
        c, attempts, latency = await self._send("/chat/completions", body, req.header_id,
                                                lambda resp: self._parse(req.key, resp))
        return dataclasses.replace(c, latency_s=round(latency, 4), attempts=attempts, max_tokens_sent=clipped)

    async def _fit(self, req: ChatRequest, *, exact: bool, fallback: RequestRejected | None = None) -> int:
        """max_tokens clipped to what the context leaves after the prompt (module doc)."""
        requested, limit = req.sampling.max_tokens, self.cfg.max_model_len
        if not exact and (limit is None or prompt_token_bound(req.messages) + requested <= limit):
            return requested
        counted = await self._count_tokens(req)
        if counted is None:  # no /tokenize here: the server decides, as it would without a limit
            if fallback is not None:
                raise fallback
            return requested
        count, server_limit = counted
        limit = server_limit or limit  # the server's own context is the one that rejects
        if limit is None:
            return requested
        if limit - count < MIN_COMPLETION_TOKENS:
            raise PromptTooLong(count, limit)
        return min(requested, limit - count)

    async def _count_tokens(self, req: ChatRequest) -> tuple[int, int | None] | None:
        """(prompt tokens, the server's max_model_len) from vLLM's `POST /tokenize` at the server root;
        None when the server has no such route (other OpenAI-compatible servers) or it fails."""
        if self._no_tokenize:
            return None
        body = {"model": self.cfg.model, "messages": req.messages, "add_generation_prompt": True}
        try:
            data, _, _ = await self._send(self._root + "/tokenize", body, req.header_id, _parse_tokenize)
        except (RequestRejected, _NotVllmTokenize) as e:
            if isinstance(e, _NotVllmTokenize) or e.status in (404, 405):
                log.warning("%s has no vLLM /tokenize (%s): prompts are not counted, the server decides",
                            self._root, e)
                self._no_tokenize = True
                return None
            if e.run_fatal:  # a wrong key fails the chat request too: say so now
                raise
            log.warning("request %s: /tokenize refused it (%s); sending max_tokens unclipped", req.key, e)
            return None
        except RetriesExhausted as e:
            log.warning("request %s: /tokenize failed (%s); sending max_tokens unclipped", req.key, e)
            return None
        return data

    async def _send(self, path: str, body: dict[str, Any], header_id: str,
                    parse: Callable[[httpx.Response], T]) -> tuple[T, int, float]:
        """POST with retries: (parsed 200 body, attempts, latency of the last attempt)."""
        last = ""
        for attempt in range(1, self.cfg.max_attempts + 1):
            retry_after: float | None = None
            async with self._sem:
                t0 = time.monotonic()
                try:
                    resp = await self._http.post(path, json=body, headers={"X-Request-Id": header_id})
                except httpx.UnsupportedProtocol as e:  # "localhost:8000" without http://: config, not transient
                    raise GenerationError(f"bad base_url {self.cfg.base_url!r}: {e}") from e
                except httpx.RequestError as e:  # connect/read errors, timeouts, undecodable bodies
                    last = f"{type(e).__name__}: {e}"
                    resp = None
                latency = time.monotonic() - t0
            if resp is not None:
                if resp.status_code == 200:
                    try:
                        return parse(resp), attempt, latency
                    except MalformedResponse as e:
                        last = str(e)
                elif resp.status_code in RETRY_STATUS:
                    last = f"HTTP {resp.status_code}: {self._excerpt(resp)}"
                    retry_after = _retry_after(resp)
                else:
                    raise RequestRejected(resp.status_code, self._excerpt(resp), self._redact(str(resp.request.url)))
            if attempt == self.cfg.max_attempts:
                break
            delay = self._backoff(attempt, retry_after)
            log.warning("request %s attempt %d/%d failed (%s); retrying in %.2fs", header_id, attempt,
                        self.cfg.max_attempts, last, delay)
            await asyncio.sleep(delay)
        raise RetriesExhausted(self.cfg.max_attempts, last)

    async def complete_many(self, reqs: Iterable[ChatRequest]) -> AsyncIterator[Completion | Failure]:
        """Yield each result as it finishes (not in input order), so callers can persist it at once.

        Requests are drawn lazily, a window of 4x the concurrency cap at a time: a 180k-question round
        never holds 180k tasks. A run-fatal rejection (401/403/404/405: wrong key, model or URL) cancels
        the rest and raises.
        """
        it = iter(reqs)
        window = 4 * self.cfg.max_concurrency
        pending: set[asyncio.Task[Completion | Failure]] = set()
        done: set[asyncio.Task[Completion | Failure]] = set()
        try:
            while True:
                for req in it:
                    pending.add(asyncio.create_task(self._guarded(req)))
                    if len(pending) >= window:
                        break
                if not pending:
                    return
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    yield t.result()
        finally:
            for t in pending:
                t.cancel()
            # also the finished siblings of a task that raised: their errors count as retrieved
            await asyncio.gather(*pending, *done, return_exceptions=True)

    async def _guarded(self, req: ChatRequest) -> Completion | Failure:
        try:
            return await self.complete(req)
        except RequestRejected as e:
            if e.run_fatal:
                raise
            return Failure.from_error(req.key, e)
        except (RetriesExhausted, PromptTooLong) as e:
            return Failure.from_error(req.key, e)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** (attempt - 1))
        # "Equal jitter": at least half the exponential step, so a herd of retries spreads out but still waits.
        delay = cap / 2 + self._rng.uniform(0, cap / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cfg.retry_after_max_s))
        return delay

    def _excerpt(self, resp: httpx.Response, n: int = 500) -> str:
        return self._redact(resp.text[:n].replace("\n", " "))

    def _parse(self, key: str, resp: httpx.Response) -> Completion:
        try:
            data = resp.json()
            choice = data["choices"][0]
            message = choice["message"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise MalformedResponse(f"HTTP 200 without a chat completion ({type(e).__name__}): "
                                    f"{self._excerpt(resp, 200)}") from e
        if not isinstance(message, dict):
            raise MalformedResponse(f"HTTP 200 with a non-object message: {self._excerpt(resp, 200)}")
        finish = choice.get("finish_reason")
        response, reasoning, content, closed = normalize_message(message, finish)
        usage = data.get("usage") or {}
        return Completion(key=key, model=data.get("model") or self.cfg.model, response=response, reasoning=reasoning,
                          content=content, think_closed=closed, finish_reason=finish,
                          prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                          latency_s=0.0, attempts=0,  # _chat fills both in
                          reasoning_field=split_reasoning(message) is not None)


def prompt_token_bound(messages: Iterable[Mapping[str, Any]]) -> int:
    """An upper bound on the prompt's tokens, without a tokenizer: UTF-8 bytes of the contents plus the
    template's allowance. A byte-level BPE (GPT-2, Qwen, Llama 3) or a byte-fallback SentencePiece
    (Llama 2, Mistral) never makes more tokens than bytes: every token covers at least one byte (the
    odd word-boundary piece of SentencePiece is within the per-message allowance)."""
    msgs = list(messages)
    content = sum(len(_text(m.get("content")).encode()) for m in msgs)
    return content + TEMPLATE_OVERHEAD_TOKENS + MESSAGE_OVERHEAD_TOKENS * len(msgs)


def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


class _NotVllmTokenize(GenerationError):
    """/tokenize answered 200 but not vLLM's shape: some other server's route, not a passing glitch."""


def _parse_tokenize(resp: httpx.Response) -> tuple[int, int | None]:
    try:
        data = resp.json()
        count, limit = int(data["count"]), data.get("max_model_len")
    except (ValueError, KeyError, TypeError) as e:
        raise _NotVllmTokenize(f"HTTP 200 from /tokenize without a count ({type(e).__name__})") from e
    return count, int(limit) if isinstance(limit, int) else None


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: rare from LLM servers; fall back to our own backoff
        return None
