"""Model refs: which models the study builds itself, as data for the plan. Pure.

A `mini:NAME` (or CI-sized `mini-quick:NAME`) ref names a mini-world model built from a
recipe; any other ref is a hub id or a directory, which nothing here builds. For a built
ref the plan gets a `ModelBuild`: the recipe's key (it enters the key of every node that
uses the model) and the refs whose builds it starts from (a declared dependency: the plan
orders build nodes by it, never by their names). No I/O, no torch, no servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

MINI_PREFIXES = {"mini:": False, "mini-quick:": True}  # ref prefix -> quick (CI-sized) recipes


def mini_ref(ref: str) -> tuple[str, bool] | None:
    """`mini:teacher` -> ("mini:teacher", False); `mini-quick:teacher` -> ("mini:teacher", True)."""
    for prefix, quick in MINI_PREFIXES.items():
        if ref.startswith(prefix):
            return "mini:" + ref[len(prefix):], quick
    return None


@dataclass(frozen=True)
class ModelBuild:
    """A model the study builds: its ref, its recipe key and the refs whose built weights it starts from."""

    ref: str
    recipe_key: str
    after: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The build node's name (`mini:teacher` -> `mini.teacher`)."""
        return self.ref.replace(":", ".")


@cache
def model_build(ref: str) -> ModelBuild | None:
    """The build of a mini-world ref (None for a hub id or a directory)."""
    mini = mini_ref(ref)
    if mini is None:
        return None
    from .miniworld.recipes import model_key, starts_from

    canonical, quick = mini
    prefix = ref[: len(ref) - len(canonical.removeprefix("mini:"))]  # keep the ref's own prefix (mini-quick:)
    after = tuple(prefix + dep.removeprefix("mini:") for dep in starts_from(canonical, quick))
    return ModelBuild(ref, model_key(canonical, quick), after)
