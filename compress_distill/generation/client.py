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
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Rejections that say the whole run is misconfigured, not this one item (wrong key, wrong model, wrong URL).
RUN_FATAL_STATUS = frozenset({401, 403, 404, 405})


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


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # e.g. response_format, stop, top_k

    @classmethod
    def from_spec(cls, spec: Any, **overrides: Any) -> Sampling:
        """From config.SamplingSpec (or anything with the same attributes)."""
        kw = {k: getattr(spec, k) for k in ("temperature", "top_p", "max_tokens", "seed") if hasattr(spec, k)}
        return cls(**{**kw, **overrides})


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
    kind: str  # "retries_exhausted" | "rejected"
    attempts: int
    status: int | None = None

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def normalize_message(message: Mapping[str, Any], finish_reason: str | None) -> tuple[str, str | None, str, bool | None]:
    """(response, reasoning, content, think_closed) from an OpenAI `message` of either shape."""
    content = message.get("content") or ""
    if not isinstance(content, str):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    split = message.get("reasoning_content")
    if split is None:
        split = message.get("reasoning")
    if isinstance(split, str) and split:
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
        """One chat completion with retries. Raises RequestRejected or RetriesExhausted."""
        body: dict[str, Any] = {"model": self.cfg.model, "messages": req.messages, "n": 1,
                                "temperature": req.sampling.temperature, "top_p": req.sampling.top_p,
                                "max_tokens": req.sampling.max_tokens, **req.sampling.extra}
        if req.sampling.seed is not None:
            body["seed"] = req.sampling.seed
        last = ""
        for attempt in range(1, self.cfg.max_attempts + 1):
            retry_after: float | None = None
            async with self._sem:
                t0 = time.monotonic()
                try:
                    resp = await self._http.post("/chat/completions", json=body, headers={"X-Request-Id": req.header_id})
                except httpx.UnsupportedProtocol as e:  # "localhost:8000" without http://: config, not transient
                    raise GenerationError(f"bad base_url {self.cfg.base_url!r}: {e}") from e
                except httpx.RequestError as e:  # connect/read errors, timeouts, undecodable bodies
                    last = f"{type(e).__name__}: {e}"
                    resp = None
                latency = time.monotonic() - t0
            if resp is not None:
                if resp.status_code == 200:
                    try:
                        return self._parse(req.key, resp, latency, attempt)
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
            log.warning("request %s attempt %d/%d failed (%s); retrying in %.2fs", req.key, attempt,
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
            return Failure(req.key, str(e), "rejected", 1, e.status)
        except RetriesExhausted as e:
            return Failure(req.key, str(e), "retries_exhausted", e.attempts)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** (attempt - 1))
        # "Equal jitter": at least half the exponential step, so a herd of retries spreads out but still waits.
        delay = cap / 2 + self._rng.uniform(0, cap / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cfg.retry_after_max_s))
        return delay

    def _excerpt(self, resp: httpx.Response, n: int = 500) -> str:
        return self._redact(resp.text[:n].replace("\n", " "))

    def _parse(self, key: str, resp: httpx.Response, latency: float, attempts: int) -> Completion:
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
                          latency_s=round(latency, 4), attempts=attempts)


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: rare from LLM servers; fall back to our own backoff
        return None
