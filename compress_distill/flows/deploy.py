"""`compress-distill serve`: register the grid deployments and execute their runs (Prefect serve).

Deployments (all of the one `grid` flow, so they share its parameter form in the UI):
    grid/full          the paper config
    grid/mini          the mini config (optionally narrowed with --mini-select)
    grid/nightly       the paper config on a cron schedule (default 02:00, --timezone)
    grid/retry-failed  retry_of="last": re-runs the newest failed grid run's parameters;
                       the store skips every node that is done, so only failed cells run
The serve process must reach a Prefect server (PREFECT_API_URL); see deployments/README.md.
The work-pool alternative is deployments/prefect.yaml.
"""

from __future__ import annotations

import json
import os
import sys
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType

from .grid import grid
from .params import GridParams

DEFAULT_CRON = "0 2 * * *"
TIMEZONE_ENV = "COMPRESS_DISTILL_TIMEZONE"
TAGS = ["compress-distill"]


@dataclass(frozen=True)
class ServeOptions:
    paper: Path = Path("configs/paper.yaml")
    mini: Path = Path("configs/mini.yaml")
    nightly: Path | None = None           # default: the paper config
    store: Path | None = None             # default: each config's store_root (relative to the serve cwd)
    cron: str = DEFAULT_CRON
    timezone: str | None = None           # default: $COMPRESS_DISTILL_TIMEZONE, else UTC
    mini_select: dict[str, str] = field(default_factory=dict)
    limit: int = 4                        # flow runs this process executes at once

    @property
    def tz(self) -> str:
        return self.timezone or os.environ.get(TIMEZONE_ENV) or "UTC"


def _grid_params(config: Path | None, store: Path | None, **extra: Any) -> dict[str, Any]:
    # Absolute paths: a flow run's process need not start in the serve process's directory.
    params = GridParams(config_path=str(config.resolve()) if config else None,
                        store_root=str(store.resolve()) if store else None, **extra)
    return {"params": params.model_dump(mode="json")}


def deployment_specs(opts: ServeOptions) -> list[dict[str, Any]]:
    """Name, description, parameters and schedule of each deployment (plain data; `--list` prints it)."""
    try:
        zoneinfo.ZoneInfo(opts.tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {opts.tz!r}; use an IANA name such as Europe/Paris or UTC") from None
    nightly = opts.nightly or opts.paper
    return [
        {"name": "full", "description": f"the full study ({opts.paper})",
         "parameters": _grid_params(opts.paper, opts.store)},
        {"name": "mini", "description": f"the CPU-scale mini grid ({opts.mini})",
         "parameters": _grid_params(opts.mini, opts.store, select=opts.mini_select)},
        {"name": "nightly", "description": f"nightly re-run of {nightly}: with nothing changed it submits no job",
         "parameters": _grid_params(nightly, opts.store), "cron": opts.cron, "timezone": opts.tz},
        {"name": "retry-failed",
         "description": "re-run the newest failed grid run (or retry_of=<flow run id>): only its failed cells run",
         "parameters": _grid_params(None, None, retry_of="last")},
    ]


def build_deployments(opts: ServeOptions) -> list[RunnerDeployment]:
    out: list[RunnerDeployment] = []
    for spec in deployment_specs(opts):
        schedules = [Cron(spec["cron"], timezone=spec["timezone"])] if "cron" in spec else None
        dep = grid.to_deployment(
            name=spec["name"], description=spec["description"], parameters=spec["parameters"],
            schedules=schedules, tags=TAGS, entrypoint_type=EntrypointType.MODULE_PATH)
        assert isinstance(dep, RunnerDeployment)  # to_deployment is sync-compatible: sync here
        out.append(dep)
    return out


def serve_command(opts: ServeOptions, list_only: bool = False) -> int:
    """Print the deployments (`list_only`) or register them and serve until interrupted."""
    try:
        specs = deployment_specs(opts)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if list_only:
        sys.stdout.write(json.dumps([{**s, "deployment": f"grid/{s['name']}"} for s in specs], indent=2) + "\n")
        return 0
    from prefect import serve
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print("error: serve needs a running Prefect server; start one with "
              "`prefect server start --host 127.0.0.1` and set PREFECT_API_URL=http://127.0.0.1:4200/api "
              "(see deployments/README.md)", file=sys.stderr)
        return 2
    serve(*build_deployments(opts), limit=opts.limit)  # blocks; Ctrl-C pauses the schedules and exits
    return 0
