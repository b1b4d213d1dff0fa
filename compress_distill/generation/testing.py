"""Test support: one tiny model and one local server process per pytest session, shared by test modules.

Starting the server costs most of the generation tests' time (importing
torch and transformers, ~8 s idle and 20 s+ on busy shared cores), so every
module asks for the same one; it stops when the session ends.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress_distill.generation.local_server import serve
from compress_distill.generation.tiny_model import ensure_tiny_model


@dataclass(frozen=True)
class SessionServer:
    base_url: str
    model: str  # the `model` the server accepts: its model directory
    model_dir: Path
    request_log: Path  # one JSON line per request: request_id, t_start, status, usage, batch, delivered


_server: SessionServer | None = None


def session_server(config: Any, basetemp: Path) -> SessionServer:
    """Start (once) a local server for a tiny model under `basetemp`; `config` is pytest's, for clean-up."""
    global _server
    if _server is None:
        model_dir = ensure_tiny_model(basetemp / "tiny-qwen3")
        request_log = basetemp / "local-server-requests.jsonl"
        stack = contextlib.ExitStack()
        url = stack.enter_context(serve(model_dir, extra_args=["--request-log", str(request_log)]))
        config.add_cleanup(stack.close)
        config.add_cleanup(_forget)
        _server = SessionServer(url, str(model_dir), model_dir, request_log)
    return _server


def _forget() -> None:
    global _server
    _server = None
