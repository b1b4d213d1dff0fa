"""A rich live view of a grid run for the CLI: one bar per stage, and the jobs in flight.

    with live_progress(console):
        summary = grid(params)

It listens to `events` (the flow runs in this process when started from the CLI), so it
needs no Prefect API and costs nothing when not used. Long stages (generation, training)
show their job id, state, elapsed time and log path while they run.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import events

_OUTCOME_STYLE = {"cached": "green", "ran": "bold green", "would_run": "cyan", "failed": "bold red",
                  "blocked": "yellow"}


@dataclass
class _Job:
    node_id: str
    job_id: str
    log: str
    state: str = "SUBMITTED"
    since: float = 0.0


class GridProgress:
    """Event listener + renderable. Thread-safe: tasks emit from worker threads."""

    def __init__(self, max_jobs_shown: int = 12):
        self.progress = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
        self.max_jobs_shown = max_jobs_shown
        self._stage_of: dict[str, str] = {}
        self._bars: dict[str, TaskID] = {}
        self._counts: dict[str, dict[str, int]] = {}
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self.title = ""

    def __call__(self, ev: events.Event) -> None:
        with self._lock:
            getattr(self, f"_on_{ev.kind}", lambda ev: None)(ev)

    def _on_plan(self, ev: events.Event) -> None:
        self.title = f"grid {ev.data.get('config', '')}"
        done = set(ev.data.get("done", []))
        for nid, stage in ev.data["nodes"].items():
            self._stage_of[nid] = stage
            counts = self._counts.setdefault(stage, {"total": 0, "in store": 0})
            counts["total"] += 1
            counts["in store"] += nid in done
        for stage, c in self._counts.items():
            self._bars[stage] = self.progress.add_task(stage, total=c["total"], detail=f"{c['in store']} in store")

    def _on_job(self, ev: events.Event) -> None:
        assert ev.node_id is not None
        self._jobs[ev.node_id] = _Job(ev.node_id, str(ev.data["job_id"]), str(ev.data.get("log", "")),
                                      since=time.monotonic())

    def _on_job_state(self, ev: events.Event) -> None:
        job = self._jobs.get(ev.node_id or "")
        if job is not None and job.state != ev.data["state"]:
            job.state, job.since = str(ev.data["state"]), time.monotonic()

    def _on_end(self, ev: events.Event) -> None:
        assert ev.node_id is not None
        self._jobs.pop(ev.node_id, None)
        stage = self._stage_of.get(ev.node_id)
        if stage is None:
            return
        counts = self._counts[stage]
        outcome = str(ev.data["outcome"])
        counts[outcome] = counts.get(outcome, 0) + 1
        detail = ", ".join(f"[{_OUTCOME_STYLE.get(k, 'white')}]{v} {k.replace('_', ' ')}[/]"
                           for k, v in counts.items() if k not in ("total", "in store") and v)
        self.progress.update(self._bars[stage], advance=1, detail=detail)

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {k: dict(v) for k, v in self._counts.items()}

    def __rich__(self) -> RenderableType:
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: j.node_id)
        parts: list[RenderableType] = [self.progress]
        if jobs:
            table = Table(title="jobs in flight", title_justify="left", expand=False, box=None, padding=(0, 1))
            for col in ("node", "job", "state", "for", "log"):
                table.add_column(col, overflow="fold")
            now = time.monotonic()
            for j in jobs[: self.max_jobs_shown]:
                table.add_row(j.node_id, j.job_id, j.state, f"{now - j.since:.0f}s", j.log)
            if len(jobs) > self.max_jobs_shown:
                table.add_row(f"... {len(jobs) - self.max_jobs_shown} more", "", "", "", "")
            parts.append(table)
        return Group(*parts)


@contextlib.contextmanager
def live_progress(console: Console | None = None, enabled: bool = True) -> Iterator[GridProgress | None]:
    """Show the live view while the body runs a grid in this process (no-op when not enabled)."""
    if not enabled:
        yield None
        return
    view = GridProgress()
    unsubscribe = events.subscribe(view)
    try:
        with Live(view, console=console or Console(stderr=True), refresh_per_second=4, transient=False):
            yield view
    finally:
        unsubscribe()
