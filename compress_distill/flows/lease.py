"""One run per grid and store: a lease in the artifact store, whatever started the run.

`grid_lease` takes the artifact store's own lease `<store>/.runs/.locks/grid-<config>.lease` for
the whole of a (non-dry) run, whatever started it (any deployment, a worker, the CLI); a second
run of the same grid on the same store waits for it, and says who holds it. It is the store's
O_EXCL lease, renewed by its holder: a holder that was killed on this host is seen dead at once,
one on another host after the TTL. It is not a Prefect concurrency limit on purpose: without a
server's services (ephemeral mode, which a CLI `run` uses) nothing ever frees a killed holder's
slot, and the next run would hang.

GPUs are no Prefect limit either: the flow's scheduler admits GPU jobs (flows/grid.py), and
between runs Slurm arbitrates (it never over-allocates GPUs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator

from ..store import LEASE_TTL_S, ArtifactStore, LeaseTimeout

log = logging.getLogger(__name__)
GRID_LOCK_STAGE = ".runs"  # the lease file lives in <store>/.runs/.locks/


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "default"


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
