"""Shared fixtures: a private Prefect home, and the repo paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture(scope="session", autouse=True)
def _prefect_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")


def need_dev_cluster() -> None:
    """Start the dev Slurm cluster unless it runs; skip the test when it cannot (e.g. not root)."""
    from compress_distill.backends.devcluster import DevClusterUnavailable, ensure_dev_cluster

    try:
        ensure_dev_cluster()
    except DevClusterUnavailable as err:
        pytest.skip(f"dev Slurm cluster unavailable: {err}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the Prefect temporary API servers that in-process flow runs started, while the output
    streams are open: left to Prefect's atexit hook, they log to closed streams, and a "Logging
    error" traceback follows the suite's summary line."""
    try:
        from prefect.server.api.server import SubprocessASGIServer
    except ImportError:
        return
    for server in list(getattr(SubprocessASGIServer, "_instances", {}).values()):
        server.stop()
