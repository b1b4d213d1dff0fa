"""Which plan nodes a run touches: the selected cells, everything upstream of them, and the report."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping

from .plan import Plan


def nodes_for_selection(plan: Plan, select: Mapping[str, str]) -> list[str]:
    """Node ids (in topological order) needed for the cells matching `select` (axis -> glob).

    An empty selection is the whole plan. The report is kept only when every cell is selected,
    because its key covers all cells.
    """
    if not select:
        return list(plan.nodes)
    cells = {c.name for c in plan.select(select)}
    if not cells:
        raise ValueError(f"selection {dict(select)} matches no cell of {plan.config.name!r}")
    wanted: set[str] = set()
    stack = [nid for nid, n in plan.nodes.items() if n.cell is not None and n.cell.name in cells]
    while stack:
        nid = stack.pop()
        if nid not in wanted:
            wanted.add(nid)
            stack.extend(plan.nodes[nid].deps)
    if len(cells) == len(plan.cells):
        wanted.update(nid for nid, n in plan.nodes.items() if n.stage == "report")
    return [nid for nid in plan.nodes if nid in wanted]


def expand_force(plan: Plan, patterns: Iterable[str]) -> frozenset[str]:
    """Node-id globs -> node ids. An unknown pattern is an error, not a silent no-op."""
    out: set[str] = set()
    for pat in patterns:
        hits = [nid for nid in plan.nodes if fnmatch.fnmatchcase(nid, pat)]
        if not hits:
            raise ValueError(f"--force {pat!r} matches no node; node ids look like 'train/{plan.cells[0].name}'")
        out.update(hits)
    return frozenset(out)
