"""Readiness-based list scheduling of the plan DAG over a GPU pool. Pure: no I/O, no Prefect.

One implementation, two drivers: `simulate` runs `Scheduler` on a discrete-event clock
(estimated hours; `plan --simulate`), and the grid flow (flows/grid.py, what `compress-distill
run` and the Prefect UI launch) runs the SAME `Scheduler` against real jobs, a replay's
sleep jobs included (bench/bench_replay.py). Each driver only says "these tasks finished";
the scheduler alone decides what starts next and where.

Rules (issue 7):
- A task is ready as soon as all its deps are done; never at stage boundaries
  (except under the `stage-barrier` baseline policy).
- Among ready tasks, longest remaining path first: the task's own estimated hours plus
  the longest chain of its dependants (`priorities`). Ties: more GPU-hours, then plan order.
- Capacity: N nodes x G GPUs; a job runs on ONE node (jobs are single-node), placed best-fit
  (the fullest node it fits on, which keeps whole nodes free for 8-GPU jobs). A lower-
  priority job that fits may start while a higher one waits for room (greedy backfill).
- Pool caps: at most `max_jobs` GPU jobs at once (profile `max_concurrent_gpu_jobs`), and a
  fair share per job kind: a kind holding more than its share of the pool's GPUs may not
  start another job while a job of another kind is ready and waiting. The share is work-
  conserving (ignored when nothing else waits), so it never leaves GPUs idle by itself.
- Tasks needing 0 GPUs (CPU steps) take no pool capacity.
- Submit-ahead (`forecast`, `queue`, `started`): a driver may hand a task to its backend
  before the task's deps are done, as a job that the backend starts by itself when they
  are (Slurm: --dependency=afterok). The scheduler decides which and where by running
  itself forward on estimates; until the job runs, its GPUs on its node are reserved for it
  once its deps are done, so nothing else is placed there.
"""

from __future__ import annotations

import copy
import heapq
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .costmodel import CostModel
from .plan import Node, Plan

Policy = Literal["critical-path", "fifo", "stage-barrier"]
POLICIES: tuple[Policy, ...] = ("critical-path", "fifo", "stage-barrier")

# The naive baseline's barriers: generate all -> compress all -> train all (-> evaluate/report).
# CPU steps join the phase of the GPU stage they follow.
STAGE_PHASE = {"build": 0, "prepare": 0, "generate": 0, "verify": 0, "compress": 1, "judge": 1, "derive": 1,
               "train": 2, "evaluate": 3, "report": 3}
# Default fair share: serving jobs (generation 20-45 h) may hold at most half the pool while
# other work waits. With 2 nodes: one generation node, one node for everything else.
DEFAULT_SHARES: Mapping[str, float] = {"vllm": 0.5}


@dataclass(frozen=True)
class Task:
    """A plan node as the scheduler sees it."""

    id: str
    stage: str
    kind: str
    gpus: int
    hours: float          # estimated wall-clock hours (0 where the cost model has none)
    deps: tuple[str, ...]
    phase: int = 0        # barrier group of the stage-barrier policy
    index: int = 0        # position in the plan (topological): FIFO order and the final tie-break
    estimated: bool = True  # False: the cost model had no estimate, hours was set to 0

    @property
    def gpu_hours(self) -> float:
        return self.hours * self.gpus


@dataclass(frozen=True)
class Pool:
    """The GPU pool of a cluster profile."""

    nodes: int
    gpus_per_node: int
    max_jobs: int | None = None             # concurrent GPU jobs (profile max_concurrent_gpu_jobs)
    shares: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_SHARES))

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @classmethod
    def from_profile(cls, profile: Any, *, nodes: int | None = None, gpus_per_node: int | None = None,
                     shares: Mapping[str, float] | None = None) -> Pool:
        """From a config.ClusterProfile; `nodes`/`gpus_per_node` override it (e.g. plan --simulate)."""
        return cls(nodes=nodes or profile.nodes, gpus_per_node=gpus_per_node or profile.gpus_per_node,
                   max_jobs=profile.max_concurrent_gpu_jobs,
                   shares=dict(DEFAULT_SHARES if shares is None else shares))


@dataclass(frozen=True)
class Placement:
    """A scheduling decision: start `task` on pool node `node` (None: needs no GPU)."""

    task: Task
    node: int | None


# --------------------------------------------------------------------------- plan -> tasks

def tasks_from_plan(plan: Plan, cost: CostModel, *, stages: Iterable[str] | None = None,
                    phase: Callable[[Node], int] | None = None) -> dict[str, Task]:
    """The plan's nodes as tasks, in plan (topological) order.

    `stages` keeps only those stages; deps outside the selection count as done (e.g. the
    training-only replay). Nodes without an estimate (evaluate, judge) get 0 hours: in the
    simulation they start when their GPUs are free and end at once (`estimated` says so);
    a train node without one gets a small per-source guess, so that raw cells still start first.
    """
    keep = set(stages) if stages is not None else None
    out: dict[str, Task] = {}
    for i, (nid, node) in enumerate(plan.nodes.items()):
        if keep is not None and node.stage not in keep:
            continue
        est = cost.estimate(plan, node)
        hours = est.hours if est.hours is not None else _unestimated_train_hours(plan, node)
        out[nid] = Task(id=nid, stage=node.stage, kind=node.job.kind, gpus=node.job.gpus,
                        hours=hours, deps=tuple(d for d in node.deps if keep is None or d in out),
                        phase=phase(node) if phase else STAGE_PHASE.get(node.stage, 0), index=i,
                        estimated=est.hours is not None)
    return out


# Relative training work per data-source kind where the cost model knows nothing (the mini
# world before its first run; later runs use measured times). Only the ORDER matters: raw
# traces cost several times a compressed source, answer-only least (paper Table 11).
_SOURCE_WORK_H = {"raw": 10 / 60, "prefix_fraction": 5 / 60, "compressed": 3 / 60, "truncated_to_match": 3 / 60,
                  "answer_only": 1 / 60}


def _unestimated_train_hours(plan: Plan, node: Node) -> float:
    if node.stage != "train" or node.cell is None:
        return 0.0
    return _SOURCE_WORK_H.get(plan.config.data_sources[node.cell.data].kind, 0.0)


def task_priorities(tasks: Mapping[str, Task]) -> dict[str, float]:
    """Longest remaining path in hours: own time + the longest chain of dependants."""
    dependants: dict[str, list[str]] = {t: [] for t in tasks}
    for t in tasks.values():
        for d in t.deps:
            if d in dependants:  # a dep outside the set counts as done
                dependants[d].append(t.id)
    prio: dict[str, float] = {}
    for tid in sorted(tasks, key=lambda k: tasks[k].index, reverse=True):  # reverse topological
        prio[tid] = tasks[tid].hours + max((prio[d] for d in dependants[tid]), default=0.0)
    return prio


def priorities(plan: Plan, cost: CostModel) -> dict[str, float]:
    """Priority of every plan node (higher first): its longest remaining path in estimated hours.

    Pass `CostModel(measured_hours(plan, store))` so that earlier runs refine the seeds.
    """
    return task_priorities(tasks_from_plan(plan, cost))


def node_priorities(plan: Plan, cost: CostModel) -> dict[str, int]:
    """Integer priority of every plan node for job backends: its longest remaining path in
    MINUTES (own estimated time + the longest chain of dependants), rounded up so that any
    node with work behind it outranks a leaf of the same own time. Higher runs first.

    What the flow passes as `JobRequest.priority`; Slurm turns it into `--nice`, the local
    backend starts its queued jobs by it. Nodes without an estimate count 0 h.
    """
    return {nid: math.ceil(round(h * 60, 6)) for nid, h in priorities(plan, cost).items()}


def submission_order(ready: Iterable[str], prio: Mapping[str, float], tasks: Mapping[str, Task]) -> list[str]:
    """Ready node ids in the order to submit them: longest remaining path, then GPU-hours, then plan order."""
    return sorted(ready, key=lambda t: (-prio[t], -tasks[t].gpu_hours, tasks[t].index))


# --------------------------------------------------------------------------- the scheduler

class Scheduler:
    """State of one run: what is done, ready, running, and where. Drivers call `pick` and `finish`.

    Not thread-safe: a caller with threads wraps it in a lock.
    """

    def __init__(self, tasks: Mapping[str, Task], pool: Pool, policy: Policy = "critical-path"):
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; one of {', '.join(POLICIES)}")
        too_big = [t.id for t in tasks.values() if t.gpus > pool.gpus_per_node]
        if too_big:
            raise ValueError(f"jobs need more GPUs than one node has ({pool.gpus_per_node}): {too_big[:3]}")
        self.tasks = dict(tasks)
        self.pool = pool
        self.policy = policy
        self.prio = task_priorities(self.tasks)
        self.free = [pool.gpus_per_node] * pool.nodes
        self.held: dict[str, int] = {}                  # GPUs in use per kind
        self.running: dict[str, int | None] = {}        # task id -> node
        self.queued: dict[str, int | None] = {}         # submitted ahead, not running yet -> planned node
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self._missing = {t.id: sum(1 for d in t.deps if d in self.tasks) for t in self.tasks.values()}
        self._dependants: dict[str, list[str]] = {t: [] for t in self.tasks}
        for t in self.tasks.values():
            for d in t.deps:
                if d in self.tasks:
                    self._dependants[d].append(t.id)
        self._ready = {t for t, n in self._missing.items() if n == 0}
        self._phase_left: dict[int, int] = {}
        for t in self.tasks.values():
            self._phase_left[t.phase] = self._phase_left.get(t.phase, 0) + 1

    # ------------------------------------------------------------------ queries

    @property
    def finished(self) -> bool:
        """Nothing is running and nothing can start (all done, or the rest is blocked by failures)."""
        return not self.running and not self.queued and not self._eligible()

    def ready(self) -> list[str]:
        """Tasks that may be submitted now (deps done, barrier passed), best first."""
        return self._order(self._eligible())

    def _eligible(self) -> list[str]:
        if self.policy != "stage-barrier":
            return list(self._ready)
        open_phase = min((p for p, n in self._phase_left.items() if n > 0), default=0)
        return [t for t in self._ready if self.tasks[t].phase <= open_phase]

    def _order(self, ids: Iterable[str]) -> list[str]:
        if self.policy == "critical-path":
            return submission_order(ids, self.prio, self.tasks)
        return sorted(ids, key=lambda t: self.tasks[t].index)  # naive: plan order

    # ------------------------------------------------------------------ decisions

    def gates(self, task_id: str) -> list[str]:
        """The unfinished tasks that must end before `task_id` may start: its deps, and under
        the stage-barrier policy every task of an earlier phase. What a job submitted ahead
        waits for."""
        task = self.tasks[task_id]
        out = [d for d in task.deps if d in self.tasks and d not in self.done]
        if self.policy == "stage-barrier":
            out += [t for t in self.tasks if self.tasks[t].phase < task.phase and t not in self.done]
        return list(dict.fromkeys(out))

    def pick(self) -> list[Placement]:
        """Start every eligible task that fits now, best first; returns the placements made."""
        waiting = self.ready()
        committed = self._committed()  # unchanged by the picks below
        placed: list[Placement] = []
        for tid in waiting:
            task = self.tasks[tid]
            node: int | None = None
            if task.gpus > 0:
                if self.pool.max_jobs is not None and self._gpu_jobs() + len(committed) >= self.pool.max_jobs:
                    continue
                node = self._fit(task.gpus, committed)
                if node is None or self._over_share(task, [t for t in waiting if t in self._ready and t != tid]):
                    continue
            self._start(task, node)
            placed.append(Placement(task, node))
        return placed

    def _fit(self, gpus: int, committed: list[str]) -> int | None:
        free = list(self.free)
        for tid in committed:  # their GPUs are spoken for on their node
            node = self.queued[tid]
            if node is not None:
                free[node] -= self.tasks[tid].gpus
        fits = [(f, n) for n, f in enumerate(free) if f >= gpus]
        return min(fits)[1] if fits else None  # best fit: the fullest node that still fits

    def _committed(self) -> list[str]:
        """Queued GPU tasks the backend may start as soon as their node has room."""
        return [t for t in self.queued if self.tasks[t].gpus > 0 and self.unblocked(t)]

    def open_gates(self, task_id: str, through: Callable[[Task], bool] = lambda t: t.gpus == 0 and t.hours == 0,
                   ) -> list[str]:
        """The unfinished gates of `task_id`, looking through those that `through` accepts to
        their own gates. By default those are 0-hour CPU steps: such a step ends the moment
        its own gates do, so it holds nothing up by itself."""
        out: list[str] = []
        todo, seen = self.gates(task_id), set()
        while todo:
            g = todo.pop()
            if g in seen:
                continue
            seen.add(g)
            if through(self.tasks[g]):
                todo += self.gates(g)
            else:
                out.append(g)
        return out

    def unblocked(self, task_id: str) -> bool:
        """Nothing but 0-hour CPU steps stands between `task_id` and its start."""
        return not self.open_gates(task_id)

    def _over_share(self, task: Task, others: list[str]) -> bool:
        share = self.pool.shares.get(task.kind)
        held = self.held.get(task.kind, 0)
        if share is None or held == 0 or held + task.gpus <= share * self.pool.total_gpus:
            return False
        # work-conserving: the cap only holds while another kind has a job waiting for GPUs
        return any(self.tasks[t].kind != task.kind and self.tasks[t].gpus > 0 for t in others)

    def _gpu_jobs(self) -> int:
        return sum(1 for t in self.running if self.tasks[t].gpus > 0)

    def _start(self, task: Task, node: int | None) -> None:
        self._ready.discard(task.id)
        self.running[task.id] = node
        if node is not None:
            self.free[node] -= task.gpus
            self.held[task.kind] = self.held.get(task.kind, 0) + task.gpus

    def _release(self, task_id: str) -> Task:
        self.started(task_id)  # a queued job may end (or be cancelled) before anyone saw it run
        task = self.tasks[task_id]
        node = self.running.pop(task_id)
        if node is not None:
            self.free[node] += task.gpus
            self.held[task.kind] -= task.gpus
        self._phase_left[task.phase] -= 1
        return task

    # ------------------------------------------------------------------ events from a driver

    def finish(self, task_id: str) -> list[str]:
        """A running task completed: free its GPUs; returns the dependants that became ready."""
        self._release(task_id)
        self.done.add(task_id)
        return self._unlock(task_id)

    def queue(self, task_id: str, node: int | None) -> None:
        """The driver submitted `task_id` ahead, planned for `node`: it is no longer ready, and
        holds GPUs only once `started`."""
        if task_id in self.running or task_id in self.done or task_id in self.failed:
            raise ValueError(f"{task_id} is already running or over; it cannot be queued")
        self._ready.discard(task_id)
        self.queued[task_id] = node

    def started(self, task_id: str, node: int | None = None) -> None:
        """A queued task began running (on `node`; None: where it was planned)."""
        if task_id not in self.queued:
            return
        planned = self.queued.pop(task_id)
        self._start(self.tasks[task_id], planned if node is None else node)

    def mark_done(self, task_ids: Iterable[str]) -> None:
        """Tasks done before the run started (cached in the store): count them as finished."""
        pending = [t for t in task_ids if t in self.tasks and t not in self.done]
        for tid in sorted(pending, key=lambda t: self.tasks[t].index):
            self._ready.discard(tid)
            self._phase_left[self.tasks[tid].phase] -= 1
            self.done.add(tid)
            self._unlock(tid)

    def fail(self, task_id: str) -> None:
        """A running task failed for good: free its GPUs; its dependants never become ready."""
        self._release(task_id)
        self.failed.add(task_id)

    def readmit(self, task_id: str) -> None:
        """A task submitted ahead whose job never ran (the backend cancelled it in its queue) is
        ready again, holding nothing."""
        if task_id in self.queued:
            self.queued.pop(task_id)
        elif task_id in self.running:
            node = self.running.pop(task_id)
            if node is not None:
                task = self.tasks[task_id]
                self.free[node] += task.gpus
                self.held[task.kind] -= task.gpus
        else:
            raise ValueError(f"{task_id} is neither queued nor running; it cannot be readmitted")
        self._ready.add(task_id)

    def move(self, task_id: str, node: int) -> None:
        """The backend placed a running task on another node than planned: follow reality."""
        old = self.running.get(task_id)
        if old is None or old == node:
            return
        gpus = self.tasks[task_id].gpus
        self.free[old] += gpus
        self.free[node] -= gpus  # may go negative for a moment: then nothing more fits there
        self.running[task_id] = node

    def _unlock(self, task_id: str) -> list[str]:
        woke = []
        for d in self._dependants[task_id]:
            self._missing[d] -= 1
            # a job submitted ahead may already run (or be over) before a 0-hour dep of it is
            # marked done: it is not ready again
            if self._missing[d] == 0 and not (d in self.queued or d in self.running or d in self.done):
                self._ready.add(d)
                woke.append(d)
        return woke

    def clone(self) -> Scheduler:
        """An independent copy of the run's state (the tasks themselves are immutable and shared)."""
        other = copy.copy(self)
        for name in ("free", "held", "running", "queued", "done", "failed", "_missing", "_ready", "_phase_left"):
            setattr(other, name, copy.copy(getattr(self, name)))
        return other


# --------------------------------------------------------------------------- discrete-event driver

@dataclass(frozen=True)
class Planned:
    """A start the scheduler foresees: `placement` in `start_h` hours, once the tasks in
    `behind` (those that ran on its node before it in the forecast) have ended."""

    placement: Placement
    start_h: float
    behind: tuple[str, ...] = ()


def forecast(sched: Scheduler, remaining_h: Mapping[str, float], horizon_h: float) -> list[Planned]:
    """What `sched` will start within the next `horizon_h` hours if each running task ends
    after `remaining_h[task]` (default: its whole estimate) and everything later takes its
    estimate, in start order. Queued tasks start first, on their planned node, as their
    deps end. Works on a clone; `sched` is unchanged.

    A driver submits these ahead (`Scheduler.queue`), so that the backend holds each job
    before its GPUs free up, instead of the driver reacting to every end. `behind` lets it
    keep the foreseen order on each node (the backend's own queue order may differ).
    """
    sim = sched.clone()
    events = [(remaining_h.get(t, sim.tasks[t].hours), sim.tasks[t].index, t) for t in sim.running]
    heapq.heapify(events)
    ended: dict[int, list[str]] = {}  # node -> tasks that ended there within the forecast
    now, out = 0.0, []
    while True:
        for tid in sorted(sim.queued, key=lambda t: -sim.prio[t]):
            node, task = sim.queued[tid], sim.tasks[tid]
            if not sim.unblocked(tid):
                continue
            if task.gpus > 0:
                if node is None:
                    node = next((n for n, f in enumerate(sim.free) if f >= task.gpus), None)
                if node is None or sim.free[node] < task.gpus:
                    continue
            sim.started(tid, node)
            heapq.heappush(events, (now + task.hours, task.index, tid))
        for p in sim.pick():
            heapq.heappush(events, (now + p.task.hours, p.task.index, p.task.id))
            out.append(Planned(p, now, tuple(ended.get(p.node, ())) if p.node is not None else ()))
        if not events or events[0][0] > horizon_h:
            return out
        now = events[0][0]
        while events and events[0][0] <= now:
            tid = heapq.heappop(events)[2]
            node = sim.running.get(tid)
            if node is not None:
                ended.setdefault(node, []).append(tid)
            sim.finish(tid)


@dataclass(frozen=True)
class Row:
    """One task of a schedule."""

    task: str
    stage: str
    kind: str
    gpus: int
    node: int | None
    start_h: float
    end_h: float


@dataclass
class SimResult:
    policy: str
    nodes: int
    gpus_per_node: int
    makespan_h: float
    lower_bound_h: float
    critical_path_h: float
    total_gpu_h: float
    rows: list[Row]
    dependency_bound_h: float = 0.0  # see dependency_bound: what the DAG's shape allows at best

    @property
    def ratio(self) -> float:
        """Makespan / lower bound (1.0 is optimal)."""
        return self.makespan_h / self.lower_bound_h if self.lower_bound_h else 1.0


def lower_bound(tasks: Mapping[str, Task], pool: Pool) -> tuple[float, float, float]:
    """(bound, critical path, total GPU-hours): bound = max(critical path, GPU-hours / pool GPUs).

    Without deps the critical path is the longest job (issue 4's bound).
    """
    crit = max(task_priorities(tasks).values(), default=0.0)
    total = sum(t.gpu_hours for t in tasks.values())
    return max(crit, total / pool.total_gpus), crit, total


def dependency_bound(tasks: Mapping[str, Task], pool: Pool) -> tuple[float, str | None, float]:
    """A tighter lower bound: for every task v, its earliest end plus the GPU-hours of all its
    descendants spread over the whole pool (none of them can start before v ends).

    Returns (bound, the task v that sets it, v's earliest end). Never below the critical path.
    """
    order = sorted(tasks, key=lambda k: tasks[k].index)
    head: dict[str, float] = {}
    for tid in order:  # earliest possible end
        head[tid] = tasks[tid].hours + max((head[d] for d in tasks[tid].deps if d in tasks), default=0.0)
    below: dict[str, set[str]] = {}
    dependants: dict[str, list[str]] = {t: [] for t in tasks}
    for t in tasks.values():
        for d in t.deps:
            if d in tasks:
                dependants[d].append(t.id)
    for tid in reversed(order):  # strict descendants
        acc: set[str] = set()
        for d in dependants[tid]:
            acc.add(d)
            acc |= below[d]
        below[tid] = acc
    best: tuple[float, str | None, float] = (0.0, None, 0.0)
    for tid in order:
        value = head[tid] + sum(tasks[d].gpu_hours for d in below[tid]) / pool.total_gpus
        if value > best[0]:
            best = (value, tid, head[tid])
    return best


def simulate_tasks(tasks: Mapping[str, Task], pool: Pool, policy: Policy = "critical-path") -> SimResult:
    """Run the scheduler on a simulated clock where each task takes its estimated hours."""
    sched = Scheduler(tasks, pool, policy)
    now = 0.0
    events: list[tuple[float, int, str]] = []
    rows: list[Row] = []
    while True:
        for p in sched.pick():
            t = p.task
            heapq.heappush(events, (now + t.hours, t.index, t.id))
            rows.append(Row(t.id, t.stage, t.kind, t.gpus, p.node, now, now + t.hours))
        if not events:
            break
        now = events[0][0]
        while events and events[0][0] <= now:  # everything ending now, before the next pick
            sched.finish(heapq.heappop(events)[2])
    if len(sched.done) != len(tasks):
        stuck = sorted(set(tasks) - sched.done)[:3]
        raise RuntimeError(f"simulation stalled with {len(tasks) - len(sched.done)} task(s) unrun, e.g. {stuck}")
    bound, crit, total = lower_bound(tasks, pool)
    return SimResult(policy, pool.nodes, pool.gpus_per_node, max((r.end_h for r in rows), default=0.0),
                     bound, crit, total, rows, max(bound, dependency_bound(tasks, pool)[0]))


def simulate(plan: Plan, cost: CostModel, nodes: int, gpus_per_node: int, policy: Policy = "critical-path",
             *, stages: Iterable[str] | None = None, max_jobs: int | None = None,
             shares: Mapping[str, float] | None = None) -> SimResult:
    """Predicted schedule of `plan` on nodes x gpus_per_node GPUs under `policy`."""
    pool = Pool(nodes, gpus_per_node, max_jobs, dict(DEFAULT_SHARES if shares is None else shares))
    return simulate_tasks(tasks_from_plan(plan, cost, stages=stages), pool, policy)


def with_overhead(tasks: Mapping[str, Task], overhead_h: float) -> dict[str, Task]:
    """Every estimated GPU job longer by `overhead_h` (queue/start latency, model load, teardown)."""
    if overhead_h < 0:
        raise ValueError("the job overhead cannot be negative")
    return {k: replace(t, hours=t.hours + overhead_h) if t.gpus > 0 and t.hours > 0 else t
            for k, t in tasks.items()}


def simulate_report(plan: Plan, cost: CostModel, nodes: int | None = None,
                    gpus_per_node: int | None = None, job_overhead_h: float = 0.0) -> list[str]:
    """Printable lines of `plan --simulate`: each policy's makespan next to the lower bound.

    The bounds are those of the estimates; `job_overhead_h` lengthens every GPU job of the
    predicted schedules only (e.g. Slurm's ~1 s start latency in a 1 h -> 1 s replay).
    """
    pool = Pool.from_profile(plan.config.cluster, nodes=nodes, gpus_per_node=gpus_per_node)
    if pool.total_gpus <= 0:
        raise ValueError("the cluster profile has no GPUs (gpus_per_node: 0); pass --gpus-per-node")
    tasks = tasks_from_plan(plan, cost)
    bound_h, crit_h, total_h = lower_bound(tasks, pool)
    timed = with_overhead(tasks, job_overhead_h)
    results = {p: replace(r, lower_bound_h=bound_h) for p in POLICIES
               for r in [simulate_tasks(timed, pool, p)]}
    dep_bound, setter, setter_end = dependency_bound(tasks, pool)
    unestimated = sorted({t.stage for t in tasks.values() if not t.estimated})
    lines = [
        f"cluster: {pool.nodes} node(s) x {pool.gpus_per_node} GPUs"
        + (f", at most {pool.max_jobs} GPU jobs" if pool.max_jobs else "")
        + (", fair share " + ", ".join(f"{k} {v:.0%}" for k, v in pool.shares.items()) if pool.shares else ""),
        f"lower bound     {bound_h:8.2f} h  = max(critical path {crit_h:.2f} h, "
        f"{total_h:.1f} GPU-h / {pool.total_gpus} GPUs = {total_h / pool.total_gpus:.2f} h)",
    ]
    if setter is not None and dep_bound > bound_h + 1e-9:
        lines.append(f"DAG-shape bound {dep_bound:8.2f} h  = {setter} ends >= {setter_end:.2f} h, then the work "
                     f"that depends on it needs >= {dep_bound - setter_end:.2f} h on the whole pool "
                     f"({dep_bound / bound_h:.3f} x bound; no schedule beats it)")
    labels = {"critical-path": "predicted (critical-path, readiness)", "fifo": "readiness, plan order",
              "stage-barrier": "stage-barrier (generate -> compress -> train)"}
    if job_overhead_h:
        lines.append(f"every GPU job {job_overhead_h:g} h longer than its estimate (--job-overhead-h)")
    for p, r in results.items():
        lines.append(f"{labels[p]:46s} {r.makespan_h:8.2f} h  {r.ratio:5.3f} x bound")
    if unestimated:
        lines.append(f"no estimate, counted as 0 h: {', '.join(unestimated)}")
    return lines
