"""Pure parsing of Slurm client output: squeue/sacct text -> JobStatus. No subprocesses here.

How a status is decided (see `combine`):
- squeue (slurmctld, `-t all`) is the truth for LIVE jobs: pending, running, requeued.
  After a requeue sacct can still show the old attempt's PREEMPTED; squeue does not.
- A job is FINISHED only by accounting (sacct -D): the LATEST attempt (by Submit) of each
  job or array task. Success needs the job row AND its `.batch` step COMPLETED with exit 0.
- No accounting row yet (an empty sacct answer: slurmdbd lags by seconds) is UNKNOWN,
  never success, even when slurmctld already says COMPLETED.
- A job array is one id: COMPLETED when every task is; otherwise its worst task's status,
  whose `job_id` names that task (e.g. "21_3") so its log can be found.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from .base import JobState, JobStatus

# squeue -o: the name goes last because it may contain the separator.
SQUEUE_FORMAT = "%i|%A|%F|%K|%T|%r|%N|%j"
# sacct --format: same rule for JobName.
SACCT_FIELDS = ("JobID", "JobIDRaw", "State", "ExitCode", "NodeList", "ElapsedRaw", "Submit", "Reason", "JobName")

_STATE_MAP: dict[str, JobState] = {
    "PENDING": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "CONFIGURING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,   # ended, but epilog/cleanup still runs: not final yet
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,    # holds its allocation; resumes later
    "STOPPED": JobState.RUNNING,
    "REQUEUED": JobState.REQUEUED,
    "REQUEUE_HOLD": JobState.REQUEUED,
    "REQUEUE_FED": JobState.REQUEUED,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT,
    "DEADLINE": JobState.TIMEOUT,
    "NODE_FAIL": JobState.NODE_FAIL,
    "BOOT_FAIL": JobState.NODE_FAIL,  # the node failed to boot: the job did nothing wrong
    "PREEMPTED": JobState.PREEMPTED,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
}
# When an array's tasks disagree, report the most telling one (real failures before transient).
_SEVERITY = [JobState.OUT_OF_MEMORY, JobState.TIMEOUT, JobState.FAILED, JobState.CANCELLED,
             JobState.NODE_FAIL, JobState.PREEMPTED]
_LIVE_ORDER = [JobState.RUNNING, JobState.REQUEUED, JobState.PENDING, JobState.UNKNOWN]


def map_state(raw: str) -> tuple[JobState, str | None]:
    """'CANCELLED by 0' -> (CANCELLED, 'cancelled by uid 0'); unknown words -> UNKNOWN."""
    word, _, rest = raw.strip().partition(" ")
    word = word.rstrip("+")  # sacct marks truncated fields with '+'
    state = _STATE_MAP.get(word, JobState.UNKNOWN)
    note = None
    if rest.startswith("by "):
        note = f"cancelled by uid {rest[3:].strip()}"
    elif state is JobState.UNKNOWN:
        note = f"unrecognised Slurm state {raw.strip()!r}"
    elif word in ("BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"):
        note = word
    return state, note


def parse_exit_code(text: str) -> int | None:
    """sacct ExitCode 'code:signal' -> one number: code, or 128+signal when killed by one."""
    code, _, sig = text.strip().partition(":")
    if not code.isdigit():
        return None
    if sig.isdigit() and int(sig) and not int(code):
        # 0:125 is Slurm's marker for an OOM-killed step, not a signal number
        return 128 + int(sig) if int(sig) < 65 else int(sig)
    return int(code)


def parse_sbatch_output(stdout: str) -> str:
    """`sbatch --parsable` prints 'jobid' or 'jobid;cluster'. Anything else fails loudly."""
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    if lines:
        job_id = lines[-1].split(";", 1)[0]
        if job_id.isdigit():
            return job_id
    raise ValueError(f"unparseable sbatch --parsable output: {stdout!r}")


_DURATION = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def parse_duration(text: str) -> float | None:
    """Slurm time strings (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) -> seconds.

    None for 'UNLIMITED'/'INFINITE'/empty.
    """
    t = text.strip()
    if not t or t.upper() in ("UNLIMITED", "INFINITE", "NONE"):
        return None
    m = _DURATION.fullmatch(t)
    if not m:
        raise ValueError(f"bad Slurm time {text!r}")
    days, a, b, c = m.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        h, mi, s = (parts + [0, 0])[:3]
        return float(int(days) * 86400 + h * 3600 + mi * 60 + s)
    if len(parts) == 1:    # MM
        return float(parts[0] * 60)
    if len(parts) == 2:    # MM:SS
        return float(parts[0] * 60 + parts[1])
    return float(parts[0] * 3600 + parts[1] * 60 + parts[2])


# --------------------------------------------------------------------------- squeue


@dataclass(frozen=True)
class QueueRow:
    job_id: str          # as shown: "123" or "21_3"
    raw_id: str
    array_job_id: str
    task: str | None
    state: str
    reason: str | None
    nodes: str | None
    name: str


def parse_squeue(text: str) -> list[QueueRow]:
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", 7)
        if len(parts) != 8:
            raise ValueError(f"unexpected squeue line {line!r}")
        jid, raw, arr, task, state, reason, nodes, name = parts
        rows.append(QueueRow(jid.strip(), raw.strip(), arr.strip(), None if task in ("N/A", "") else task,
                             state.strip(), _none(reason), _none(nodes), name))
    return rows


# --------------------------------------------------------------------------- sacct


@dataclass(frozen=True)
class StepRow:
    step: str            # "batch", "extern", "0", ...
    state: str
    exit_code: str


@dataclass
class Attempt:
    """One accounting record of a job (a requeued job has one per run) with its steps."""

    job_id: str
    raw_id: str
    state: str
    exit_code: str
    nodes: str | None
    elapsed_s: float | None
    submit: str
    reason: str | None
    name: str
    steps: dict[str, StepRow] = field(default_factory=dict)


def parsable_rows(text: str, n_fields: int) -> Iterator[list[str]]:
    """The rows of `--parsable2` output, each exactly `n_fields` long (the last field, a job name,
    may itself contain '|'); blank lines are skipped, any other malformed line is an error."""
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", n_fields - 1)
        if len(parts) != n_fields:
            raise ValueError(f"unexpected sacct line {line!r}")
        yield parts


def parse_sacct(text: str) -> list[Attempt]:
    """`sacct -D --parsable2 --noheader --format=<SACCT_FIELDS>` -> attempts, in output order.

    A step row ("123.batch") belongs to the job row printed just before it.
    """
    attempts: list[Attempt] = []
    for parts in parsable_rows(text, len(SACCT_FIELDS)):
        jid, raw, state, exit_code, nodes, elapsed, submit, reason, name = parts
        unit, dot, step = jid.partition(".")
        if dot:
            if attempts and attempts[-1].job_id == unit:
                attempts[-1].steps[step] = StepRow(step, state, exit_code)
            continue
        attempts.append(Attempt(jid, raw, state, exit_code, _none(nodes), float(elapsed) if elapsed.isdigit() else None,
                                submit, _none(reason), name))
    return attempts


def attempt_status(a: Attempt, restarts: int = 0) -> JobStatus:
    """The success rule: job and .batch step COMPLETED with exit 0, else say why not."""
    state, note = map_state(a.state)
    exit_code = parse_exit_code(a.exit_code)
    reason = note or (a.reason if state.terminal and state is not JobState.COMPLETED else None)
    batch = a.steps.get("batch")
    if state is JobState.COMPLETED:
        if exit_code not in (0, None):
            state, reason = JobState.FAILED, f"job exit code {a.exit_code}"
        elif batch is None:
            state, reason = JobState.UNKNOWN, "accounting has no .batch step yet"
        else:
            b_state, _ = map_state(batch.state)
            b_exit = parse_exit_code(batch.exit_code)
            if not b_state.terminal:
                # slurmctld finished the job before accounting closed its step: ask again
                state, reason = JobState.UNKNOWN, f"accounting still shows the .batch step {batch.state}"
            elif b_state is not JobState.COMPLETED or b_exit not in (0, None):
                state = b_state if b_state.terminal and b_state is not JobState.COMPLETED else JobState.FAILED
                exit_code = b_exit
                reason = f".batch step ended {batch.state} (exit {batch.exit_code})"
    elif state is JobState.FAILED and batch is not None and map_state(batch.state)[0] is JobState.OUT_OF_MEMORY:
        state = JobState.OUT_OF_MEMORY  # the kernel killed the batch step; say so
    return JobStatus(job_id=a.job_id, state=state, exit_code=exit_code, node=a.nodes, elapsed_s=a.elapsed_s,
                     reason=reason, restarts=restarts)


# --------------------------------------------------------------------------- combining


def matches(wanted: str, job_id: str, raw_id: str) -> bool:
    """Does a row (shown id, raw id) belong to the id we asked about?

    "21" covers a plain job 21 and every task 21_N of array 21; "21_3" only that task; a raw
    id ("25") also finds the array task that has it.
    """
    if "_" in wanted:
        return job_id == wanted
    return unit_base(job_id) == wanted or raw_id == wanted


def unit_base(job_id: str) -> str:
    return job_id.split("_", 1)[0].split(".", 1)[0]


def is_range(job_id: str) -> bool:
    """sacct shows not-yet-started array tasks as one row, '21_[2-5%2]'."""
    return "[" in job_id


def combine(wanted: str, queue: Iterable[QueueRow] | None, attempts: Iterable[Attempt] | None,
            name: str | None = None) -> JobStatus | None:
    """Status of one asked-for id from both sources; None when neither knows it.

    `queue`/`attempts` are None when that source was not asked or failed. `name`, when
    known, drops rows of another job that happens to reuse the id.
    """
    q = {r.job_id: r for r in (queue or ()) if matches(wanted, r.job_id, r.raw_id) and _same(name, r.name)}
    latest: dict[str, Attempt] = {}
    count: dict[str, int] = {}
    for a in attempts or ():
        if not (matches(wanted, a.job_id, a.raw_id) and _same(name, a.name)):
            continue
        count[a.job_id] = count.get(a.job_id, 0) + 1
        if a.job_id not in latest or a.submit >= latest[a.job_id].submit:
            latest[a.job_id] = a
    units = list(q) + [u for u in latest if u not in q and not (q and is_range(u))]
    statuses = [s for u in units if (s := _unit_status(q.get(u), latest.get(u), count.get(u, 1) - 1))]
    if not statuses:
        return None
    return aggregate(wanted, statuses)


def _unit_status(row: QueueRow | None, att: Attempt | None, restarts: int) -> JobStatus | None:
    if row is not None:
        state, note = map_state(row.state)
        if not state.terminal and state is not JobState.UNKNOWN:
            return JobStatus(job_id=row.job_id, state=state, node=row.nodes, reason=note or row.reason,
                             restarts=restarts)
    if att is not None:
        st = attempt_status(att, restarts)
        if row is not None and not st.state.terminal:
            # slurmctld says it ended, accounting still shows it running: wait for accounting
            return replace(st, state=JobState.UNKNOWN, reason=f"slurmctld reports {row.state}; "
                           f"accounting still says {att.state}")
        return st
    if row is not None:
        return JobStatus(job_id=row.job_id, state=JobState.UNKNOWN, node=row.nodes,
                         reason=f"slurmctld reports {row.state}; no accounting record yet")
    return None


def aggregate(wanted: str, statuses: list[JobStatus]) -> JobStatus:
    """One status for a job array from its tasks' statuses (a plain job passes through)."""
    if len(statuses) == 1 and (statuses[0].job_id == wanted or "_" not in statuses[0].job_id):
        return statuses[0]
    n = len(statuses)
    restarts = sum(s.restarts for s in statuses)
    live = [s for s in statuses if not s.state.terminal]
    if live:
        state = min((s.state for s in live), key=_LIVE_ORDER.index)
        nodes = sorted({s.node for s in live if s.node})
        return JobStatus(job_id=wanted, state=state, node=",".join(nodes) or None,
                         reason=f"array: {n - len(live)}/{n} tasks finished", restarts=restarts)
    bad = [s for s in statuses if s.state is not JobState.COMPLETED]
    elapsed = max((s.elapsed_s or 0.0) for s in statuses)
    if not bad:
        return JobStatus(job_id=wanted, state=JobState.COMPLETED, exit_code=0, elapsed_s=elapsed,
                         reason=f"array: {n}/{n} tasks completed" if n > 1 else None, restarts=restarts)
    worst = min(bad, key=lambda s: _SEVERITY.index(s.state))
    why = f"{len(bad)}/{n} array tasks not completed; first: {worst.job_id} {worst.state.value}"
    if worst.reason:
        why += f" ({worst.reason})"
    return replace(worst, reason=why, restarts=restarts)


def _same(expected: str | None, got: str) -> bool:
    return expected is None or got == expected


def _none(text: str) -> str | None:
    t = text.strip()
    return None if t in ("", "None", "None assigned", "(null)", "n/a") else t
