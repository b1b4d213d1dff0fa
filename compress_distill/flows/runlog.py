"""Per-flow-run bookkeeping kept in the artifact store (no Prefect imports).

    <store>/.runs/<run_id>/run.json        effective parameters, config name, first start time
    <store>/.runs/<run_id>/jobs.jsonl      one line per job submission (job id, node, log, attempt)
    <store>/.runs/<run_id>/cancelled.json  the job ids that one cancel call covered

The flow process writes it. The cancellation hook reads it: under `serve` or a worker
that hook runs in another process than the flow, so the jobs to cancel must be on disk.
Tests and benchmarks count submissions from `jobs.jsonl`, which every submission passes
through (`RecordingBackend`), including the watcher's resubmits of preempted jobs.

`RecordingBackend` also carries the failure-injection knob of the tests (unset, it costs one
environment lookup per submission):
    COMPRESS_DISTILL_INJECT_JOBS="train/*.lora.aggressive,generate/*=sleep:600"
    COMPRESS_DISTILL_INJECT_JOBS="@FILE"   (the same, read from FILE at each submission)
The job of a matching node runs a stand-in command instead of its stage: `fail` (the default)
exits 1, `sleep:N` runs N seconds then exits 1. The job really runs through the real backend
and watcher; only its payload is replaced, so nothing is ever committed for it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..backends.base import JobBackend, JobRequest, JobStatus
from ..store import atomic_write_text

INJECT_ENV = "COMPRESS_DISTILL_INJECT_JOBS"
_INJECT_CODE = ("import sys, time; node, action = sys.argv[1:3]; "
                f"print('injected', action, '({INJECT_ENV}) for', node, flush=True); "
                "action.startswith('sleep:') and time.sleep(float(action[6:])); sys.exit(1)")


def node_of_job(name: str) -> str:
    """Job name `cd-<stage>-<node name>-<key>` (runner._run_as_job) -> node id `<stage>/<node name>`."""
    body = name.removeprefix("cd-")
    stage, _, rest = body.partition("-")
    node_name = rest.rsplit("-", 1)[0] if "-" in rest else rest
    return f"{stage}/{node_name}"


class RunRecord:
    """The `.runs/<run_id>/` directory of one flow run (all attempts of it)."""

    def __init__(self, store_root: Path, run_id: str):
        self.dir = Path(store_root) / ".runs" / run_id
        self.run_id = run_id
        self.attempt = 1
        self._lock = threading.Lock()

    @classmethod
    def open(cls, store_root: Path, run_id: str, info: dict[str, Any], attempt: int = 1) -> RunRecord:
        """Create or reopen; `started_at` is kept from the first attempt (a UI retry reuses the run id)."""
        rec = cls(store_root, run_id)
        rec.dir.mkdir(parents=True, exist_ok=True)
        rec.attempt = attempt
        old = rec.info()
        started = old.get("started_at", time.time()) if old else time.time()
        atomic_write_text(rec.dir / "run.json", json.dumps(
            {**info, "run_id": run_id, "started_at": started, "attempt": attempt}, indent=2, default=str))
        return rec

    def info(self) -> dict[str, Any]:
        try:
            data = json.loads((self.dir / "run.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def started_at(self) -> float | None:
        value = self.info().get("started_at")
        return float(value) if value is not None else None

    def add_job(self, job_id: str, backend: str, req: JobRequest | None = None, *, name: str = "",
                log: Path | None = None) -> None:
        """A job of this run: one it submitted (`req`), or one it adopted (`name`, `log`)."""
        name, log = (req.name, req.log_path) if req is not None else (name, log)
        line = json.dumps({"job_id": job_id, "backend": backend, "name": name, "node": node_of_job(name),
                           "log": str(log), "attempt": self.attempt, "adopted": req is None,
                           "submitted_at": time.time()})
        with self._lock, open(self.dir / "jobs.jsonl", "a") as f:
            f.write(line + "\n")  # one short write per line: readers never see half a record

    def jobs(self) -> list[dict[str, Any]]:
        try:
            text = (self.dir / "jobs.jsonl").read_text()
        except OSError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def mark_cancelled(self, job_ids: list[str], by: str) -> None:
        atomic_write_text(self.dir / "cancelled.json",
                          json.dumps({"job_ids": job_ids, "by": by, "at": time.time()}, indent=2))

    def cancelled(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.dir / "cancelled.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def injections(env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(node-id glob, action) pairs from COMPRESS_DISTILL_INJECT_JOBS (see the module docstring)."""
    raw = (env if env is not None else os.environ).get(INJECT_ENV, "")
    if raw.startswith("@"):  # a file, so a long-running serve process can be told to stop injecting
        try:
            raw = Path(raw[1:]).read_text().replace("\n", ",")
        except OSError:
            raw = ""
    out = []
    for item in (i.strip() for i in raw.split(",")):
        if item:
            glob, _, action = item.partition("=")
            out.append((glob.strip(), action.strip() or "fail"))
    return out


class RecordingBackend:
    """A JobBackend that records every submission of a run in its RunRecord, then delegates."""

    def __init__(self, inner: JobBackend, record: RunRecord, env: Mapping[str, str] | None = None):
        self.inner = inner
        self.name = inner.name
        self.record = record
        self.env = env  # None: os.environ, read at each submission

    def submit(self, req: JobRequest) -> str:
        node = node_of_job(req.name)
        action = next((a for g, a in injections(self.env) if fnmatch.fnmatchcase(node, g)), None)
        if action is not None:  # argv, no shell; the message lands in the job log and the error's tail
            req = replace(req, command=[sys.executable, "-c", _INJECT_CODE, node, action])
        job_id = self.inner.submit(req)
        self.record.add_job(job_id, self.inner.name, req)
        return job_id

    def find_live(self, name: str) -> str | None:
        find_live = getattr(self.inner, "find_live", None)
        return find_live(name) if find_live is not None else None

    def track(self, job_id: str, name: str | None = None, log_path: Path | None = None) -> None:
        """An adopted job (runner._run_as_job) joins this run's record, so cancel and retry see it."""
        track = getattr(self.inner, "track", None)
        if track is not None:
            track(job_id, name, log_path)
        self.record.add_job(job_id, self.inner.name, name=name or "", log=log_path)

    def poll_many(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        return self.inner.poll_many(job_ids)

    def cancel(self, job_ids: Iterable[str]) -> None:
        self.inner.cancel(job_ids)
