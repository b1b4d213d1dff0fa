"""In-process events of a grid run, for live displays (the CLI's progress view). Core: no Prefect.

The flow and its tasks (threads of the same process) call `emit`; a display calls `subscribe`.
With no subscriber (a served or worker run) emitting costs a list lookup.

Kinds and their data:
  plan       nodes: {node_id: stage}, done: [node ids already in the store], config: name
  start      node_id                     a node's task began (store lookup, maybe a job)
  job        node_id, job_id, log        a job was submitted for the node
  job_state  node_id, job_id, state      the job changed state (PENDING, RUNNING, ...)
  end        node_id, outcome            cached | ran | would_run | failed | blocked
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    kind: str
    node_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[Event], None]
_listeners: list[Listener] = []
_lock = threading.Lock()


def subscribe(listener: Listener) -> Callable[[], None]:
    """Register a listener; returns the function that removes it."""
    with _lock:
        _listeners.append(listener)

    def unsubscribe() -> None:
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return unsubscribe


def emit(kind: str, node_id: str | None = None, **data: Any) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(Event(kind, node_id, data))
        except Exception:  # a broken display must never fail a node
            log.debug("progress listener failed", exc_info=True)
