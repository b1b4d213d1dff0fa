"""The job backend a config asks for (`cluster.backend`): not Prefect-specific, any driver uses it."""

from __future__ import annotations

from ..config import StudyConfig
from .base import JobBackend


def make_backend(cfg: StudyConfig) -> JobBackend | None:
    if cfg.cluster.backend == "local":
        from .local import LocalBackend  # local: only the chosen backend's module is imported

        return LocalBackend(max_workers=cfg.cluster.local_workers)
    from .slurm import SlurmBackend

    # adopt_existing=False: the runner looks for a live job of the node's name before it submits
    # (runner._adoptable, adoption before sweep); a second squeue in submit() would only add latency.
    # The backend still looks before it retries a failed sbatch (that one may have gone through).
    return SlurmBackend.from_profile(cfg.cluster, adopt_existing=False)
