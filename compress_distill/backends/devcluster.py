"""Finding and starting the project's development Slurm cluster (slurm/dev-cluster/start.sh).

Used by the tests, CI and bench/ so that they start the same cluster the same way.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from ..cluster.paths import source_checkout
from .slurm_cli import check, run_command

log = logging.getLogger(__name__)

# A dev tool: the scripts are in the source checkout only (not in the wheel).
DEV_CLUSTER_DIR = (source_checkout() or Path("/nonexistent")) / "slurm" / "dev-cluster"


class DevClusterUnavailable(RuntimeError):
    """The dev cluster is down and cannot be started here (not root, no script, start failed)."""


def is_up(timeout: float = 20.0) -> bool:
    """True when every daemon runs and all nodes are usable (`start.sh --check`, about 0.1 s)."""
    script = DEV_CLUSTER_DIR / "start.sh"
    if not script.exists():
        return False
    try:
        return subprocess.run([str(script), "--check"], capture_output=True, timeout=timeout,
                              check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def ensure_dev_cluster(timeout: float = 900.0) -> None:
    """Start the dev cluster unless it is up. The first start installs packages (about 30 s
    with a warm mirror); later starts take under 10 s. Raises DevClusterUnavailable."""
    if is_up():
        return
    script = DEV_CLUSTER_DIR / "start.sh"
    if not script.exists():
        raise DevClusterUnavailable("the dev Slurm cluster scripts (slurm/dev-cluster/) come with the source "
                                    "checkout; this compress_distill is installed without one" if
                                    source_checkout() is None else f"{script} not found")
    if os.geteuid() != 0:
        raise DevClusterUnavailable("the dev Slurm cluster is not running and starting it needs root "
                                    f"(run: sudo {script})")
    log.info("starting the dev Slurm cluster: %s", script)
    try:
        res = subprocess.run([str(script)], capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise DevClusterUnavailable(f"{script} did not finish within {timeout:g} s") from e
    if res.returncode != 0:
        raise DevClusterUnavailable(f"{script} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")


def partition_nodes(partition: str = "debug") -> list[str]:
    """The partition's node names, sorted (node1, node2, ...)."""
    out = check(run_command(["sinfo", "-h", "-N", "-p", partition, "-o", "%N"], 20)).stdout.split()
    return sorted(dict.fromkeys(out))
