"""Send a batch of chat requests and append every result to resumable shards.

Completions go to the shard files, failures (retries exhausted, rejected) to
the failed-requests file: nothing is dropped, and a rerun skips finished ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

from .client import ChatClient, ChatRequest, ClientConfig, Completion
from .shards import ShardWriter


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
