"""The job backend a config asks for (`cluster.backend`): not Prefect-specific, any driver uses it."""

from __future__ import annotations

from ..config import StudyConfig
from .base import JobBackend


def make_backend(cfg: StudyConfig) -> JobBackend | None:
    if cfg.cluster.backend == "local":
        from .local import LocalBackend  # local: only the chosen backend's module is imported

        return LocalBackend(max_workers=cfg.cluster.local_workers)
    from .slurm import SlurmBackend

    return SlurmBackend.from_profile(cfg.cluster)
