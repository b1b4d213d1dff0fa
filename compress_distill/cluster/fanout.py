"""Shard-level CPU fan-out: map a function over shards with a pluggable executor.

CPU work that splits into independent shards (answer verification, tokenization for
truncation, scoring) goes through `map_shards(fn, shards, executor)`. The executor is any
`concurrent.futures.Executor`: none (in-process), a process pool, or a Dask cluster's
(`dask_executor`): a `LocalCluster` on one machine, or a dask-jobqueue `SLURMCluster`
whose workers are CPU-only Slurm jobs. The Prefect way to the same clusters is
prefect-dask's `DaskTaskRunner` (flows/cpu_fanout.py); this module imports no Prefect.

GPU work never runs as a Dask worker: a multi-GPU job (vLLM, training) needs the whole
allocation for one process group, its own time limit and requeue, which the job backend
gives it. `slurm_cluster_kwargs` refuses GPU requests for that reason.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Literal, TypeVar

from ..traces.extraction import Verdict, verify_batch

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
ClusterKind = Literal["local", "slurm"]
_GPU_WORDS = ("gres", "gpu")
# Where a SLURMCluster's worker jobs write their stdout/stderr (`<job_name>-<job id>.out/.err`) unless
# the caller names a directory (a store's `.logs/dask/` when there is one). Without it, dask-jobqueue
# leaves sbatch's default, `slurm-<id>.out` in whatever directory the cluster was started from. Under
# $HOME: on a real cluster the compute nodes see it (sbatch opens the files there), /tmp they would not.
DASK_LOG_DIR = Path.home() / ".cache" / "compress-distill" / "dask-logs"


def shards(items: Sequence[T], size: int) -> list[list[T]]:
    """Consecutive shards of at most `size` items (order kept)."""
    if size < 1:
        raise ValueError(f"shard size must be >= 1, got {size}")
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def map_shards(fn: Callable[[list[T]], R], parts: Sequence[list[T]], executor: Executor | None = None) -> list[R]:
    """fn over every shard, results in shard order; in-process when `executor` is None."""
    if executor is None:
        return [fn(p) for p in parts]
    return list(executor.map(fn, parts))


# Dask worker processes are daemonic by default, and a daemonic process cannot start the
# 1-process pool that verify_shard needs; these make them ordinary processes.
NON_DAEMON_CONFIG = {"distributed.worker.daemon": False}
NON_DAEMON_PROLOGUE = "export DASK_DISTRIBUTED__WORKER__DAEMON=False"


def verify_shard(records: list[Mapping[str, Any]], expect_think: bool = False) -> list[Verdict]:
    """One shard of answer verification (a 1-process pool inside, so Math-Verify's signal
    timeouts work even when a Dask worker thread calls this)."""
    return verify_batch(records, workers=1, expect_think=expect_think)


def verify_sharded(records: Sequence[Mapping[str, Any]], *, shard_size: int = 2000, expect_think: bool = False,
                   executor: Executor | None = None) -> list[Verdict]:
    """verify_batch over shards on `executor`; verdicts in record order."""
    parts = shards(list(records), shard_size)
    fn = _VerifyShard(expect_think)
    return [v for part in map_shards(fn, parts, executor) for v in part]


class _VerifyShard:
    """Picklable (a lambda is not, and Dask ships the function to its workers)."""

    def __init__(self, expect_think: bool):
        self.expect_think = expect_think

    def __call__(self, records: list[Mapping[str, Any]]) -> list[Verdict]:
        return verify_shard(records, self.expect_think)


def slurm_cluster_kwargs(*, cores: int = 1, memory: str = "2GB", partition: str | None = None,
                         walltime: str = "00:30:00", account: str | None = None, interface: str | None = None,
                         job_extra_directives: Sequence[str] = (), python: str | None = None,
                         log_directory: str | Path | None = None) -> dict[str, Any]:
    """Keyword arguments of dask_jobqueue.SLURMCluster for CPU-only workers (also what
    DaskTaskRunner's `cluster_kwargs` takes). One Slurm job = one single-threaded worker process;
    its logs go to `log_directory` (default DASK_LOG_DIR), never the current directory."""
    bad = [d for d in job_extra_directives if any(w in d.lower() for w in _GPU_WORDS)]
    if bad:
        raise ValueError(f"Dask workers are CPU-only; GPU jobs go through the job backend, not Dask: {bad}")
    kw: dict[str, Any] = {
        "cores": cores, "processes": 1, "memory": memory, "walltime": walltime,
        "python": python or sys.executable, "job_extra_directives": list(job_extra_directives),
        "job_name": "cd-dask-cpu", "job_script_prologue": [NON_DAEMON_PROLOGUE],
        "log_directory": str(Path(log_directory or DASK_LOG_DIR).absolute()),  # made by dask-jobqueue
    }
    if partition:
        kw["queue"] = partition
    if account:
        kw["account"] = account
    if interface:
        kw["interface"] = interface
    return kw


@contextlib.contextmanager
def dask_executor(kind: ClusterKind = "local", *, workers: int = 2, start_timeout_s: float = 180,
                  **slurm_kwargs: Any) -> Iterator[Executor]:
    """A Dask cluster as a concurrent.futures Executor; closed (Slurm jobs cancelled) on exit.

    kind="local": a LocalCluster of `workers` single-threaded processes. kind="slurm": a
    SLURMCluster of `workers` CPU jobs (`slurm_kwargs` go to `slurm_cluster_kwargs`).
    """
    import dask
    from distributed import Client, LocalCluster

    cluster: Any
    if kind == "local":
        with dask.config.set(NON_DAEMON_CONFIG):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    elif kind == "slurm":
        from dask_jobqueue import SLURMCluster

        cluster = SLURMCluster(**slurm_cluster_kwargs(**slurm_kwargs), scheduler_options={"dashboard_address": None})
        cluster.scale(jobs=workers)
    else:
        raise ValueError(f"kind must be 'local' or 'slurm', got {kind!r}")
    try:
        with Client(cluster) as client:
            client.wait_for_workers(workers, timeout=start_timeout_s)
            log.info("dask %s cluster with %d worker(s): %s", kind, workers, client.dashboard_link or client)
            yield client.get_executor()
    finally:
        cluster.close()
