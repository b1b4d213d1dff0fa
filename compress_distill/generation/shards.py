"""Append-only JSONL shards keyed by item id: what makes a killed generation job resumable.

A shard directory holds `part-*.jsonl` (one line per finished request, with
an `id`) and `failed-*.jsonl` (requests that produced no completion: retries
exhausted or rejected by the server, with the error). Every writer opens its
own new file, so a restarted job never appends after a line torn by a crash.

Each line is flushed to the OS as soon as it is written (a killed process
loses nothing it wrote) and fsynced every `fsync_every` lines (a machine crash
loses at most that many, which are then redone). On reading, an unparsable
final line is a torn write: it is skipped and counted, and its item is redone.
`done_ids(dir)` is the resume set; failures are NOT done, so they are retried:
a rerun re-asks exactly the ids in `ShardScan.open_failures()`.
`compact_to_parquet` turns a finished directory into one zstd Parquet table.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

PART_GLOB = "part-*.jsonl"
FAILED_GLOB = "failed-*.jsonl"


class ShardWriter:
    """Writes records (dicts with an `id`) and failures to new files in `directory`."""

    def __init__(self, directory: str | Path, *, fsync_every: int = 1):
        self.directory = Path(directory)
        self.fsync_every = max(1, fsync_every)
        # time_ns + pid: unique per writer, and sorts in write order for readers that care.
        self._tag = f"{time.time_ns()}-{os.getpid()}"
        self._files: dict[str, IO[str]] = {}
        self._unsynced: dict[str, int] = {}
        self.written = 0
        self.failed = 0

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def write(self, record: dict[str, Any]) -> None:
        if "id" not in record:
            raise ValueError(f"shard records need an 'id'; got keys {sorted(record)}")
        self._append("part", record)
        self.written += 1

    def write_failure(self, record: dict[str, Any]) -> None:
        if "id" not in record:
            raise ValueError(f"failure records need an 'id'; got keys {sorted(record)}")
        self._append("failed", record)
        self.failed += 1

    def _append(self, kind: str, record: dict[str, Any]) -> None:
        f = self._files.get(kind)
        if f is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            f = open(self.directory / f"{kind}-{self._tag}.jsonl", "x", encoding="utf-8")
            _fsync_dir(self.directory)  # the new file's name must survive a crash too
            self._files[kind], self._unsynced[kind] = f, 0
        f.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        f.flush()
        self._unsynced[kind] += 1
        if self._unsynced[kind] >= self.fsync_every:
            os.fsync(f.fileno())
            self._unsynced[kind] = 0

    def close(self) -> None:
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        self._files.clear()


@dataclass
class ShardScan:
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # by id; the first record wins
    failures: list[dict[str, Any]] = field(default_factory=list)
    torn: int = 0  # unparsable last lines (a crash mid-write): skipped, so those ids are redone
    corrupt: int = 0  # unparsable lines before the end of a file: should never happen; logged
    duplicates: int = 0  # a second record for a finished id (e.g. two writers raced): ignored
    files: int = 0

    def open_failures(self) -> dict[str, dict[str, Any]]:
        """The latest failure of each id that has no record (a later success closes a failure)."""
        # failures are in file-name order, and a writer's tag sorts in write order: the last one wins
        return {f["id"]: f for f in self.failures if f["id"] not in self.records}


def scan(directory: str | Path) -> ShardScan:
    """Read every shard and failure file in `directory` (missing directory = empty)."""
    d = Path(directory)
    out = ShardScan()
    if not d.is_dir():
        return out
    for path in sorted(d.glob(PART_GLOB)):
        out.files += 1
        for rec in _read_lines(path, out):
            if rec["id"] in out.records:
                out.duplicates += 1
            else:
                out.records[rec["id"]] = rec
    for path in sorted(d.glob(FAILED_GLOB)):
        out.failures.extend(_read_lines(path, out))
    if out.torn or out.corrupt or out.duplicates:
        log.info("%s: %d records, %d torn line(s) skipped, %d corrupt, %d duplicate(s)", d, len(out.records),
                 out.torn, out.corrupt, out.duplicates)
    return out


def _read_lines(path: Path, stats: ShardScan) -> Iterator[dict[str, Any]]:
    data = path.read_bytes()
    lines = data.split(b"\n")
    # split() leaves a final "" when the file ends in a newline; anything else there is an unfinished line.
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        last = i == len(lines) - 1
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict) or "id" not in rec:
                raise ValueError("not a record with an id")
        except ValueError:
            if last:
                stats.torn += 1
            else:
                stats.corrupt += 1
                log.warning("%s line %d is not a JSON record; skipped", path, i + 1)
            continue
        yield rec


def done_ids(directory: str | Path) -> set[str]:
    """Ids with a finished record: a resumed job skips exactly these."""
    return set(scan(directory).records)


def read_records(directory: str | Path) -> list[dict[str, Any]]:
    """Finished records, one per id, sorted by id (deterministic across resumes)."""
    recs = scan(directory).records
    return [recs[k] for k in sorted(recs)]


def compact_to_parquet(directory: str | Path, out_path: str | Path, *, schema: Any = None,
                       records: list[dict[str, Any]] | None = None) -> int:
    """Write the finished records (one per id, sorted) to a zstd Parquet file, atomically. Returns rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = records if records is not None else read_records(directory)
    table = pa.Table.from_pylist(rows, schema=schema) if rows or schema is not None else pa.table({})
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, out)
    return table.num_rows


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) do not allow opening a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
