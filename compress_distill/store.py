"""The content-addressed artifact store: the only code that commits artifacts.

Layout: `<root>/<stage>/<name>-<key>/` holds a step's outputs and its
`manifest.json`. A step writes into `<root>/<stage>/.tmp/<name>-<key>.attempt/`;
`commit` writes the manifest there last and renames the directory into
place. A directory under its final name is therefore always complete, and
the manifest inside it is the done marker. A crash leaves only `.tmp/`
debris, which is never read and is swept when the step runs again.

Integrity: `commit` records every file of the artifact (recursively, the manifest
excepted) with its size and sha256 in the manifest's `files`. `is_done` trusts an
artifact only while every listed file exists with its recorded size (stat() calls,
cheap); `check(..., hashes=True)` re-hashes them (`compress-distill check-store`). A corrupt artifact is never deleted: whoever replaces it moves it to
`<root>/<stage>/.corrupt/` first (see `quarantine`). Manifests written before sizes
were recorded have no `files`: they stay done, as "unverified" (no way to tell).

Two runs never execute the same step at once: `lease()` takes an exclusive
lease file (created whole, by hard link) that its holder renews; a lease whose
holder stopped renewing expires and can be broken, and breaking it never
removes a fresher lease.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "manifest.json"
LEASE_TTL_S = 60.0
QUARANTINE_DIR = ".corrupt"  # <root>/<stage>/.corrupt/: corrupt artifacts moved aside, never read

log = logging.getLogger(__name__)


class LeaseTimeout(TimeoutError):
    pass


@dataclass(frozen=True)
class NodeStatus:
    state: str  # "done" | "stale" | "run"
    reason: str


@dataclass(frozen=True)
class ArtifactCheck:
    """What the store holds under one (stage, name, key).

    `state`: "absent" (no manifest under the final name: not committed), "done" (every recorded
    file is there with its size, and its hash when checked), "unverified" (committed before
    manifests recorded files: trusted, nothing to check against) or "corrupt" (`problems` says
    which file and how). Only "done" and "unverified" count as done.
    """

    state: str
    problems: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        return self.state in ("done", "unverified")


def write_parquet(table: pa.Table | list[dict[str, Any]], path: Path, schema: pa.Schema | None = None) -> int:
    """Write a zstd Parquet file atomically (temp name + rename). Returns the row count."""
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pylist(table, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return table.num_rows


def read_parquet(path: Path) -> pa.Table:
    return pq.read_table(path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def file_record(path: Path) -> dict[str, Any]:
    """Size and sha256 of one file, read in chunks (model weights can be tens of GB)."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"size": size, "sha256": digest}


def list_files(root: Path) -> list[str]:
    """Every regular file under `root`, recursively, as sorted POSIX paths relative to it.

    Symlinked directories are not followed (a stage copies what it publishes); a symlinked
    file is recorded by its target's content.
    """
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for fname in files:
            p = Path(dirpath, fname)
            if p.is_file():
                out.append(p.relative_to(root).as_posix())
    return sorted(out)


def record_files(root: Path) -> dict[str, dict[str, Any]]:
    """The manifest's `files`: every file of an artifact dir but the manifest itself."""
    return {rel: file_record(root / rel) for rel in list_files(root) if rel != MANIFEST}


def _safe_rel(rel: str) -> bool:
    """A manifest's file path must stay inside its artifact (a hand-edited manifest could say `../x`)."""
    p = Path(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts


def file_problems(root: Path, files: Mapping[str, Any], hashes: bool = False) -> list[str]:
    """Differences between an artifact dir and its manifest's `files`: missing files, wrong
    sizes and (with `hashes`) wrong content. Extra files are not problems: nothing reads them."""
    problems = []
    for rel, rec in sorted(files.items()):
        if not _safe_rel(rel) or not isinstance(rec, Mapping) or not isinstance(rec.get("size"), int):
            problems.append(f"{rel}: malformed entry in {MANIFEST}")
            continue
        expected = rec["size"]
        try:
            size = (root / rel).stat().st_size
        except FileNotFoundError:
            problems.append(f"{rel}: missing (expected {expected} bytes)")
            continue
        except OSError as err:
            problems.append(f"{rel}: unreadable ({err.strerror})")
            continue
        if size != expected:
            problems.append(f"{rel}: {size} bytes, expected {expected}")
        elif hashes:
            try:
                actual = file_record(root / rel)["sha256"]
            except OSError as err:
                problems.append(f"{rel}: unreadable ({err.strerror})")
                continue
            if actual != rec.get("sha256"):
                problems.append(f"{rel}: sha256 {actual[:12]}…, expected {str(rec.get('sha256'))[:12]}… "
                                f"(same size, {size} bytes)")
    return problems


def check_dir(path: Path, hashes: bool = False) -> ArtifactCheck:
    """The integrity of the artifact committed at `path` (see ArtifactCheck)."""
    f = path / MANIFEST
    if not f.is_file():
        return ArtifactCheck("absent")
    manifest = _read_json(f)
    if not isinstance(manifest, dict):
        # manifests are written whole (atomic rename), so an unreadable one was damaged later
        return ArtifactCheck("corrupt", (f"{MANIFEST}: unreadable or not JSON",))
    files = manifest.get("files")
    if files is None:
        return ArtifactCheck("unverified")
    if not isinstance(files, Mapping):
        return ArtifactCheck("corrupt", (f"{MANIFEST}: `files` is not a mapping",))
    problems = file_problems(path, files, hashes=hashes)
    return ArtifactCheck("corrupt", tuple(problems)) if problems else ArtifactCheck("done")


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class ArtifactStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- paths ---------------------------------------------------------------
    def path(self, stage: str, name: str, key: str) -> Path:
        return self.root / stage / f"{name}-{key}"

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def is_done(self, stage: str, name: str, key: str) -> bool:
        """Committed and intact as far as sizes tell: a corrupt artifact is never done."""
        return self.check(stage, name, key).done

    def check(self, stage: str, name: str, key: str, hashes: bool = False) -> ArtifactCheck:
        """The artifact's integrity: sizes only (a stat() per file), or sizes and sha256."""
        return check_dir(self.path(stage, name, key), hashes=hashes)

    def manifest(self, stage: str, name: str, key: str) -> dict[str, Any] | None:
        m = _read_json(self.path(stage, name, key) / MANIFEST)
        return m if isinstance(m, dict) else None

    def previous_manifests(self, stage: str, name: str) -> list[dict[str, Any]]:
        """Committed manifests for this node name under any key, newest first."""
        out = []
        stage_dir = self.root / stage
        if not stage_dir.is_dir():
            return []
        for d in stage_dir.glob(f"{name}-*"):
            f = d / MANIFEST
            # the name itself may contain '-': require the suffix to be exactly one key
            if f.is_file() and d.name[len(name) + 1:].isalnum():
                m = _read_json(f)  # a damaged manifest is that artifact's problem, not the plan's
                if isinstance(m, dict) and m.get("name") == name:
                    out.append(m)
        return sorted(out, key=lambda m: m.get("finished_at", 0), reverse=True)

    def work_dir(self, stage: str, name: str, key: str) -> Path:
        """Scratch space that survives a crash, for item-level resume (request shards, checkpoints).

        Keyed like the artifact, so a changed config never resumes stale partial work. Removed
        after a successful commit.
        """
        return self.root / stage / ".work" / f"{name}-{key}"

    # -- writing ---------------------------------------------------------------
    def begin(self, stage: str, name: str, key: str) -> Path:
        """An empty attempt dir for the node (call it holding the node's lease).

        Its path is fixed per (stage, name, key): a Slurm job that outlives a restarted
        orchestrator is re-attached by its job name and still writes where the new attempt looks.
        """
        tmp = self.attempt_dir(stage, name, key)
        for old in tmp.parent.glob(f"{name}-{key}.*"):  # debris of a crashed attempt (we hold the lease)
            shutil.rmtree(old, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def attempt_dir(self, stage: str, name: str, key: str) -> Path:
        """Where `begin` puts the node's attempt (the `--out` of its job); not created here."""
        return self.root / stage / ".tmp" / f"{name}-{key}.attempt"

    def commit(self, tmp: Path, stage: str, name: str, key: str, manifest: Mapping[str, Any],
               replace: bool = False) -> Path:
        """Record the files, write the manifest last, then rename `tmp` into place.

        `replace` is for forced re-runs. Call it holding the node's lease. The files are hashed
        here, once, as they are committed: nothing writes into an artifact after this.
        """
        final = self.path(stage, name, key)
        body = {**manifest, "files": record_files(tmp)}
        atomic_write_text(tmp / MANIFEST, json.dumps(body, indent=2, sort_keys=True, default=str))
        found = self.check(stage, name, key) if final.exists() else None
        if found is not None and found.state == "corrupt":
            # what we recomputed replaces it, forced or not; the damaged copy is kept for a post-mortem
            self.quarantine(stage, name, key, found.problems)
        elif found is not None and (replace or found.state == "absent"):
            # A forced re-run, or an incomplete dir under the final name (never ours to trust):
            # move it aside first so the final name is only ever bound to a complete artifact.
            trash = self.root / stage / ".tmp" / f"{name}-{key}.replaced-{uuid.uuid4().hex[:8]}"
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MANIFEST).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another run committed the same key: theirs stands
        return final

    def quarantine(self, stage: str, name: str, key: str, problems: tuple[str, ...] | list[str]) -> Path:
        """Move a corrupt artifact out of the store's namespace, to
        `<root>/<stage>/.corrupt/<name>-<key>.<UTC time>-<random>/`, with that name plus
        `.quarantine.json` beside it saying why. Nothing reads `.corrupt/`; deleting it is the user's call.

        Call it holding the node's lease. Returns the new path.
        """
        qdir = self.root / stage / QUARANTINE_DIR
        qdir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = qdir / f"{name}-{key}.{stamp}-{uuid.uuid4().hex[:6]}"
        os.rename(self.path(stage, name, key), dest)
        with contextlib.suppress(OSError):  # the move is what matters; the note is a courtesy
            atomic_write_text(dest.with_name(dest.name + ".quarantine.json"), json.dumps(
                {"artifact": f"{stage}/{name}-{key}", "problems": list(problems), "moved_at": time.time()},
                indent=2))
        log.warning("%s/%s-%s was corrupt (%s); moved to %s", stage, name, key, "; ".join(problems), dest)
        return dest

    def committed(self) -> Iterator[tuple[str, str, Path]]:
        """(stage, dir name, path) of every committed artifact dir, in sorted order.

        Dot-dirs (`.tmp`, `.work`, `.locks`, `.jobs`, `.corrupt`, the root's `.runs`/`.configs`)
        are bookkeeping, not artifacts.
        """
        if not self.root.is_dir():
            return
        for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for d in sorted(p for p in stage_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if (d / MANIFEST).is_file():
                    yield stage_dir.name, d.name, d

    # -- leases ----------------------------------------------------------------
    @contextlib.contextmanager
    def lease(self, stage: str, name: str, key: str, timeout_s: float = 24 * 3600,
              ttl_s: float = LEASE_TTL_S, poll_s: float = 0.5) -> Iterator[None]:
        lock_dir = self.root / stage / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        path = lock_dir / f"{name}-{key}.lease"
        token = uuid.uuid4().hex
        deadline = time.monotonic() + timeout_s
        while True:
            if self._try_take(path, token, ttl_s):
                break
            if time.monotonic() > deadline:
                holder = _read_json(path) or {}
                raise LeaseTimeout(f"{stage}/{name}: lease held by {holder.get('owner', '?')} "
                                   f"for longer than {timeout_s:.0f}s")
            time.sleep(poll_s)
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(ttl_s / 3):
                cur = _read_json(path)
                if cur is None or cur.get("token") != token:
                    return
                cur["expires"] = time.time() + ttl_s
                atomic_write_text(path, json.dumps(cur))

        t = threading.Thread(target=renew, daemon=True, name=f"lease-{name}")
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join(timeout=5)
            cur = _read_json(path)
            if cur is not None and cur.get("token") == token:
                path.unlink(missing_ok=True)

    @staticmethod
    def _try_take(path: Path, token: str, ttl_s: float) -> bool:
        body = json.dumps({"token": token, "owner": f"{socket.gethostname()}:{os.getpid()}",
                           "expires": time.time() + ttl_s})
        if _create_whole(path, body, token):
            return True
        cur = _read_json(path)
        if cur is None:
            # leases are created whole, so an unreadable one is damaged, not half-written:
            # break it once it is older than a TTL (its holder would have rewritten it)
            try:
                if time.time() - path.stat().st_mtime < ttl_s:
                    return False
            except FileNotFoundError:
                return False
        elif cur.get("expires", 0) > time.time() and not _holder_is_dead(cur):
            return False
        _break_stale(path, cur, token)  # expired or its holder is dead: break it, then race again
        return False


def _create_whole(path: Path, body: str, token: str) -> bool:
    """Create `path` holding `body` if it does not exist, atomically: written to a private
    file first, then hard-linked into place (fails if `path` exists, like O_EXCL). No reader
    ever sees the lease empty or half-written."""
    tmp = path.with_name(f"{path.name}.{token}.new")
    tmp.write_text(body)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: exclusive create, then write
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(body)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _break_stale(path: Path, seen: dict[str, Any] | None, token: str) -> None:
    """Remove the lease read as `seen`, and no other.

    Breakers take turns through a guard file, and each re-reads the lease under it: a lease
    that another breaker already replaced, or that its holder renewed, is left alone. The
    lease is then moved aside and checked; if its holder released it and another run took a
    fresh one between the re-read and the move, that one is put back.
    """
    guard = path.with_name(f"{path.name}.breaking")
    if not _create_whole(guard, token, token):
        with contextlib.suppress(FileNotFoundError):  # its breaker died mid-break (a break takes ms)
            if time.time() - guard.stat().st_mtime > 10:
                guard.unlink()
        return
    try:
        if _read_json(path) != seen:
            return
        stale = path.with_name(f"{path.name}.{token}.stale")
        try:
            os.rename(path, stale)
        except FileNotFoundError:
            return
        if _read_json(stale) != seen:
            with contextlib.suppress(FileExistsError):
                os.link(stale, path)
        stale.unlink(missing_ok=True)
    finally:
        guard.unlink(missing_ok=True)


def _holder_is_dead(lease: Mapping[str, Any]) -> bool:
    """True when the holder is a process of this host that no longer exists: a crashed run's
    lease is broken at once instead of after its TTL. Other hosts' holders wait for the TTL."""
    host, _, pid = str(lease.get("owner", "")).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: value}


def diff_identity(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two node identities (see Plan.identity)."""
    a, b = flatten(old), flatten(new)
    lines = []
    for k in sorted(set(a) | set(b)):
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            if k.startswith("upstream."):
                lines.append(f"upstream {k[len('upstream.'):]} changed ({a.get(k, 'none')} -> {b.get(k, 'none')})")
            else:
                lines.append(f"{k}: {json.dumps(a.get(k, '<absent>'))} -> {json.dumps(b.get(k, '<absent>'))}")
    return lines
