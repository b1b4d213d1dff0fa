"""Entry point of deployments/prefect.yaml: `prefect deploy` loads flows from a file path, and
cannot load a module with relative imports that way, so this file re-exports the flow."""

from compress_distill.flows.grid import grid

__all__ = ["grid"]
