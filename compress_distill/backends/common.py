"""File and naming conventions shared by the local and Slurm backends.

Both backends write the same things next to a job's log, so a restarted
orchestrator (or a person) finds them in the same place whatever ran the job:

- the log itself, `req.log_path`, opened in append mode (a requeued job appends);
- for a job array, one log per task: `array_task_log(log_path, index)`;
- a state file, `state_path(log_path)`: JSON with the job id, backend, name, argv
  and, once a backend has seen it end, the final state.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import JobRequest, JobStatus

log = logging.getLogger(__name__)

_ARRAY_ITEM = re.compile(r"(\d+)(?:-(\d+)(?::(\d+))?)?")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_array_spec(spec: str) -> tuple[list[int], int | None]:
    """Slurm's --array syntax ("0-9", "1,3,5-7", "0-15:4", "0-99%8") -> (indices, max running)."""
    body, _, limit = spec.strip().partition("%")
    indices: list[int] = []
    for item in body.split(","):
        m = _ARRAY_ITEM.fullmatch(item.strip())
        if not m:
            raise ValueError(f"bad array spec {spec!r}: item {item!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        step = int(m.group(3) or 1)
        if hi < lo or step < 1:
            raise ValueError(f"bad array spec {spec!r}: range {item!r}")
        indices.extend(range(lo, hi + 1, step))
    if limit and not limit.isdigit():
        raise ValueError(f"bad array spec {spec!r}: limit {limit!r}")
    return sorted(set(indices)), (int(limit) if limit else None)


def array_task_log(log_path: Path, index: int | str) -> Path:
    """Log of one array task: logs/train.log -> logs/train.3.log."""
    return log_path.with_name(f"{log_path.stem}.{index}{log_path.suffix}")


def state_path(log_path: Path) -> Path:
    """The job's state file: logs/train.log -> logs/train.state.json."""
    return log_path.with_name(f"{log_path.stem}.state.json")


def check_env(env: Mapping[str, str]) -> None:
    """Reject names a shell cannot export; values may be anything (they are quoted)."""
    for k in env:
        if not ENV_NAME.fullmatch(k):
            raise ValueError(f"environment variable name {k!r} is not valid")


def write_state(log_path: Path, record: Mapping[str, Any]) -> None:
    """Merge `record` into the state file, atomically (write a temp file, then rename)."""
    path = state_path(log_path)
    data: dict[str, Any] = {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    data.update(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, default=str)
        os.replace(tmp, path)
    except OSError:
        log.warning("could not write state file %s", path, exc_info=True)
        Path(tmp).unlink(missing_ok=True)


def read_state(log_path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(state_path(log_path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def submit_record(backend: str, job_id: str, req: JobRequest, **extra: Any) -> dict[str, Any]:
    return {
        "backend": backend,
        "job_id": job_id,
        "name": req.name,
        "kind": req.kind,
        "command": list(req.command),
        "workdir": str(req.workdir),
        "log_path": str(req.log_path),
        "array": req.array,
        "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "state": "SUBMITTED",
        **extra,
    }


def final_record(status: JobStatus) -> dict[str, Any]:
    return {
        "state": status.state.value,
        "exit_code": status.exit_code,
        "node": status.node,
        "elapsed_s": status.elapsed_s,
        "reason": status.reason,
        "restarts": status.restarts,
        "final_job_id": status.job_id,
        "ended_seen_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
