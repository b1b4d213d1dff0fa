"""SlurmBackend: the JobBackend protocol on a real Slurm cluster (sbatch / squeue / sacct / scancel).

- submit: writes the batch script as a FILE next to the log (jobs.script.batch_script, the
  wrapper that requeues on USR1; flags from jobs.flags),
  runs `sbatch --parsable`. The job name is deterministic; before every sbatch the queue
  is searched for a live job of that name, so an sbatch that errored or timed out after
  really submitting is adopted instead of duplicated (and so is a job a crashed
  orchestrator left running).
- poll_many: ONE `squeue` for all ids; ONE `sacct` for those squeue does not show as
  live. Decisions are in slurm_parse.combine. When neither source knows a job (an empty
  sacct answer) the status is UNKNOWN (or the last terminal state seen), never success;
  when a client fails, the last known state is kept and the failure logged.
- cancel: one `scancel` for all ids.
Every client call has a timeout (slurm_cli).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..jobs.flags import GpuRequest, SlurmOptions, job_name, sbatch_argv
from ..jobs.resources import REQUEUE_SIGNAL_S
from ..jobs.script import batch_script
from . import slurm_parse as sp
from .base import JobRequest, JobState, JobStatus
from .common import final_record, submit_record, write_state
from .slurm_cli import CommandResult, Runner, SlurmCommandError, check, is_transient, run_command

log = logging.getLogger(__name__)

_LIVE = (JobState.PENDING, JobState.RUNNING, JobState.REQUEUED)


@dataclass(frozen=True)
class _Known:
    name: str                 # the Slurm job name, used to tell a reused job id apart
    log_path: Path | None


def script_path(log_path: Path) -> Path:
    """logs/train.log -> logs/train.sbatch (kept: it is what ran, and can be resubmitted by hand)."""
    return log_path.with_name(f"{log_path.stem}.sbatch")


class SlurmBackend:
    name = "slurm"

    def __init__(self, *, partition: str | None = None, account: str | None = None, qos: str | None = None,
                 gpu_request: GpuRequest = "gpus-per-node", gpu_type: str | None = None,
                 requeue: bool = False, signal_before_s: int | None = None, extra_args: Sequence[str] = (),
                 timeout_s: float = 30.0, submit_retries: int = 3, retry_wait_s: float = 2.0,
                 adopt_existing: bool = True, sacct_window_days: float = 30.0,
                 runner: Runner = run_command):
        self.options = SlurmOptions(partition=partition, account=account, qos=qos, gpu_request=gpu_request,
                                    gpu_type=gpu_type, requeue=requeue, signal_before_s=signal_before_s,
                                    extra_args=tuple(extra_args))
        self.timeout_s = timeout_s
        self.submit_retries = submit_retries
        self.retry_wait_s = retry_wait_s
        self.adopt_existing = adopt_existing
        self.sacct_window_days = sacct_window_days
        self.runner = runner
        self._known: dict[str, _Known] = {}
        self._last: dict[str, JobStatus] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_profile(cls, profile: Any, **kwargs: Any) -> SlurmBackend:
        """From a config.ClusterProfile (partition, account, qos, gpu_request, gpu_type).

        Jobs are submitted with `--requeue --signal=B:USR1@600` (jobs.resources.REQUEUE_SIGNAL_S):
        a job near its time limit gets USR1 and the batch wrapper requeues it (the train
        template resumes from its checkpoint, a serving job's client from its request
        shards), unless the profile says `requeue: false` or kwargs say otherwise."""
        base = {k: getattr(profile, k) for k in ("partition", "account", "qos", "gpu_request", "gpu_type", "requeue")}
        return cls(**{"signal_before_s": REQUEUE_SIGNAL_S, **base, **kwargs})

    # ------------------------------------------------------------------ submit

    def submit(self, req: JobRequest) -> str:
        req = replace(req, workdir=req.workdir.absolute(), log_path=req.log_path.absolute())
        name = job_name(req.name)
        req.log_path.parent.mkdir(parents=True, exist_ok=True)
        script = script_path(req.log_path)
        _write_executable(script, batch_script(req, self.options))
        argv = sbatch_argv(req, self.options, script)
        job_id = self._submit_once(argv, name)
        with self._lock:
            self._known[job_id] = _Known(name, req.log_path)
            self._last.pop(job_id, None)
        write_state(req.log_path, submit_record(self.name, job_id, req, slurm_job_name=name, script=str(script)))
        log.info("submitted Slurm job %s (%s), log %s", job_id, name, req.log_path)
        return job_id

    def _submit_once(self, argv: list[str], name: str) -> str:
        last_err: Exception | None = None
        for attempt in range(self.submit_retries + 1):
            if attempt:
                time.sleep(self.retry_wait_s * 2 ** (attempt - 1))
            if attempt or self.adopt_existing:
                try:
                    existing = self.find_live(name)
                except SlurmCommandError as e:
                    last_err = e
                    if attempt:
                        # cannot see the queue, so cannot rule out that the last sbatch went through
                        log.warning("cannot check the queue for %s, not resubmitting yet: %s", name, e)
                        continue
                    log.warning("cannot check the queue for %s before the first sbatch: %s", name, e)
                    existing = None
                if existing:
                    log.warning("job name %s is already queued as %s: adopting it, not submitting again",
                                name, existing)
                    return existing
            try:
                return sp.parse_sbatch_output(check(self._run(argv)).stdout)
            except SlurmCommandError as e:
                if not is_transient(e):
                    raise
                log.warning("sbatch for %s failed (attempt %d/%d), will check the queue and retry: %s",
                            name, attempt + 1, self.submit_retries + 1, e)
                last_err = e
        raise SlurmCommandError(argv, f"gave up submitting {name}: {last_err}")

    def find_live(self, name: str) -> str | None:
        """Id of this user's pending/running job with that name (arrays: the base id). A request name
        is mapped to its Slurm job name here (`job_name` maps a Slurm job name to itself)."""
        name = job_name(name)
        res = self._run(["squeue", "--noheader", "--me", "--array", "--states=all", f"--name={name}",
                         f"--format={sp.SQUEUE_FORMAT}"])
        check(res)
        ids = sorted({r.array_job_id for r in sp.parse_squeue(res.stdout)
                      if r.name == name and sp.map_state(r.state)[0] in _LIVE}, key=int)
        if len(ids) > 1:
            log.warning("several live jobs are named %s: %s; adopting the newest", name, ids)
        return ids[-1] if ids else None

    def track(self, job_id: str, name: str | None = None, log_path: Path | None = None) -> None:
        """Re-attach to a job submitted earlier (e.g. by a previous orchestrator), so polls
        can tell it apart from another job that reuses its id."""
        with self._lock:
            self._known[job_id] = _Known(job_name(name) if name else "", log_path)

    # ------------------------------------------------------------------ poll

    def poll_many(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        ids = list(dict.fromkeys(str(j) for j in job_ids))
        if not ids:
            return {}
        queue = self._squeue(ids)
        out: dict[str, JobStatus] = {}
        need_acct: list[str] = []
        for i in ids:
            st = sp.combine(i, queue, None, self._name(i)) if queue is not None else None
            if st is not None and st.state in _LIVE:
                out[i] = st
            else:
                need_acct.append(i)
        if need_acct:
            attempts, why = self._sacct(need_acct)
            for i in need_acct:
                st = sp.combine(i, queue, attempts, self._name(i)) if attempts is not None or queue else None
                out[i] = st if st is not None and st.state is not JobState.UNKNOWN else self._fallback(i, st, why)
        for i in ids:
            self._remember(i, out[i])
        return {i: out[i] for i in ids}

    def _squeue(self, ids: list[str]) -> list[sp.QueueRow] | None:
        argv = ["squeue", "--noheader", "--array", "--states=all", f"--jobs={','.join(ids)}",
                f"--format={sp.SQUEUE_FORMAT}"]
        try:
            res = self._run(argv)
            if res.returncode and "Invalid job id" in res.stderr:
                return []  # none of them is known to slurmctld any more (after MinJobAge)
            return sp.parse_squeue(check(res).stdout)
        except (SlurmCommandError, ValueError) as e:
            log.warning("squeue failed; using accounting only: %s", e)
            return None

    def _sacct(self, ids: list[str]) -> tuple[list[sp.Attempt] | None, str]:
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - self.sacct_window_days * 86400))
        argv = ["sacct", "--noheader", "--parsable2", "--duplicates", f"--starttime={since}",
                f"--jobs={','.join(ids)}", f"--format={','.join(sp.SACCT_FIELDS)}"]
        try:
            attempts = sp.parse_sacct(check(self._run(argv)).stdout)
        except (SlurmCommandError, ValueError) as e:
            log.warning("sacct failed; keeping the last known states: %s", e)
            return None, f"sacct failed: {e}"
        return attempts, "no accounting record (empty sacct answer)"

    def _fallback(self, job_id: str, current: JobStatus | None, why: str) -> JobStatus:
        """Nothing definite this cycle: keep a final state seen before, else say UNKNOWN."""
        last = self._last.get(job_id)
        if last is not None and (last.state.terminal or why.startswith("sacct failed")):
            return last
        if current is not None:  # UNKNOWN with its own reason (e.g. accounting lags slurmctld)
            return current
        seen = f"; last seen {last.state.value}" if last else ""
        return JobStatus(job_id=job_id, state=JobState.UNKNOWN, node=last.node if last else None,
                         reason=why + seen)

    def _remember(self, job_id: str, st: JobStatus) -> None:
        with self._lock:
            prev = self._last.get(job_id)
            self._last[job_id] = st
            known = self._known.get(job_id)
        if st.state.terminal and (prev is None or not prev.state.terminal) and known and known.log_path:
            write_state(known.log_path, final_record(st))

    def _name(self, job_id: str) -> str | None:
        known = self._known.get(job_id)
        return known.name if known and known.name else None

    # ------------------------------------------------------------------ cancel

    def cancel(self, job_ids: Iterable[str]) -> None:
        ids = list(dict.fromkeys(str(j) for j in job_ids))
        if not ids:
            return
        res = self._run(["scancel", *ids])
        if not res.ok or res.stderr.strip():
            # e.g. "already completed": nothing left to cancel; anything else is worth a look
            log.warning("scancel %s: exit %d %s", " ".join(ids), res.returncode, res.stderr.strip())
        else:
            log.info("cancelled Slurm jobs %s", " ".join(ids))

    # ------------------------------------------------------------------ util

    def _run(self, argv: list[str]) -> CommandResult:
        return self.runner(argv, self.timeout_s)


def _write_executable(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, path)
