"""Where a stage's model is served: one code path for the cluster and for one machine.

On the cluster the vLLM job template starts `vllm serve` and exports
CD_SERVER_URL (and CD_SERVED_MODEL) before it runs
the node; the stage only talks to that endpoint. On one machine nothing is
exported, so the stage starts the project's local OpenAI-compatible server
for a local model directory (tiny mini-world models) and tears it down after.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .cluster.paths import models_dir
from .model_refs import mini_ref

SERVER_URL_ENV = "CD_SERVER_URL"
SERVED_MODEL_ENV = "CD_SERVED_MODEL"
API_KEY_ENV = "COMPRESS_DISTILL_API_KEY"  # the NAME of the variable is configuration; its value never is


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    model: str  # the `model` field the server expects
    local_dir: Path | None = None  # set when the model is a local directory (tokenizer available here)


QUICK_ROOT = models_dir() / "mini-quick"  # built on demand, not shipped


def mini_root(quick: bool) -> Path:
    from .miniworld.recipes import DEFAULT_ROOT

    return QUICK_ROOT if quick else DEFAULT_ROOT


def mini_model_dir(ref: str) -> Path | None:
    """Where the model of a mini-world ref's CURRENT recipe is (or will be) built; None: not a mini ref.
    A job script names this path before the upstream `build` node has built it."""
    mini = mini_ref(ref)
    if mini is None:
        return None
    from .miniworld.recipes import default_recipes, dir_name, parse_ref

    name = parse_ref(mini[0])
    return mini_root(mini[1]) / dir_name(name, default_recipes(mini[1])[name])


def resolve_model_dir(ref: str) -> Path:
    """A mini-world ref -> the model built from its current recipe; an existing directory -> itself."""
    mini = mini_ref(ref)
    if mini is not None:
        from .miniworld.recipes import resolve_model

        return Path(resolve_model(mini[0], root=mini_root(mini[1]), quick=mini[1]))
    path = Path(ref)
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(
        f"model {ref!r} is neither a local model directory nor a mini: model; a hub model must be served by "
        f"the cluster's vLLM job, which sets {SERVER_URL_ENV}")


def tokenizer_ref(ref: str) -> str:
    """What `tokenization.load_tokenizer` should load for a model ref: mini models resolve locally."""
    return str(resolve_model_dir(ref)) if mini_ref(ref) else ref


@contextlib.contextmanager
def model_endpoint(ref: str, *, reasoning_split: bool = False, log_path: Path | None = None) -> Iterator[Endpoint]:
    url = os.environ.get(SERVER_URL_ENV)
    if url:
        yield Endpoint(url, os.environ.get(SERVED_MODEL_ENV, ref))
        return
    from .generation.local_server import serve

    model_dir = resolve_model_dir(ref)
    extra = ["--reasoning-split"] if reasoning_split else []
    with serve(model_dir, extra_args=extra, log_path=log_path) as base_url:
        yield Endpoint(base_url, str(model_dir), model_dir)


def api_key_env() -> str | None:
    return API_KEY_ENV if os.environ.get(API_KEY_ENV) else None
