"""Pure rendering of a Slurm batch job for one JobRequest: the script file and the sbatch argv.

Data reaches the job only as shell-quoted words (shlex.quote) in a generated script
file, or as separate sbatch argv elements; nothing from a config is pasted into shell
text unquoted. Resources come from the request, site choices (partition, account, qos,
how a GPU request is written) from `SlurmOptions`, i.e. from the cluster profile.

The script runs the command as a child and waits, so that a `--signal=B:USR1@N` sent
to the batch shell before the time limit is forwarded to it (a job that can checkpoint
handles USR1 and exits). With `requeue`, a job interrupted that way requeues itself
and resumes from its checkpoint on the next run (SLURM_RESTART_COUNT > 0).
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .base import JobRequest
from .common import array_task_log, check_env

GpuRequest = Literal["gpus-per-node", "gres"]
# JobRequest.priority (minutes of remaining critical path) -> --nice=NICE_CEILING - priority.
# Nice only LOWERS a job's priority for a non-admin user, so the most urgent job gets the
# smallest nice. 10,000 min (~167 h) is above the paper DAG's longest path (~53 h); any
# longer path ties at nice 0. With priority/basic (FIFO) nice is subtracted from the
# submit-order priority, so it dominates submit order; with priority/multifactor it is
# subtracted from the weighted sum (sites weigh it against fair share and age).
NICE_CEILING = 10_000
_SAFE_NAME = re.compile(r"[A-Za-z0-9._+=:@-]+")
_JOB_ID = re.compile(r"[0-9]+(_[0-9]+)?")


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpu_request: GpuRequest = "gpus-per-node"   # mirrors ClusterProfile.gpu_request
    gpu_type: str | None = None                 # e.g. "h100": --gpus-per-node=h100:4
    requeue: bool = False                       # --requeue (else --no-requeue: the site default varies)
    signal_before_s: int | None = None          # --signal=B:USR1@N
    extra_args: tuple[str, ...] = ()            # site-specific sbatch flags, passed through as-is

    def __post_init__(self) -> None:
        if self.gpu_request not in ("gpus-per-node", "gres"):
            raise ValueError(f"gpu_request must be 'gpus-per-node' or 'gres', not {self.gpu_request!r}")
        if self.signal_before_s is not None and self.signal_before_s < 1:
            raise ValueError("signal_before_s must be >= 1")


def job_name(name: str) -> str:
    """Deterministic Slurm job name for a request name (the duplicate check searches by it).

    Kept as-is when it is short and plain; otherwise made safe and suffixed with a hash
    so that two different names never collide.
    """
    if _SAFE_NAME.fullmatch(name) and len(name) <= 120:
        return name
    safe = re.sub(r"[^A-Za-z0-9._+=:@-]+", "_", name)[:100].strip("_") or "job"
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def slurm_path(path: Path) -> str:
    """A path for --output/--error: '%' is a pattern character there, '%%' a literal one."""
    text = str(path)
    if "\\" in text or "\n" in text:
        raise ValueError(f"log path {text!r}: Slurm cannot take backslashes or newlines in it")
    return text.replace("%", "%%")


def output_arg(req: JobRequest) -> str:
    if req.array is None:
        return slurm_path(req.log_path)
    marker = "@@TASK@@"  # escape the user's text first, then insert Slurm's task pattern
    return slurm_path(array_task_log(req.log_path, marker)).replace(marker, "%a")


def gpu_args(gpus: int, opts: SlurmOptions) -> list[str]:
    if gpus <= 0:
        return []
    typed = f"{opts.gpu_type}:{gpus}" if opts.gpu_type else str(gpus)
    if opts.gpu_request == "gres":
        return [f"--gres=gpu:{typed}"]
    return [f"--gpus-per-node={typed}"]


def nice_for(priority: int | None) -> int | None:
    """The --nice value that carries a JobRequest.priority (None: no --nice)."""
    if priority is None:
        return None
    return max(0, NICE_CEILING - int(priority))


def dependency_arg(ok: tuple[str, ...], end: tuple[str, ...] = ()) -> str:
    """--dependency value: afterok on `ok`, afterany on `end`, all required (','). Plain Slurm
    job ids only: nothing else reaches the flag."""
    bad = [j for j in (*ok, *end) if not _JOB_ID.fullmatch(j)]
    if bad:
        raise ValueError(f"not Slurm job ids: {bad[:3]}")
    parts = [f"{kind}:" + ":".join(ids) for kind, ids in (("afterok", ok), ("afterany", end)) if ids]
    return ",".join(parts)


def sbatch_argv(req: JobRequest, opts: SlurmOptions, script: Path) -> list[str]:
    """The sbatch command line (argv, no shell) that submits `script` for `req`."""
    argv = ["sbatch", "--parsable", f"--job-name={job_name(req.name)}",
            f"--output={output_arg(req)}", "--open-mode=append",  # a requeued run appends to the log
            f"--chdir={req.workdir}", "--nodes=1", "--ntasks=1", f"--cpus-per-task={req.cpus}"]
    if req.mem:
        argv.append(f"--mem={req.mem}")
    if req.time_limit:
        argv.append(f"--time={req.time_limit}")
    argv += gpu_args(req.gpus, opts)
    for flag, value in (("--partition", opts.partition), ("--account", opts.account), ("--qos", opts.qos)):
        if value:
            argv.append(f"{flag}={value}")
    argv.append("--requeue" if opts.requeue else "--no-requeue")
    if opts.signal_before_s:
        argv.append(f"--signal=B:USR1@{opts.signal_before_s}")
    if req.array is not None:
        argv.append(f"--array={req.array}")
    nice = nice_for(req.priority)
    if nice is not None:
        argv.append(f"--nice={nice}")
    if req.after or req.after_end:
        argv += [f"--dependency={dependency_arg(req.after, req.after_end)}", "--kill-on-invalid-dep=yes"]
    argv += list(opts.extra_args)
    argv.append(str(script))
    return argv


def render_script(req: JobRequest, opts: SlurmOptions) -> str:
    """The batch script: cd, exports, then the argv as a child that receives USR1."""
    if not req.command:
        raise ValueError(f"job {req.name!r}: empty command")
    check_env(req.env)
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        f"# Generated by compress_distill.backends.slurm_script for Slurm job {job_name(req.name)}.",
        "# Every value below is shell-quoted; change the JobRequest, not this file.",
        f"cd -- {q(str(req.workdir))} || exit 97",
    ]
    lines += [f"export {k}={q(str(v))}" for k, v in sorted(req.env.items())]
    lines += [
        'echo "[compress-distill] job ${SLURM_JOB_ID:-?} task ${SLURM_ARRAY_TASK_ID:--}'
        ' on ${SLURMD_NODENAME:-$(hostname)} restart ${SLURM_RESTART_COUNT:-0} start $(date -Is)"',
        "_signalled=0",
        "trap '_signalled=1; echo \"[compress-distill] USR1: time limit near, forwarding it to the job\";"
        " kill -USR1 \"$_child\" 2>/dev/null' USR1",
        " ".join(q(a) for a in req.command) + " &",
        "_child=$!",
        "while :; do",
        '  wait "$_child"; _rc=$?',
        '  [ "$_rc" -gt 128 ] || break',
        "  # a trapped signal interrupts wait (status >128) while the child runs on",
        '  kill -0 "$_child" 2>/dev/null && continue',
        '  wait "$_child" 2>/dev/null; _r2=$?; [ "$_r2" != 127 ] && _rc=$_r2',
        "  break",
        "done",
    ]
    if opts.requeue and opts.signal_before_s:
        lines += [
            'if [ "$_signalled" = 1 ] && [ "$_rc" != 0 ]; then',
            '  echo "[compress-distill] stopped before the time limit (exit $_rc): requeueing to resume"',
            '  scontrol requeue "$SLURM_JOB_ID" && sleep 300  # the requeue ends this script',
            "fi",
        ]
    lines += ['echo "[compress-distill] exit $_rc end $(date -Is)"', 'exit "$_rc"', ""]
    return "\n".join(lines)
