"""Pure rendering of job scripts from the package's templates (`jobs/templates/*.sh.j2`).

One function per job kind returns the script text; nothing here touches
Slurm. Three rules keep config strings from ever becoming shell code:

- Every `{{ ... }}` in a template must go through the `q` (one word) or
  `qargs` (an argv list) filter, both `shlex.quote`, or `ident` (a
  validated variable name). Any other string reaching the output raises
  `UnquotedValue` at render time, so a template edit cannot silently paste
  raw text. Numbers pass (they are inert).
- `#SBATCH` directive values are not shell, but a newline in one would start
  a shell line, and sbatch splits on spaces; values are checked against a
  conservative character set and rejected otherwise (flags.sbatch_header).
- Structured inputs the client needs go through files (the Axolotl YAML,
  the config snapshot) whose *paths* are quoted variables.

Resources come from the cluster profile (`cluster.jobs[kind]`, resources.py); per-call
`overrides` may change them, and an unknown override key is an error that
lists the valid ones. No template requeues: the batch wrapper (script.py) does.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from ..cluster.envs import env_dir
from ..cluster.vllm_args import server_argv
from ..config import ServeSpec, StudyConfig
from ..plan import Cell
from .flags import sbatch_header
from .resources import Resources, resolve_resources

# Package data (pyproject: tool.setuptools.package-data), so an installed wheel has them too.
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
# torchrun/accelerate: one process per GPU; python: a single process (CPU, mini world).
LAUNCHERS = ("torchrun", "accelerate", "python")
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


def _header(res: Resources, job_name: str, log_path: str | Path | None = None,
            extra: Sequence[str] = ()) -> list[_Quoted]:
    """The `#SBATCH` lines (flags.sbatch_header, the one flag writer), marked safe: checked there."""
    return [_Quoted(line) for line in sbatch_header(res, job_name, log_path, extra)]


# In place of the #SBATCH lines when the runner submits a script through a job backend:
# there, the resources go on the sbatch command line (flags.sbatch_argv).
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
        template, template_dir, header=_header(res, job_name, log_path) if header else NO_HEADER,
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
    header: bool = True, kind: str = "train",
) -> str:
    """One-node Axolotl training with checkpoint auto-resume (requeue: the batch wrapper, script.py).

    `preflight`: a script run as `python PREFLIGHT AXOLOTL_CONFIG` in the job's environment
    before a fresh start (envchecks/check_axolotl_labels.py); a non-zero exit fails the job.
    `trainer_argv`: a command that trains instead of the Axolotl launcher (the runner's
    node_main for `training.backend: trl`); `cell` may then be None with `gpus` given
    (e.g. a mini-world build node). `header=False`: no #SBATCH lines. The header asks for no
    requeue: `--requeue --signal=B:USR1@N` go on the Slurm backend's argv, and its batch
    wrapper (script.py) is what requeues on USR1.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}; got {launcher!r}")
    if gpus is None:
        if cell is None:
            raise ValueError("render_train_job needs a cell or gpus")
        gpus = cell.gpus
    res = resolve_resources(cfg.cluster, kind, gpus, overrides)
    return _render(
        "train_axolotl.sh.j2", template_dir,
        header=_header(res, job_name, log_path) if header else NO_HEADER, res=res,
        axolotl_config=str(axolotl_config), output_dir=str(output_dir),
        nproc=max(gpus, 1), launcher=launcher, workdir=str(workdir),
        preflight=str(preflight) if preflight else "", trainer_argv=list(trainer_argv),
        axolotl_env=cfg.cluster.envs.axolotl or "",
    )


def render_eval_job(
    cfg: StudyConfig, cell: Cell, *, job_name: str, checkpoint: str | Path, client_argv: Sequence[str],
    workdir: str | Path, log_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
    template_dir: Path | None = None, server: str = "vllm", cpu_server_argv: Sequence[str] = (),
    log_dir: str | Path | None = None, merged: bool = False, header: bool = True, kind: str = "eval",
    lora_rank: int | None = None,
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
        extra_serve_args=extra, kind=kind, overrides=overrides, template_dir=template_dir, server=server,
        cpu_server_argv=cpu_server_argv, log_dir=log_dir, header=header, template="eval_job.sh.j2",
        checkpoint=str(checkpoint),
    )
