"""Cancelling a grid run cancels its live jobs with ONE backend.cancel (one `scancel`).

Two paths, whichever comes first; `cancelled.json` in the run record makes the second a no-op:
- in the flow process: the runner's SIGTERM surfaces as an exception in the flow's main
  thread, which calls `JobWatcher.cancel_all()` (the watcher knows every live job);
- the flow's `on_cancellation` hook: under `serve` or a worker it runs in the serving
  process, after the flow process is gone. It reads the run's submitted jobs from the
  store's run record, asks the backend which are still live (one poll) and cancels those.
Local jobs need neither: they exit with their orchestrator (node_main's parent watch).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..backends.base import JobBackend
from ..backends.factory import make_backend
from ..backends.watch import JobWatcher
from .params import GridParams
from .retry import run_inputs
from .runlog import RunRecord

log = logging.getLogger(__name__)


def cancel_in_process(watcher: JobWatcher | None, record: RunRecord | None) -> list[str]:
    """The flow is being torn down: cancel every live job the watcher holds, in one call."""
    if watcher is None or (record is not None and record.cancelled() is not None):
        return []
    ids = watcher.cancel_all()
    if record is not None:
        record.mark_cancelled(ids, by="flow")
    if ids:
        log.warning("cancelled %d live job(s) in one call: %s", len(ids), " ".join(ids))
    return ids


def cancel_recorded_jobs(record: RunRecord, backend: JobBackend) -> list[str]:
    """From another process: cancel the run's recorded jobs that are still live, in one call."""
    if record.cancelled() is not None:
        return []
    ids = list(dict.fromkeys(j["job_id"] for j in record.jobs()))
    live: list[str] = []
    if ids:
        statuses = backend.poll_many(ids)
        live = [i for i in ids if i in statuses and not statuses[i].state.terminal]
    if live:
        backend.cancel(live)
    record.mark_cancelled(live, by="hook")
    return live


def on_cancellation_hook(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect `on_cancellation` hook of the grid flow (runs in the serve/worker process)."""
    try:
        params = GridParams.model_validate((flow_run.parameters or {}).get("params") or {})
        cfg, store_root = run_inputs(params, str(flow_run.id))
    except Exception:
        log.warning("cancel hook: cannot resolve the parameters of flow run %s", flow_run.id, exc_info=True)
        return
    if cfg.cluster.backend == "local":
        return  # local jobs die with their flow process
    record = RunRecord(Path(store_root), str(flow_run.id))
    done = record.cancelled()
    if done is not None:
        log.info("flow run %s: its jobs were already cancelled by the %s (%s)", flow_run.id, done.get("by"),
                 " ".join(done.get("job_ids", [])) or "none live")
        return
    backend = make_backend(cfg)
    if backend is None:
        return
    ids = cancel_recorded_jobs(record, backend)
    log.warning("flow run %s cancelled: cancelled %d live job(s) %s", flow_run.id, len(ids), " ".join(ids))
