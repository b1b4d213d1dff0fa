"""The one writer of Slurm flags: resources -> `#SBATCH` lines and the sbatch argv.

`resource_flags` turns a job's resources into (flag, value) pairs; `sbatch_header` writes
them as `#SBATCH --flag=value` lines (the header of a node's job script, so that `sbatch
FILE` by hand asks for what the runner asks for), `sbatch_argv` as the argv the Slurm
backend runs. Site choices (partition, account, qos, how a GPU request is written) come
from the cluster profile, through `Resources` or `SlurmOptions`.

`#SBATCH` values are not shell, but a newline in one would start a shell line and sbatch
splits on spaces: they are checked against a conservative character set. argv elements
need no quoting (no shell), only Slurm's own `%` escape in paths (`slurm_path`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..backends.base import JobRequest
from ..backends.common import array_task_log
from .resources import Resources

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
_DIRECTIVE_SAFE = re.compile(r"^[A-Za-z0-9._:/@%+=,-]+$")


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


# --------------------------------------------------------------------------- the one resource writer

def resource_flags(*, job_name: str, cpus: int, mem: str | None, time_limit: str | None, gpus: int,
                   gpu_type: str | None, gpu_request: str, partition: str | None = None,
                   account: str | None = None, qos: str | None = None) -> list[tuple[str, str]]:
    """(flag, value) pairs of one single-node, single-task job: the same for header and argv."""
    pairs: list[tuple[str, str]] = [("job-name", job_name), ("nodes", "1"), ("ntasks", "1"),
                                    ("cpus-per-task", str(cpus))]
    if mem:
        pairs.append(("mem", mem))
    if time_limit:
        pairs.append(("time", time_limit))
    for flag, value in (("partition", partition), ("account", account), ("qos", qos)):
        if value:
            pairs.append((flag, value))
    if gpus > 0:
        typed = f"{gpu_type}:{gpus}" if gpu_type else str(gpus)
        if gpu_request == "gres":
            pairs.append(("gres", f"gpu:{typed}"))
        else:
            pairs.append(("gpus-per-node", typed))
    return pairs


def requeue_flags(requeue: bool, signal_before_s: int | None) -> list[str]:
    """--requeue (or --no-requeue: the site default varies) and the USR1 warning before the limit."""
    flags = ["--requeue" if requeue else "--no-requeue"]
    if signal_before_s:
        flags.append(f"--signal=B:USR1@{signal_before_s}")
    return flags


# --------------------------------------------------------------------------- #SBATCH header

def directive_value(name: str, value: Any) -> str:
    text = str(value)
    if not _DIRECTIVE_SAFE.match(text):
        raise ValueError(f"#SBATCH --{name}: {text!r} has characters outside [A-Za-z0-9._:/@%+=,-]; "
                         "rename it or pass the option on the sbatch command line")
    return text


def sbatch_header(res: Resources, job_name: str, log_path: str | Path | None = None,
                  extra: Sequence[str] = ()) -> list[str]:
    """The `#SBATCH` lines: single node, one task, resources from `res`, then `extra` flags."""
    pairs = resource_flags(job_name=job_name, cpus=res.cpus_per_task, mem=res.mem, time_limit=res.time_limit,
                           gpus=res.gpus, gpu_type=res.gpu_type, gpu_request=res.gpu_request,
                           partition=res.partition, account=res.account, qos=res.qos)
    if log_path is not None:
        pairs.append(("output", str(log_path)))
    lines = [f"#SBATCH --{k}={directive_value(k, v)}" for k, v in pairs]
    lines += [f"#SBATCH {directive_value('option', e)}" for e in extra]
    return lines


# --------------------------------------------------------------------------- sbatch argv

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
    pairs = resource_flags(job_name=job_name(req.name), cpus=req.cpus, mem=req.mem, time_limit=req.time_limit,
                           gpus=req.gpus, gpu_type=opts.gpu_type, gpu_request=opts.gpu_request,
                           partition=opts.partition, account=opts.account, qos=opts.qos)
    argv = ["sbatch", "--parsable", *(f"--{k}={v}" for k, v in pairs),
            f"--output={output_arg(req)}", "--open-mode=append",  # a requeued run appends to the log
            f"--chdir={req.workdir}", *requeue_flags(opts.requeue, opts.signal_before_s)]
    if req.array is not None:
        argv.append(f"--array={req.array}")
    nice = nice_for(req.priority)
    if nice is not None:
        argv.append(f"--nice={nice}")
    if req.after or req.after_end:
        argv += [f"--dependency={dependency_arg(req.after, req.after_end)}", "--kill-on-invalid-dep=yes"]
    if req.node is not None:
        argv.append(f"--nodelist={directive_value('nodelist', req.node)}")
    argv += list(opts.extra_args)
    argv.append(str(script))
    return argv
