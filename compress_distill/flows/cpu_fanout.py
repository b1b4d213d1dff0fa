"""CPU fan-out through Prefect: shard tasks on prefect-dask's DaskTaskRunner.

`verify_records` maps one task per shard of answer verification (fanout.verify_shard).
Its task runner picks where the shards run: `dask_task_runner("local")` is a Dask
LocalCluster on this machine, `dask_task_runner("slurm", ...)` a dask-jobqueue
SLURMCluster whose workers are CPU-only Slurm jobs (on the dev cluster:
`partition="debug", interface="lo"`). One task per shard, not per record: a Prefect
task costs 6-40 ms. GPU jobs never run here (fanout.slurm_cluster_kwargs refuses GPUs).

    verify_on_dask(records, kind="slurm", workers=2, partition="debug", interface="lo")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect import flow, task, unmapped
from prefect.cache_policies import NONE
from prefect_dask import DaskTaskRunner

from ..cluster.fanout import NON_DAEMON_CONFIG, ClusterKind, shards, slurm_cluster_kwargs, verify_shard
from ..traces.extraction import Verdict


@task(name="verify-shard", cache_policy=NONE)
def verify_shard_task(records: list[Mapping[str, Any]], expect_think: bool = False) -> list[Verdict]:
    return verify_shard(records, expect_think)


@flow(name="cpu-fanout-verify")
def verify_records(records: list[dict[str, Any]], shard_size: int = 2000, expect_think: bool = False) -> list[Verdict]:
    futures = verify_shard_task.map(shards(records, shard_size), expect_think=unmapped(expect_think))
    return [v for f in futures for v in f.result()]  # every future resolved: a failed shard fails the flow


def dask_task_runner(kind: ClusterKind = "local", *, workers: int = 2, **slurm_kwargs: Any) -> DaskTaskRunner:
    """A DaskTaskRunner on a LocalCluster or on a SLURMCluster of `workers` CPU jobs."""
    if kind == "local":
        return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                              cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    if kind == "slurm":
        return DaskTaskRunner(cluster_class="dask_jobqueue.SLURMCluster",
                              cluster_kwargs={**slurm_cluster_kwargs(**slurm_kwargs), "n_workers": workers,
                                              "scheduler_options": {"dashboard_address": None}})
    raise ValueError(f"kind must be 'local' or 'slurm', got {kind!r}")


def verify_on_dask(records: Sequence[Mapping[str, Any]], *, kind: ClusterKind = "local", workers: int = 2,
                   shard_size: int = 2000, expect_think: bool = False, **slurm_kwargs: Any) -> list[Verdict]:
    import dask

    runner = dask_task_runner(kind, workers=workers, **slurm_kwargs)
    run = verify_records.with_options(task_runner=runner)  # type: ignore[arg-type]
    with dask.config.set(NON_DAEMON_CONFIG):  # the LocalCluster is made when the flow starts
        return run([dict(r) for r in records], shard_size=shard_size, expect_think=expect_think)
