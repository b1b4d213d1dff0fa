"""Resources of one job: cluster profile + job kind (+ overrides) -> cpus, GPUs, memory, time.

`resolve_resources` is the one place the profile's `cluster.jobs[kind]` becomes numbers; the
`#SBATCH` header (flags.sbatch_header) and the backend's request (node.NodeJob.request) both
read the `Resources` it returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from ..config import REQUEUE_SIGNAL_S, ClusterProfile


@dataclass(frozen=True)
class Resources:
    """Everything the `#SBATCH` header of one job says. Field names are the valid override keys."""

    partition: str | None
    account: str | None
    qos: str | None
    time_limit: str
    cpus_per_task: int
    mem: str
    gpus: int
    gpu_type: str | None
    gpu_request: str
    container: str | None
    # GPUs the job must see before it starts its work (0 on a `device: cpu` profile, whose GPUs
    # may be fake): fewer fails the job at once, instead of vLLM or torch quietly using the CPU.
    require_gpus: int = 0
    requeue_signal_s: int = REQUEUE_SIGNAL_S


RESOURCE_KEYS = tuple(f.name for f in fields(Resources))


def resolve_resources(cluster: ClusterProfile, kind: str, gpus: int,
                      overrides: Mapping[str, Any] | None = None) -> Resources:
    """Cluster profile + job kind (+ overrides) -> resources. Unknown override keys are an error."""
    job = cluster.job(kind)
    res = Resources(
        partition=cluster.partition, account=cluster.account, qos=cluster.qos,
        time_limit=job.time_limit, cpus_per_task=job.cpus_for(gpus), mem=job.mem_for(gpus), gpus=gpus,
        gpu_type=cluster.gpu_type, gpu_request=cluster.gpu_request, container=job.container,
        require_gpus=gpus if cluster.job_device == "gpu" else 0,
    )
    overrides = dict(overrides or {})
    bad = sorted(set(overrides) - set(RESOURCE_KEYS))
    if bad:
        raise ValueError(f"unknown resource key(s) {', '.join(map(repr, bad))}; valid: {', '.join(RESOURCE_KEYS)}")
    res = replace(res, **overrides)
    if res.gpu_request not in ("gpus-per-node", "gres"):
        raise ValueError(f"gpu_request must be 'gpus-per-node' or 'gres', got {res.gpu_request!r}")
    return res
