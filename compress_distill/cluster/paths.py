"""Where the package finds things outside itself, installed or in a source checkout.

The package reads nothing outside itself at run time except what this module names:

- `models_dir()`: the mini world's model directories (`mini/`, `mini-quick/`). In a source
  checkout, its `models/` (the full mini models are committed there); installed from a
  wheel, `$XDG_CACHE_HOME/compress-distill/models` (built on demand by the `build` nodes
  or `compress-distill build-models`). `COMPRESS_DISTILL_MODELS` overrides both.
- `dev_root()`: where the one-machine job envs (`.venv-vllm`, `.venv-axolotl`, built by
  scripts/setup-*.sh) live: the checkout, else the current directory.
- `source_checkout()`: the checkout itself, for dev-only tools (the dev Slurm cluster).
"""

from __future__ import annotations

import os
from pathlib import Path

MODELS_ENV = "COMPRESS_DISTILL_MODELS"


def source_checkout() -> Path | None:
    """The source checkout this package is imported from (an editable install), or None (a wheel)."""
    root = Path(__file__).resolve().parents[2]  # compress_distill/cluster/paths.py -> the checkout
    return root if (root / "pyproject.toml").is_file() and (root / "compress_distill" / "cli.py").is_file() else None


def models_dir() -> Path:
    if os.environ.get(MODELS_ENV):
        return Path(os.environ[MODELS_ENV])
    checkout = source_checkout()
    if checkout is not None:
        return checkout / "models"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "compress-distill" / "models"


def dev_root() -> Path:
    return source_checkout() or Path.cwd()
