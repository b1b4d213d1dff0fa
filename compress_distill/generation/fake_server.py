"""A scripted OpenAI-compatible HTTP server for tests: real sockets on 127.0.0.1, canned answers, faults.

    def script(req: SeenRequest) -> Reply: ...
    with FakeServer(script) as srv:
        ChatClient(ClientConfig(model="m", base_url=srv.base_url))

The script sees every request (its index, X-Request-Id, JSON body, headers)
and returns a `Reply`: any status, a JSON body or raw text, headers, a delay,
or `drop=True` to close the connection without answering. `srv.requests`
keeps everything that arrived, for assertions. Used to inject 500 bursts,
answers without `</think>`, empty answers and non-JSON bodies without
mocking the HTTP stack.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class SeenRequest:
    index: int  # 0-based arrival order over the server's life
    request_id: str | None
    path: str
    body: Any
    headers: dict[str, str]


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None  # dict/list -> JSON; str -> sent as-is
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False  # close the socket without a response (a crashed worker)


Script = Callable[[SeenRequest], Reply]


def completion(content: str | None, *, reasoning: str | None = None, reasoning_field: str = "reasoning_content",
               finish_reason: str = "stop", prompt_tokens: int = 10, completion_tokens: int = 20,
               model: str = "fake-model") -> dict[str, Any]:
    """A well-formed chat.completion body."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        message[reasoning_field] = reasoning
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def fail_first(k: int, then: Script, *, status: int = 500, body: str = '{"error": "overloaded"}') -> Script:
    """The first k requests get `status`; the rest are answered by `then`."""
    return lambda req: Reply(status, body) if req.index < k else then(req)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the stdlib's 5 resets connections in a concurrent burst


class FakeServer:
    def __init__(self, script: Script):
        self.script = script
        self.requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        outer = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._reply(Reply(200, {"status": "ok"}))

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                with outer._lock:
                    seen = SeenRequest(len(outer.requests), self.headers.get("X-Request-Id"), self.path, body,
                                       dict(self.headers.items()))
                    outer.requests.append(seen)
                self._reply(outer.script(seen))

            def _reply(self, r: Reply) -> None:
                if r.delay_s:
                    time.sleep(r.delay_s)
                if r.drop:
                    self.close_connection = True
                    return
                data = (r.body if isinstance(r.body, str) else json.dumps(r.body)).encode()
                self.send_response(r.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in r.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def ids_requested(self) -> list[str | None]:
        with self._lock:
            return [r.request_id for r in self.requests]

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
