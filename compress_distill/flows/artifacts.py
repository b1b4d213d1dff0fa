"""Publish a grid run's plan, per-stage progress and results as Prefect artifacts.

Keys (lowercase, dashes) are per grid, so the UI's artifact page keeps the history of
each: `<grid>-plan`, `<grid>-progress` (table), `<grid>-results` (table),
`<grid>-results-md` (markdown with job ids and log/artifact links), and one progress
artifact per stage, updated while the run goes. Publishing never fails the run.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from ..plan import Plan
from ..store import ArtifactStore
from . import summary

log = logging.getLogger(__name__)
T = TypeVar("T")


def grid_key(config_name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", config_name.lower()).strip("-") or "grid"


def _safe(what: str, fn: Callable[[], T]) -> T | None:
    try:
        return fn()
    except Exception:  # the API being slow or down must not fail the grid
        log.warning("could not publish the %s artifact", what, exc_info=True)
        return None


def publish_plan(plan: Plan, store: ArtifactStore, node_ids: list[str], dry_run: bool) -> None:
    md = summary.plan_markdown(plan, store, node_ids, dry_run)
    key = grid_key(plan.config.name)
    _safe("plan", lambda: create_markdown_artifact(md, key=f"{key}-plan", description=f"plan of {key}"))


class StageProgress:
    """One Prefect progress artifact per stage, kept current by a background thread.

    `node_ended` only counts (the flow's loop never waits on the API: an artifact update costs
    a round trip, 20 ms idle and over a second on a loaded server, and a no-op run of the paper
    grid ends 129 nodes in a few seconds). The thread creates the artifacts, then pushes the
    stages whose count changed every `interval_s`; `finish` pushes the final counts.
    """

    def __init__(self, plan: Plan, node_ids: list[str], todo: list[str], interval_s: float = 5.0):
        self.key = grid_key(plan.config.name)
        # only stages with work to do get one: a stage that is all in the store has no progress to show
        active = {plan.nodes[n].stage for n in todo}
        self.stage_of = {n: plan.nodes[n].stage for n in node_ids if plan.nodes[n].stage in active}
        self.totals: dict[str, int] = {}
        for stage in self.stage_of.values():
            self.totals[stage] = self.totals.get(stage, 0) + 1
        self.ended: dict[str, int] = dict.fromkeys(self.totals, 0)
        self.interval_s = interval_s
        self._pushed: dict[str, int] = {}
        self._ids: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # a copy of this context carries the flow run into the thread, so artifacts attach to it
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._loop,), daemon=True,
                                        name="stage-progress")
        self._thread.start()

    def node_ended(self, node_id: str) -> None:
        stage = self.stage_of.get(node_id)
        if stage is not None:
            with self._lock:
                self.ended[stage] += 1

    def finish(self) -> None:
        self._stop.set()
        self._thread.join()
        self._push()

    def _loop(self) -> None:
        while self.totals and not self._stop.is_set():
            self._push()
            self._stop.wait(self.interval_s)

    def _push(self) -> None:
        with self._lock:
            todo = {s: n for s, n in self.ended.items() if self._pushed.get(s) != n}
        for stage, ended in todo.items():
            total = self.totals[stage]
            desc = f"{stage}: {ended}/{total} nodes ended"
            if stage not in self._ids:
                art = _safe("progress", functools.partial(create_progress_artifact, 100.0 * ended / total,
                                                          key=f"{self.key}-stage-{stage}", description=desc))
                if art is None:
                    continue
                self._ids[stage] = art
            else:
                _safe("progress", functools.partial(update_progress_artifact, self._ids[stage],
                                                    100.0 * ended / total, description=desc))
            self._pushed[stage] = ended


def publish_results(plan: Plan, store: ArtifactStore, node_ids: list[str], outcomes: Mapping[str, str],
                    failed: Mapping[str, str], blocked: list[str]) -> list[dict[str, Any]]:
    key = grid_key(plan.config.name)
    progress = summary.stage_counts(plan, node_ids, outcomes)
    _safe("progress table", lambda: create_table_artifact(
        progress, key=f"{key}-progress", description=f"nodes per stage and outcome, {key}"))
    rows = summary.results_rows(plan, store, node_ids, outcomes)
    if rows:
        _safe("results table", lambda: create_table_artifact(
            rows, key=f"{key}-results", description=f"results of {key}: one row per cell"))
    md = summary.results_markdown(plan.config.name, rows, failed, blocked, plan.config.cluster.backend)
    _safe("results markdown", lambda: create_markdown_artifact(
        md, key=f"{key}-results-md", description=f"results of {key} with job ids, logs and artifacts"))
    return rows
