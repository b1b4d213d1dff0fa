"""Cache status of plan nodes against the store, and `explain`: why a node will (re-)run."""

from __future__ import annotations

from .plan import Plan
from .store import ArtifactStore, NodeStatus, diff_identity


def corrupt_reason(node_id: str, problems: tuple[str, ...]) -> str:
    """One line: which files of a committed artifact are damaged, and what happens to it."""
    head = "; ".join(problems[:2]) + (f"; +{len(problems) - 2} more" if len(problems) > 2 else "")
    return f"corrupt artifact ({head}): {node_id} will be recomputed, the damaged copy moved to .corrupt/"


def node_status(plan: Plan, store: ArtifactStore, node_id: str) -> NodeStatus:
    node = plan.nodes[node_id]
    key = plan.keys[node_id]
    found = store.check(node.stage, node.name, key)
    if found.state == "done":
        return NodeStatus("done", f"cached at {node.stage}/{node.name}-{key}")
    if found.state == "unverified":
        return NodeStatus("done", f"cached at {node.stage}/{node.name}-{key} (unverified: its manifest "
                                  f"predates file sizes and hashes)")
    if found.state == "corrupt":
        # "run", not a new state: it will run, and `plan --json` keeps its three documented states
        return NodeStatus("run", corrupt_reason(node_id, found.problems))
    previous = store.previous_manifests(node.stage, node.name)
    if not previous:
        return NodeStatus("run", "never run")
    changes = diff_identity(previous[0].get("identity", {}), plan.identity(node_id))
    head = "; ".join(changes[:2]) + (f"; +{len(changes) - 2} more" if len(changes) > 2 else "")
    return NodeStatus("stale", head or "key changed")


def node_statuses(plan: Plan, store: ArtifactStore) -> dict[str, NodeStatus]:
    return {nid: node_status(plan, store, nid) for nid in plan.nodes}


def explain(plan: Plan, store: ArtifactStore, node_id: str) -> list[str]:
    """Lines saying whether `node_id` will run, and why: the diff against its stored manifest."""
    if node_id not in plan.nodes:
        close = [n for n in plan.nodes if node_id in n][:5]
        hint = f"; did you mean: {', '.join(close)}" if close else ""
        raise KeyError(f"no node {node_id!r} in plan {plan.config.name!r}{hint}")
    node = plan.nodes[node_id]
    key = plan.keys[node_id]
    st = node_status(plan, store, node_id)
    if st.state == "done":
        return [f"{node_id}: cached (key {key}); nothing will run"]
    found = store.check(node.stage, node.name, key)
    if found.state == "corrupt":  # same key: there is no identity diff to show, only the damage
        return [f"{node_id}: will run (key {key}): the committed artifact is corrupt:",
                *(f"  - {p}" for p in found.problems)]
    previous = store.previous_manifests(node.stage, node.name)
    if not previous:
        return [f"{node_id}: will run (key {key}): no artifact of this node was ever committed"]
    old = previous[0]
    lines = [f"{node_id}: will run (key {key}); last committed key {old.get('key')} differs:"]
    for change in diff_identity(old.get("identity", {}), plan.identity(node_id)):
        lines.append(f"  - {change}")
    seen: set[str] = set()
    for dep, dep_key in plan.identity(node_id)["upstream"].items():
        if old.get("identity", {}).get("upstream", {}).get(dep) != dep_key:
            lines.extend(f"  root cause: {root}" for root in _root_causes(plan, store, dep, seen))
    return lines


def _root_causes(plan: Plan, store: ArtifactStore, node_id: str, seen: set[str]) -> list[str]:
    """Follow changed upstream keys to the nodes whose own values changed."""
    if node_id in seen:
        return []
    seen.add(node_id)
    node = plan.nodes[node_id]
    previous = store.previous_manifests(node.stage, node.name)
    if not previous:
        return [f"{node_id} has never run"]
    old = previous[0].get("identity", {})
    new = plan.identity(node_id)
    own = diff_identity({k: v for k, v in old.items() if k != "upstream"},
                        {k: v for k, v in new.items() if k != "upstream"})
    out = [f"{node_id}: {c}" for c in own]
    for dep, dep_key in new["upstream"].items():
        if old.get("upstream", {}).get(dep) != dep_key:
            out.extend(_root_causes(plan, store, dep, seen))
    return out
