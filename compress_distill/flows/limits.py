"""Resource limits of a grid run: one run per grid (a store lease) and GPU pools (Prefect limits).

One run per grid. `grid_lease` takes the artifact store's own lease
`<store>/.runs/.locks/grid-<config>.lease` for the whole of a (non-dry) run, whatever started
it (any deployment, a worker, the CLI); a second run of the same grid on the same store waits
for it, and says who holds it. It is the store's O_EXCL lease, renewed by its holder: a holder
that was killed on this host is seen dead at once, one on another host after the TTL. It is not
a Prefect concurrency limit on purpose: without a server's services (ephemeral mode, which a
CLI `run` uses) nothing ever frees a killed holder's slot, and the next run would hang.

GPU pools. Prefect global concurrency limits, per pool of the cluster profile:
- `<pool>`       limit = nodes x gpus_per_node; a GPU job occupies its GPU count;
- `<pool>-jobs`  limit = max_concurrent_gpu_jobs (when the profile sets it); a GPU job occupies 1.
A pool is named after backend, partition and GPU type, so two studies on the same partition
share it. Limits are upserted at every start (serve and flow), so they follow the profile.
They are enforced only against a real `prefect server` (PREFECT_API_URL set): its repossessor
service frees the slots of a killed holder once their lease expires (LEASE_S). In ephemeral
mode there is no such service, a crashed run's slots would be held forever, so GPU limits are
skipped there (Slurm still never over-allocates GPUs; the limit is about queue pressure).
The store's per-node leases still guarantee that no step runs twice; these limits are about resources.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from prefect import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists
from prefect.settings import PREFECT_API_URL

from ..config import ClusterProfile
from ..store import LEASE_TTL_S, ArtifactStore, LeaseTimeout

log = logging.getLogger(__name__)
# Prefect renews a held lease in the background; a crashed holder frees its slots after this.
LEASE_S = 60.0
GRID_LOCK_STAGE = ".runs"  # the lease file lives in <store>/.runs/.locks/


@dataclass(frozen=True)
class LimitSpec:
    name: str
    limit: int


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "default"


def server_limits_enabled() -> bool:
    """True when runs talk to a real Prefect server (whose services free a dead holder's slots)."""
    return bool(PREFECT_API_URL.value())


def pool_name(cluster: ClusterProfile) -> str:
    parts = ["gpu", cluster.backend, cluster.partition or "default"] + ([cluster.gpu_type] if cluster.gpu_type else [])
    return _slug("-".join(parts))


def gpu_limit_specs(cluster: ClusterProfile) -> list[LimitSpec]:
    """The limits of the profile's GPU pool; none when it has no GPUs (e.g. the local mini world)."""
    total = cluster.nodes * cluster.gpus_per_node
    if total <= 0:
        return []
    specs = [LimitSpec(pool_name(cluster), total)]
    if cluster.max_concurrent_gpu_jobs:
        specs.append(LimitSpec(f"{pool_name(cluster)}-jobs", cluster.max_concurrent_gpu_jobs))
    return specs


def ensure_limits(specs: list[LimitSpec]) -> None:
    """Create or update each limit (idempotent; tolerates a concurrent creator)."""
    if not specs:
        return
    with get_client(sync_client=True) as client:
        for spec in specs:
            for _ in range(3):
                try:
                    client.upsert_global_concurrency_limit_by_name(spec.name, spec.limit)
                    break
                except ObjectAlreadyExists:  # created by another run between our read and create
                    continue


@contextlib.contextmanager
def gpu_slots(cluster: ClusterProfile, gpus: int) -> Iterator[None]:
    """Hold `gpus` slots of the pool (and one job slot) while a GPU job runs."""
    specs = gpu_limit_specs(cluster) if gpus > 0 else []
    with contextlib.ExitStack() as stack:
        # Always the same order (jobs, then GPUs), so two waiters never hold each other's slots.
        for spec in sorted(specs, key=lambda s: not s.name.endswith("-jobs")):
            occupy = 1 if spec.name.endswith("-jobs") else min(gpus, spec.limit)
            stack.enter_context(concurrency(spec.name, occupy=occupy, lease_duration=LEASE_S, strict=True,
                                            raise_on_lease_renewal_failure=False))
        yield


def grid_lock_name(config_name: str) -> str:
    return f"grid-{_slug(config_name)}"


def grid_lock_path(store: ArtifactStore, config_name: str) -> str:
    return str(store.root / GRID_LOCK_STAGE / ".locks" / f"{grid_lock_name(config_name)}.lease")


@contextlib.contextmanager
def grid_lease(store: ArtifactStore, config_name: str, logger: logging.Logger | logging.LoggerAdapter | None = None,
               timeout_s: float = 7 * 24 * 3600) -> Iterator[None]:
    """Hold the grid's single run slot on this store; wait (and say so) while another run has it."""
    ttl = float(os.environ.get("COMPRESS_DISTILL_LEASE_TTL_S", LEASE_TTL_S))
    name, key = "grid", _slug(config_name)
    with contextlib.ExitStack() as stack:
        try:
            # a short first try: a dead holder's lease is broken, then taken, without a warning
            stack.enter_context(store.lease(GRID_LOCK_STAGE, name, key, timeout_s=1.0, ttl_s=ttl))
        except LeaseTimeout as err:
            (logger or log).warning("another run of grid %s holds %s (%s); waiting for it to end", config_name,
                                    grid_lock_path(store, config_name), err)
            stack.enter_context(store.lease(GRID_LOCK_STAGE, name, key, timeout_s=timeout_s, ttl_s=ttl))
        yield
