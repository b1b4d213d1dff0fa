"""A local OpenAI-compatible server for tiny models on CPU (mini world, tests, laptops).

    python -m compress_distill.generation.local_server MODEL_DIR --port 8000

Endpoints: POST /v1/chat/completions, POST /tokenize, GET /v1/models, GET /health.
It honours temperature (0 = greedy), top_p, seed, max_tokens (or
max_completion_tokens) and reports finish_reason "stop"/"length" and usage, like
vLLM. Unsupported requests (n > 1, stream, logprobs, tools) get a 400 rather than
being silently ignored; a wrong `model` gets a 404. `response_format` and
`reasoning_effort` ARE ignored, as some production servers do: callers that need
a schema validate client-side, and these tiny models have no effort levels.
Other unknown fields are ignored too. `--reasoning-split` moves the think block
into `reasoning_content`, as vLLM's reasoning parsers do.

Like vLLM, a prompt plus max_tokens beyond the context (`--max-model-len`, at
most the model's own) is a 400 naming both counts, and `POST /tokenize` (at the
root, as vLLM serves it) takes {model, messages, add_generation_prompt} and
answers {count, max_model_len, tokens}: the client clips max_tokens with it.

Why not `transformers serve` (5.23, measured here with a 100k-parameter
Qwen3, 1 torch thread): it needs the `openai` package (not installed); it
ignored temperature (three T=1 samples were identical greedy outputs); it
was much slower (2.4 req/s at 8 concurrent, 4.3 at 32, against
8 and 19 req/s here on the same loaded machine). Startup is similar (9-24 s,
mostly importing torch). Built on the standard library's threaded HTTP
server, so it adds no dependency; the batching lives in `batch_engine`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from compress_distill.generation.batch_engine import BatchEngine, GenRequest

log = logging.getLogger(__name__)


class BadRequest(Exception):
    def __init__(self, status: int, message: str, kind: str = "BadRequestError"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class ModelServer(ThreadingHTTPServer):
    """The HTTP server plus what handlers share: tokenizer, engine, names, request log."""

    daemon_threads = True
    request_queue_size = 256  # the stdlib default backlog (5) resets connections under a concurrent burst

    def __init__(self, addr: tuple[str, int], tokenizer: Any, engine: BatchEngine, *, served_names: list[str],
                 max_context: int, reasoning_split: bool = False, request_log: Path | None = None):
        super().__init__(addr, Handler)
        self.tokenizer = tokenizer
        self.engine = engine
        self.served_names = served_names
        self.max_context = max_context
        self.reasoning_split = reasoning_split
        self._log_lock = threading.Lock()
        self._log_file = open(request_log, "a", encoding="utf-8") if request_log else None

    def record(self, entry: dict[str, Any]) -> None:
        if self._log_file is None:
            return
        with self._log_lock:
            self._log_file.write(json.dumps(entry) + "\n")
            self._log_file.flush()

    def server_close(self) -> None:
        super().server_close()
        if self._log_file is not None:
            self._log_file.close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses connections
    server: ModelServer

    def log_message(self, format: str, *args: Any) -> None:  # route the stdlib's access log to logging
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [
                {"id": n, "object": "model", "owned_by": "local"} for n in self.server.served_names]})
        else:
            self._send(404, _error(f"no route GET {self.path}", "NotFoundError"))

    def do_POST(self) -> None:
        t0 = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        rid = self.headers.get("X-Request-Id") or uuid.uuid4().hex
        entry: dict[str, Any] = {"request_id": rid, "path": self.path, "t_start": time.time()}
        try:
            route = {"/v1/chat/completions": self._chat, "/tokenize": self._tokenize}.get(self.path)
            if route is None:
                raise BadRequest(404, f"no route POST {self.path}", "NotFoundError")
            try:
                body = json.loads(raw)
            except json.JSONDecodeError as e:
                raise BadRequest(400, f"request body is not JSON: {e}") from e
            resp = route(body)
            if "usage" in resp:
                entry.update(finish_reason=resp["choices"][0]["finish_reason"], batch=resp.pop("_batch"),
                             **resp["usage"])
            entry["status"] = 200
            status, payload = 200, resp
        except BadRequest as e:
            entry.update(status=e.status, error=e.message)
            status, payload = e.status, _error(e.message, e.kind)
        except Exception as e:  # a server bug: answer 500 so clients see it, and keep serving
            log.exception("request %s failed", rid)
            entry.update(status=500, error=repr(e))
            status, payload = 500, _error(f"internal error: {e!r}", "InternalServerError")
        try:
            self._send(status, payload)
            entry["delivered"] = True
        except OSError:  # the client went away (killed, timed out): the log still shows the work was done
            entry["delivered"] = False
            self.close_connection = True
        entry["latency_s"] = round(time.monotonic() - t0, 4)
        self.server.record(entry)

    def _check_model(self, body: Any, *, optional: bool = False) -> None:
        if not isinstance(body, dict):
            raise BadRequest(400, "request body must be a JSON object")
        if optional and body.get("model") is None:  # vLLM's /tokenize: the model may be left out
            return
        if body.get("model") not in self.server.served_names:
            raise BadRequest(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")

    def _messages(self, body: dict[str, Any]) -> list[Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest(400, "messages must be a non-empty list")
        return messages

    def _tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        self._check_model(body, optional=True)
        ids = _prompt_ids(self.server.tokenizer, self._messages(body), bool(body.get("add_generation_prompt", True)))
        return {"count": len(ids), "max_model_len": self.server.max_context, "tokens": ids}

    def _chat(self, body: dict[str, Any]) -> dict[str, Any]:
        srv = self.server
        self._check_model(body)
        if body.get("n", 1) != 1:
            raise BadRequest(400, "n > 1 is not supported by this server; send one request per sample")
        for unsupported in ("stream", "logprobs", "tools"):
            if body.get(unsupported):
                raise BadRequest(400, f"{unsupported} is not supported by this server")
        prompt_ids = _prompt_ids(srv.tokenizer, self._messages(body))
        room = srv.max_context - len(prompt_ids)
        if room < 1:
            raise BadRequest(400, _context_error(srv.max_context, len(prompt_ids), 0))
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or min(512, room)
        temperature = 1.0 if body.get("temperature") is None else body["temperature"]  # null = default, as OpenAI
        top_p = 1.0 if body.get("top_p") is None else body["top_p"]
        seed = body.get("seed")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequest(400, f"max_tokens must be a positive integer, got {max_tokens!r}")
        if max_tokens > room:
            raise BadRequest(400, _context_error(srv.max_context, len(prompt_ids), max_tokens))
        if not isinstance(temperature, int | float) or temperature < 0:
            raise BadRequest(400, f"temperature must be >= 0, got {temperature!r}")
        if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
            raise BadRequest(400, f"top_p must be in (0, 1], got {top_p!r}")
        if seed is not None and not isinstance(seed, int):
            raise BadRequest(400, f"seed must be an integer, got {seed!r}")
        res = srv.engine.submit(GenRequest(prompt_ids, max_tokens, float(temperature), float(top_p), seed))
        text = srv.tokenizer.decode(res.token_ids, skip_special_tokens=True)
        finish = res.finish_reason
        stops = body.get("stop") or []
        for s in [stops] if isinstance(stops, str) else stops:  # applied after decoding: simple, and rare here
            if s and s in text:
                text, finish = text[: text.index(s)], "stop"
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if srv.reasoning_split:
            message = {"role": "assistant", **_split_think(text)}
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": len(res.token_ids),
                      "total_tokens": len(prompt_ids) + len(res.token_ids)},
            "_batch": res.batch_size,  # for the request log only; popped before sending
        }


def _context_error(max_context: int, prompt: int, completion: int) -> str:
    """vLLM's wording, so clients that recognise its context-length 400 recognise this one."""
    return (f"This model's maximum context length is {max_context} tokens. However, you requested "
            f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the completion). "
            f"Please reduce the length of the messages or completion.")


def _prompt_ids(tokenizer: Any, messages: list[Any], add_generation_prompt: bool = True) -> list[int]:
    norm = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m:
            raise BadRequest(400, "each message needs a role and content")
        content = m.get("content") or ""
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        norm.append({"role": m["role"], "content": content})
    text = tokenizer.apply_chat_template(norm, tokenize=False, add_generation_prompt=add_generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _split_think(text: str) -> dict[str, Any]:
    """vLLM reasoning-parser shape: think block in reasoning_content, the rest in content."""
    body = text[len("<think>"):] if text.startswith("<think>") else text
    if "</think>" in body:
        reasoning, content = body.split("</think>", 1)
        return {"reasoning_content": reasoning, "content": content}
    if text.startswith("<think>"):  # unterminated: all reasoning, no content
        return {"reasoning_content": body, "content": None}
    return {"reasoning_content": None, "content": text}


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": None}, "object": "error"}


def build_server(model_dir: str, host: str = "127.0.0.1", port: int = 0, *, served_names: list[str] | None = None,
                 max_batch: int = 32, batch_wait_ms: float = 5.0, threads: int = 1, seed: int = 0,
                 reasoning_split: bool = False, request_log: Path | None = None,
                 max_model_len: int | None = None) -> ModelServer:
    """Load the model and bind the socket (port 0 = any free port); call serve_forever() to run."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # One thread: tiny models are dominated by per-op overhead, and on shared cores a second thread
    # made a decode step 13x slower here (6 ms -> 81 ms), not faster.
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = {tok.eos_token_id} | set(_as_list(model.generation_config.eos_token_id))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    engine = BatchEngine(model, {e for e in eos if e is not None}, pad, max_batch=max_batch,
                         batch_wait_s=batch_wait_ms / 1000, seed=seed)
    engine.start()
    ctx = int(getattr(model.config, "max_position_embeddings", 2048))
    if max_model_len is not None:  # like vLLM's --max-model-len: a smaller context than the model's
        ctx = min(ctx, max_model_len)
    return ModelServer((host, port), tok, engine, served_names=served_names or [model_dir], max_context=ctx,
                       reasoning_split=reasoning_split, request_log=request_log)


def _as_list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, list | tuple | set) else [x]


@contextlib.contextmanager
def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 0, *, startup_timeout_s: float = 120,
          extra_args: list[str] | None = None, log_path: Path | None = None) -> Iterator[str]:
    """Run the server in a child process; yield its base URL (`http://host:port/v1`); stop it on exit."""
    if not (Path(model_dir) / "config.json").is_file():  # fail in milliseconds, not after importing torch
        raise FileNotFoundError(f"{model_dir} is not a model directory (no config.json)")
    with tempfile.TemporaryDirectory(prefix="local-server-") as tmp:
        ready = Path(tmp) / "ready.json"
        logp = log_path or Path(tmp) / "server.log"
        cmd = [sys.executable, "-m", "compress_distill.generation.local_server", str(model_dir), "--host", host,
               "--port", str(port), "--ready-file", str(ready), *(extra_args or [])]
        t0 = time.monotonic()
        with open(logp, "ab") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                    env={**os.environ, "HF_HUB_OFFLINE": "1"})
        try:
            while not ready.exists():
                if proc.poll() is not None:
                    raise RuntimeError(f"local server exited with {proc.returncode} before it was ready:\n"
                                       + _tail(logp))
                if time.monotonic() - t0 > startup_timeout_s:
                    raise TimeoutError(f"local server not ready after {startup_timeout_s}s:\n" + _tail(logp))
                time.sleep(0.05)
            info = json.loads(ready.read_text())
            log.info("local server for %s ready at %s in %.1fs", model_dir, info["base_url"], time.monotonic() - t0)
            yield info["base_url"]
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_bytes()[-n:].decode(errors="replace")
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("model_dir")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0 picks a free port (see --ready-file)")
    ap.add_argument("--served-model-name", action="append", help="name(s) accepted in `model` (default: MODEL_DIR)")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0, help="seeds requests that bring no seed")
    ap.add_argument("--reasoning-split", action="store_true", help="return the think block as reasoning_content")
    ap.add_argument("--request-log", type=Path, help="append one JSON line per request (id, status, usage)")
    ap.add_argument("--max-model-len", type=int, help="context in tokens, prompt + completion (default: the model's)")
    ap.add_argument("--ready-file", type=Path, help="written once serving: {base_url, pid}")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    srv = build_server(a.model_dir, a.host, a.port, served_names=a.served_model_name, max_batch=a.max_batch,
                       batch_wait_ms=a.batch_wait_ms, threads=a.threads, seed=a.seed,
                       reasoning_split=a.reasoning_split, request_log=a.request_log, max_model_len=a.max_model_len)
    host, port = srv.server_address[:2]
    base_url = f"http://{_url_host(str(host))}:{port}/v1"
    if a.ready_file:  # atomic: a reader never sees half a file
        tmp = a.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"base_url": base_url, "pid": os.getpid()}))
        os.replace(tmp, a.ready_file)
    log.info("serving %s at %s", a.model_dir, base_url)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        srv.engine.stop()
        srv.server_close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # serve() stops us with SIGTERM: leave through main()'s clean-up path


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)
    main()
