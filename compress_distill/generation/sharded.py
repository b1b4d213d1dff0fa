"""Send a batch of chat requests into resumable shards, and account for the ones that failed.

Completions go to the shard files, failures (retries exhausted, rejected,
prompt too long) to the failed-requests file: nothing is dropped, and a rerun
skips finished ids. After the requests, every served stage passes its open
failures to `check_failures`: they are published as `failed_requests.json`,
counted in the metrics, and past the spec's `max_failed_fraction` they fail
the node, naming the ids. The work dir survives that, so a rerun re-asks only
the failed ids.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .client import ChatClient, ChatRequest, ClientConfig, Completion, GenerationError
from .shards import ShardScan, ShardWriter

FAILED_FILE = "failed_requests.json"
NAMED_IN_ERROR = 10  # failed ids quoted in the error; the file has them all


class TooManyFailedRequests(GenerationError):
    """More of a stage's requests failed than its `max_failed_fraction` allows."""


def complete_into_shards(cfg: ClientConfig, reqs: Iterable[ChatRequest], shard_dir: Path) -> None:
    asyncio.run(_complete(cfg, reqs, shard_dir))


async def _complete(cfg: ClientConfig, reqs: Iterable[ChatRequest], shard_dir: Path) -> None:
    async with ChatClient(cfg) as client:
        with ShardWriter(shard_dir) as writer:
            async for res in client.complete_many(reqs):
                if isinstance(res, Completion):
                    writer.write({"id": res.key, **res.to_record()})
                else:
                    writer.write_failure({"id": res.key, **res.to_record()})


def unanswered(ids: Iterable[str], scanned: ShardScan) -> list[dict[str, Any]]:
    """One failure row (id, kind, error) per id in `ids` without a record: its latest failure, or
    kind `missing` when none was written (a run that stopped early)."""
    open_ = scanned.open_failures()
    return [failure_row(i, open_.get(i)) for i in ids if i not in scanned.records]


def failure_row(rid: str, failure: Mapping[str, Any] | None) -> dict[str, Any]:
    if failure is None:
        return {"id": rid, "kind": "missing", "error": "no result recorded"}
    return {"id": rid, "kind": str(failure.get("kind") or "error"), "error": str(failure.get("error") or "")}


def clipped_count(records: Iterable[Mapping[str, Any]]) -> int:
    """Completions whose max_tokens the client clipped to fit the context."""
    return sum(r.get("max_tokens_sent") is not None for r in records)


def check_failures(node_id: str, failures: list[dict[str, Any]], total: int, *, max_fraction: float,
                   config_key: str, out_dir: Path, hint: str = "a rerun re-asks only the failed ids") -> dict[str, Any]:
    """Write `failures` to `out_dir/failed_requests.json` and return the metrics; raise
    TooManyFailedRequests when they are more than `max_fraction` of `total` requests."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FAILED_FILE).write_text(json.dumps(failures, indent=1, ensure_ascii=False))
    kinds = dict(Counter(f["kind"] for f in failures))
    fraction = len(failures) / total if total else 0.0
    if failures and fraction > max_fraction:
        ids = ", ".join(f["id"] for f in failures[:NAMED_IN_ERROR])
        more = f" (+{len(failures) - NAMED_IN_ERROR} more)" if len(failures) > NAMED_IN_ERROR else ""
        raise TooManyFailedRequests(
            f"{node_id}: {len(failures)} of {total} requests failed ({fraction:.1%}; {kinds}), more than "
            f"max_failed_fraction={max_fraction:g} allows: {ids}{more}. {hint[:1].upper() + hint[1:]}; "
            f"to accept this share, raise `{config_key}`.")
    return {"failed_requests": len(failures), "failed_by_kind": kinds}
