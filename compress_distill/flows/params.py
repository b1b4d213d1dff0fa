"""The grid flow's parameters (`GridParams`, the form shown in the Prefect UI) and the config they name.

Its own module, with no Prefect import, so that the flow (grid.py), its helpers (retry.py,
cancel.py, deploy.py) and the CLI share it without importing one another.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..config import StudyConfig, load_config, parse_config
from ..scheduler import POLICIES, Policy


class GridParams(BaseModel):
    """Parameters of a grid run (the form shown in the Prefect UI)."""

    model_config = ConfigDict(extra="forbid")

    config_path: str | None = Field("configs/mini.yaml", description="YAML config file")
    config: dict[str, Any] | None = Field(None, description="inline config (overrides config_path)")
    select: dict[str, str] = Field(default_factory=dict,
                                   description="cell filter: axis -> glob, axes teacher/student/method/data")
    dry_run: bool = False
    policy: Policy = Field("critical-path", description=f"admission policy of the scheduler: {', '.join(POLICIES)}")
    force: list[str] = Field(default_factory=list, description="node-id globs to re-run even if cached")
    store_root: str | None = Field(None, description="artifact store root (default: config store_root)")
    retry_of: str | None = Field(
        None, description="retry a run: its flow run id, or 'last' (newest failed/crashed/cancelled grid run). "
                          "Its parameters are used (dry_run here still applies); the store skips what is done.")


def load_params_config(params: GridParams) -> StudyConfig:
    if params.config is not None:
        return parse_config(params.config, "<inline config>")
    if not params.config_path:
        raise ValueError("give config_path or config")
    return load_config(params.config_path)
