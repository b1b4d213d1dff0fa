"""Shard-level CPU fan-out (cluster/fanout.py, flows/cpu_fanout.py): in-process, on a local Dask
cluster, and on a dask-jobqueue SLURMCluster of the dev cluster (also via prefect-dask)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from compress_distill.cluster.fanout import (
    DASK_LOG_DIR,
    dask_executor,
    map_shards,
    shards,
    slurm_cluster_kwargs,
    verify_sharded,
)
from compress_distill.traces.extraction import verify_batch

from .conftest import need_dev_cluster


def records(n: int = 60) -> list[dict]:
    out = []
    for i in range(n):
        good = i % 3 != 0
        out.append({"response": f"<think>add</think> The answer is {i + (0 if good else 1)}.", "answer": str(i),
                    "answer_type": "numeric"})
    out.append({"response": "<think>x</think> \\boxed{\\frac{1}{2}}", "answer": "0.5", "answer_type": "numeric"})
    return out


def _slurm_env(_: list[int]) -> str:
    return os.environ.get("SLURM_JOB_ID", "")


def test_shards_keep_order_and_sizes() -> None:
    assert shards(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert shards([], 3) == []
    with pytest.raises(ValueError):
        shards([1], 0)
    with ThreadPoolExecutor(2) as ex:
        assert map_shards(sum, shards(list(range(10)), 4), ex) == [6, 22, 17]
    assert map_shards(len, [[1], [2, 3]]) == [1, 2]


def test_gpu_requests_are_refused_for_dask_workers() -> None:
    with pytest.raises(ValueError, match="CPU-only"):
        slurm_cluster_kwargs(job_extra_directives=["--gres=gpu:8"])
    kw = slurm_cluster_kwargs(partition="debug", interface="lo")
    assert kw["queue"] == "debug" and kw["processes"] == 1 and kw["job_extra_directives"] == []


def test_dask_worker_logs_go_to_the_log_directory_not_the_cwd(tmp_path: Path) -> None:
    from dask_jobqueue.slurm import SLURMJob

    assert slurm_cluster_kwargs()["log_directory"] == str(DASK_LOG_DIR)
    kw = slurm_cluster_kwargs(partition="debug", log_directory=tmp_path / "dask")
    script = SLURMJob(scheduler="tcp://127.0.0.1:8786", name="w", **kw).job_script()
    assert f"#SBATCH -o {tmp_path}/dask/cd-dask-cpu-%J.out" in script  # else sbatch writes ./slurm-<id>.out
    assert f"#SBATCH -e {tmp_path}/dask/cd-dask-cpu-%J.err" in script


@pytest.mark.slow
def test_verify_sharded_on_local_dask_cluster() -> None:
    recs = records()
    expected = verify_batch(recs, workers=1)
    assert sum(v.correct for v in expected) == 41  # 40 of 60 + the fraction
    with dask_executor("local", workers=2) as ex:
        assert verify_sharded(recs, shard_size=16, executor=ex) == expected


@pytest.fixture(scope="module")
def cluster() -> None:
    need_dev_cluster()


@pytest.mark.slurm
@pytest.mark.slow
def test_verify_sharded_on_slurm_cluster_workers_are_slurm_jobs(cluster: None) -> None:
    recs = records()
    with dask_executor("slurm", workers=2, partition="debug", interface="lo", memory="1GB") as ex:
        job_ids = set(map_shards(_slurm_env, [[i] for i in range(8)], ex))
        assert verify_sharded(recs, shard_size=16, executor=ex) == verify_batch(recs, workers=1)
    assert job_ids and all(j.isdigit() for j in job_ids)  # each shard ran inside a Slurm job


@pytest.mark.slurm
@pytest.mark.slow
def test_prefect_dask_task_runner_on_slurm_cluster(cluster: None) -> None:
    from compress_distill.flows.cpu_fanout import verify_on_dask

    recs = records()
    got = verify_on_dask(recs, kind="slurm", workers=2, shard_size=16, partition="debug", interface="lo",
                         memory="1GB")
    assert got == verify_batch(recs, workers=1)
