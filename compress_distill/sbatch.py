"""Pure rendering of sbatch scripts from `slurm/templates/*.sh.j2`.

One function per job kind returns the script text; nothing here touches
Slurm. Three rules keep config strings from ever becoming shell code:

- Every `{{ ... }}` in a template must go through the `q` (one word) or
  `qargs` (an argv list) filter, both `shlex.quote`, or `ident` (a
  validated variable name). Any other string reaching the output raises
  `UnquotedValue` at render time, so a template edit cannot silently paste
  raw text. Numbers pass (they are inert).
- `#SBATCH` directive values are not shell, but a newline in one would start
  a shell line, and sbatch splits on spaces; values are checked against a
  conservative character set and rejected otherwise.
- Structured inputs the client needs go through files (the Axolotl YAML,
  the config snapshot) whose *paths* are quoted variables.

Resources come from the cluster profile (`cluster.jobs[kind]`); per-call
`overrides` may change them, and an unknown override key is an error that
lists the valid ones.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from .config import ClusterProfile, ServeSpec, StudyConfig
from .envs import env_dir
from .plan import Cell
from .vllm_args import server_argv

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "slurm" / "templates"
# Seconds before the time limit at which Slurm sends USR1 to a training job's batch shell.
REQUEUE_SIGNAL_S = 600
# torchrun/accelerate: one process per GPU; python: a single process (CPU, mini world).
LAUNCHERS = ("torchrun", "accelerate", "python")
_DIRECTIVE_SAFE = re.compile(r"^[A-Za-z0-9._:/@%+=,-]+$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class UnquotedValue(jinja2.TemplateError):
    """A template interpolated a string without `|q`: refused, it could be shell code."""


class _Quoted(str):
    """Marks text already made shell-safe by `q`/`qargs` (or built from validated parts)."""


def _q(value: Any) -> _Quoted:
    if value is None:
        return _Quoted("''")
    if isinstance(value, bool):
        raise TypeError("booleans have no single shell spelling; branch on them in the template")
    return _Quoted(shlex.quote(str(value)))


def _qargs(argv: Sequence[Any]) -> _Quoted:
    if isinstance(argv, str):
        raise TypeError("qargs takes an argv list, not a string (a string would be split by nobody)")
    return _Quoted(" ".join(_q(a) for a in argv))


def _ident(name: str) -> _Quoted:
    """A shell variable name: validated, not quoted (quotes would make it a command)."""
    if not _ENV_NAME.match(name):
        raise ValueError(f"environment variable name {name!r} must match {_ENV_NAME.pattern}")
    return _Quoted(name)


def _finalize(value: Any) -> Any:
    if isinstance(value, _Quoted):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    raise UnquotedValue(f"template interpolates {value!r} without |q or |qargs")


@cache
def _env(template_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,  # a missing variable is an error, not an empty string
        finalize=_finalize,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # shell, not HTML: quoting is enforced by _finalize instead
    )
    env.filters["q"] = _q
    env.filters["qargs"] = _qargs
    env.filters["ident"] = _ident
    return env


# --------------------------------------------------------------------------- resources

@dataclass(frozen=True)
class Resources:
    """Everything the `#SBATCH` header of one job says. Field names are the valid override keys."""

    partition: str | None
    account: str | None
    qos: str | None
    time_limit: str
    cpus_per_task: int
    mem: str
    gpus: int
    gpu_type: str | None
    gpu_request: str
    container: str | None
    # GPUs the job must see before it starts its work (0 on a `device: cpu` profile, whose GPUs
    # may be fake): fewer fails the job at once, instead of vLLM or torch quietly using the CPU.
    require_gpus: int = 0
    requeue_signal_s: int = REQUEUE_SIGNAL_S


RESOURCE_KEYS = tuple(f.name for f in fields(Resources))


def resolve_resources(cluster: ClusterProfile, kind: str, gpus: int,
                      overrides: Mapping[str, Any] | None = None) -> Resources:
    """Cluster profile + job kind (+ overrides) -> resources. Unknown override keys are an error."""
    job = cluster.job(kind)
    res = Resources(
        partition=cluster.partition, account=cluster.account, qos=cluster.qos,
        time_limit=job.time_limit, cpus_per_task=job.cpus_for(gpus), mem=job.mem_for(gpus), gpus=gpus,
        gpu_type=cluster.gpu_type, gpu_request=cluster.gpu_request, container=job.container,
        require_gpus=gpus if cluster.job_device == "gpu" else 0,
    )
    overrides = dict(overrides or {})
    bad = sorted(set(overrides) - set(RESOURCE_KEYS))
    if bad:
        raise ValueError(f"unknown resource key(s) {', '.join(map(repr, bad))}; valid: {', '.join(RESOURCE_KEYS)}")
    res = replace(res, **overrides)
    if res.gpu_request not in ("gpus-per-node", "gres"):
        raise ValueError(f"gpu_request must be 'gpus-per-node' or 'gres', got {res.gpu_request!r}")
    return res


def _directive_value(name: str, value: Any) -> str:
    text = str(value)
    if not _DIRECTIVE_SAFE.match(text):
        raise ValueError(f"#SBATCH --{name}: {text!r} has characters outside [A-Za-z0-9._:/@%+=,-]; "
                         "rename it or pass the option on the sbatch command line")
    return text


def sbatch_header(res: Resources, job_name: str, log_path: str | Path | None = None,
                  extra: Sequence[str] = ()) -> list[_Quoted]:
    """The `#SBATCH` lines: single node, one task, resources from `res`."""
    opts: list[tuple[str, Any]] = [("job-name", job_name), ("nodes", 1), ("ntasks", 1),
                                   ("cpus-per-task", res.cpus_per_task), ("mem", res.mem),
                                   ("time", res.time_limit)]
    for name in ("partition", "account", "qos"):
        if getattr(res, name):
            opts.append((name, getattr(res, name)))
    if res.gpus > 0:
        typed = f"{res.gpu_type}:{res.gpus}" if res.gpu_type else str(res.gpus)
        if res.gpu_request == "gres":
            opts.append(("gres", f"gpu:{typed}"))
        else:
            opts.append(("gpus-per-node", typed))
    if log_path is not None:
        opts.append(("output", log_path))
    lines = [f"#SBATCH --{k}={_directive_value(k, v)}" for k, v in opts]
    lines += [f"#SBATCH {_directive_value('option', e)}" for e in extra]
    return [_Quoted(line) for line in lines]


# In place of the #SBATCH lines when the runner submits a script through a job backend:
# there, the resources go on the sbatch command line (backends/slurm_script.py).
NO_HEADER = [_Quoted("# Resources: on the sbatch command line of the job backend (see the .sbatch file"
                     " next to the log)")]
SERVERS = ("vllm", "cpu", "stage")  # stage: no server in the job, the stage serves itself
# The project's CPU server, started in place of `vllm serve` when SERVER=cpu.
CPU_SERVER_MODULE = "compress_distill.generation.local_server"


def _server_args(server: str, cpu_server_argv: Sequence[str]) -> dict[str, Any]:
    if server not in SERVERS:
        raise ValueError(f"server must be one of {', '.join(SERVERS)}; got {server!r}")
    argv = list(cpu_server_argv) or ["python", "-m", CPU_SERVER_MODULE]
    return {"server": server, "cpu_server_argv": argv}


def _check_env_names(env: Mapping[str, Any]) -> dict[str, Any]:
    for name in env:
        _ident(name)  # fail at the call, not halfway through rendering
    return dict(env)


def _render(template: str, template_dir: Path | None, **ctx: Any) -> str:
    return _env(template_dir or TEMPLATE_DIR).get_template(template).render(**ctx)


# --------------------------------------------------------------------------- job kinds

def render_vllm_job(
    cfg: StudyConfig, *, job_name: str, model: str, serve: ServeSpec, client_argv: Sequence[str],
    workdir: str | Path, log_path: str | Path | None = None, served_model_name: str | None = None,
    client_env: Mapping[str, Any] | None = None, extra_serve_args: Sequence[str] = (),
    kind: str = "vllm", overrides: Mapping[str, Any] | None = None, template_dir: Path | None = None,
    server: str = "vllm", cpu_server_argv: Sequence[str] = (), log_dir: str | Path | None = None,
    header: bool = True, template: str = "vllm_job.sh.j2", client_model: str | None = None,
    **template_data: Any,
) -> str:
    """A job that serves `model` with vLLM on 127.0.0.1, waits for /health, runs the client, tears down.

    The vLLM command line is `vllm_args.server_argv` (the one writer of vLLM flags), from the
    profile's `envs.vllm` and `device`. `server="cpu"`: the project's CPU server
    (`cpu_server_argv`, default `python -m compress_distill.generation.local_server`) instead
    of vLLM, for mini-world models on a cluster without GPUs. `log_dir`: where the server log
    goes (default `workdir`). `header=False`: no #SBATCH lines (a job backend puts the
    resources on sbatch's argv). `client_model`: the name the client asks for (default the
    served name; a LoRA adapter is served under its own name).
    """
    if not client_argv:
        raise ValueError("client_argv is empty: the serving job needs a client command to run")
    res = resolve_resources(cfg.cluster, kind, serve.gpus, overrides)
    name = served_model_name or model
    env = env_dir(cfg, "vllm")
    vllm_argv = server_argv(model, serve, env=str(env) if env else None, device=cfg.cluster.job_device,
                            served_model_name=name, extra=extra_serve_args)
    return _render(
        template, template_dir, header=sbatch_header(res, job_name, log_path) if header else NO_HEADER,
        res=res, model=model, served_model_name=name, client_model=client_model or name, serve=serve,
        vllm_argv=vllm_argv, client_argv=list(client_argv), client_env=_check_env_names(client_env or {}),
        workdir=str(workdir), log_dir=str(log_dir or workdir), **_server_args(server, cpu_server_argv),
        **template_data,
    )


def render_train_job(
    cfg: StudyConfig, cell: Cell | None, *, job_name: str, axolotl_config: str | Path, output_dir: str | Path,
    workdir: str | Path, log_path: str | Path | None = None, launcher: str = "torchrun",
    preflight: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
    template_dir: Path | None = None, trainer_argv: Sequence[str] = (), gpus: int | None = None,
    header: bool = True,
) -> str:
    """One-node Axolotl training with `--requeue`, a USR1 self-requeue and checkpoint auto-resume.

    `preflight`: a script run as `python PREFLIGHT AXOLOTL_CONFIG` in the job's environment
    before a fresh start (scripts/check_axolotl_labels.py); a non-zero exit fails the job.
    `trainer_argv`: a command that trains instead of the Axolotl launcher (the runner's
    node_main for `training.backend: trl`); `cell` may then be None with `gpus` given
    (e.g. a mini-world build node). `header=False`: no #SBATCH lines.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}; got {launcher!r}")
    if gpus is None:
        if cell is None:
            raise ValueError("render_train_job needs a cell or gpus")
        gpus = cell.gpus
    res = resolve_resources(cfg.cluster, "train", gpus, overrides)
    extra = ["--requeue", f"--signal=B:USR1@{res.requeue_signal_s}", "--open-mode=append"]
    return _render(
        "train_axolotl.sh.j2", template_dir,
        header=sbatch_header(res, job_name, log_path, extra) if header else NO_HEADER, res=res,
        axolotl_config=str(axolotl_config), output_dir=str(output_dir),
        nproc=max(gpus, 1), launcher=launcher, workdir=str(workdir),
        preflight=str(preflight) if preflight else "", trainer_argv=list(trainer_argv),
        axolotl_env=cfg.cluster.envs.axolotl or "",
    )


def render_eval_job(
    cfg: StudyConfig, cell: Cell, *, job_name: str, checkpoint: str | Path, client_argv: Sequence[str],
    workdir: str | Path, log_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
    template_dir: Path | None = None, server: str = "vllm", cpu_server_argv: Sequence[str] = (),
    log_dir: str | Path | None = None, merged: bool = False, header: bool = True, lora_rank: int | None = None,
) -> str:
    """Serve one trained checkpoint with vLLM (greedy, the evaluation token cap) and run the eval client.

    The client always asks for the model `student` (CD_SERVED_MODEL). A LoRA cell (`lora_rank`: its
    adapter rank, read from its train node, `Plan.train_params(cell).lora_rank`)
    serves the base model with the adapter attached under that name
    (`--enable-lora`), so no merge step is needed. `merged=True` (the CPU trainer
    saves LoRA merged into the weights) and `server="cpu"` serve the checkpoint itself.
    `--generation-config vllm` stops the checkpoint's generation_config.json from adding
    sampling defaults (top_k, repetition_penalty) to what should be plain greedy decoding.
    """
    ev = cfg.evaluation
    student = cfg.students[cell.student]
    lora_rank = lora_rank if not merged and server == "vllm" else None
    # The family's serve flags (Qwen3.5: --language-model-only). A LoRA adapter is served on its base
    # model with the tokenizer Axolotl saved beside it: that one carries the chat template the cell
    # trained with (a Llama-3.1 base tokenizer has none).
    extra = ["--generation-config", "vllm", *cfg.family_for(cell.student).serve_args]
    if lora_rank:
        extra += ["--enable-lora", "--max-lora-rank", str(lora_rank), "--lora-modules", f"student={checkpoint}",
                  "--tokenizer", str(checkpoint)]
    return render_vllm_job(
        cfg, job_name=job_name, model=student.model if lora_rank else str(checkpoint), serve=ev.serve,
        client_argv=client_argv, workdir=workdir, log_path=log_path,
        served_model_name="student-base" if lora_rank else "student", client_model="student",
        client_env={"CD_EVAL_MAX_TOKENS": ev.max_tokens, "CD_EVAL_TEMPERATURE": ev.temperature},
        extra_serve_args=extra, kind="eval", overrides=overrides, template_dir=template_dir, server=server,
        cpu_server_argv=cpu_server_argv, log_dir=log_dir, header=header, template="eval_job.sh.j2",
        checkpoint=str(checkpoint),
    )
