"""`compress-distill preflight CONFIG`: in minutes, what would otherwise fail in the first hour of a grid.

Each check returns rows (check, subject, status, detail); `run_preflight` runs them all and the
CLI prints one table and exits non-zero on any FAIL. What each check proves, and what not:

| check       | proves | does not prove |
| ----------- | ------ | -------------- |
| env         | each program's env exists and carries the pinned release (compress_distill/jobs/envs/*.txt) | that its CUDA build matches the driver |
| gpu         | (`device: gpu` Slurm profiles) a 1-GPU job per env sees CUDA from that env's torch | multi-GPU NCCL |
| weights     | every hub model (and hub kernel) is staged in `cluster.weights.hf_home` | that the files are complete |
| tokenizer   | each student's template renders its reasoning key, and its EOT tokens are one token each | - |
| labels      | a 5-example `axolotl` preprocess per student keeps the traces and an EOT in the labels | the GPU kernels (the CPU overlay tokenizes the same way) |
| vllm-args   | vLLM's own parser and serve validation accept every rendered command line | that the model fits its GPUs |
| sbatch      | (Slurm) `sbatch --test-only` accepts every job script | that the jobs will start soon |
| time-limit  | (Slurm) each job kind's time limit fits its partition's | - |
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..axolotl_config import cpu_overlay, dump_yaml, render_axolotl_config
from ..config import StudyConfig
from ..envchecks import LABEL_CHECK, VLLM_CHECK
from ..plan import Cell, build_plan
from ..serving import mini_ref, resolve_model_dir
from .envs import env_dir, installed_version, pinned_version
from .weights import config_models, is_hub_id, job_env, staged

LABEL_ROWS = 5
_NO_SLURM = "Slurm's commands are not on PATH: run preflight on a login node of the cluster"
CHECKS = ("env", "gpu", "weights", "tokenizer", "labels", "vllm-args", "sbatch", "time-limit")


@dataclass(frozen=True)
class Row:
    check: str
    subject: str
    status: str  # PASS | FAIL | SKIP
    detail: str = ""


def _ok(check: str, subject: str, ok: bool, detail: str = "") -> Row:
    return Row(check, subject, "PASS" if ok else "FAIL", detail)


def _tail(text: str, n: int = 400) -> str:
    return " ".join(text.strip().split())[-n:]


# --------------------------------------------------------------------------- programs and their envs

def needed_programs(cfg: StudyConfig) -> list[str]:
    """The programs this config's jobs start: vLLM only where jobs serve with it, Axolotl only for its backend."""
    out = ["app"]
    if cfg.uses_vllm():
        out.append("vllm")
    if cfg.training.backend == "axolotl":
        out.append("axolotl")
    return out


def check_envs(cfg: StudyConfig) -> list[Row]:
    rows = []
    for program in needed_programs(cfg):
        env = env_dir(cfg, program)
        if env is None:  # app without an env: the orchestrator's own interpreter runs in jobs
            rows.append(Row("env", program, "PASS", "the orchestrator's interpreter (cluster.envs.app unset)"))
            continue
        if not (env / "bin" / "python").exists():
            rows.append(Row("env", program, "FAIL", f"{env} does not exist (cluster.envs.{program})"))
            continue
        want = pinned_version(program)
        have = installed_version(env, program)
        rows.append(_ok("env", program, have == want, f"{env}: {have or 'not installed'}, pinned {want}"))
    return rows


def check_gpus(cfg: StudyConfig, run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> list[Row]:
    """One short 1-GPU Slurm job per env: that env's torch must see CUDA there."""
    if cfg.cluster.backend != "slurm" or cfg.cluster.job_device != "gpu":
        return [Row("gpu", "all envs", "SKIP", f"{cfg.cluster.backend} profile, device {cfg.cluster.job_device}")]
    if not shutil.which("sbatch"):
        return [Row("gpu", "all envs", "FAIL", _NO_SLURM)]
    rows = []
    for program in needed_programs(cfg):
        env = env_dir(cfg, program)
        if env is None or not (env / "bin" / "python").exists():
            rows.append(Row("gpu", program, "SKIP", "no env (see the env rows)"))
            continue
        py = shlex.quote(str(env / "bin" / "python"))
        probe = f"{py} -c 'import torch; print(torch.cuda.device_count())'"
        argv = ["sbatch", "--wait", "--parsable", "--nodes=1", "--ntasks=1", "--time=10", "--gpus-per-node=1",
                f"--job-name=cd-preflight-{program}", "--output=/dev/stdout", f"--wrap={probe}"]
        if cfg.cluster.partition:
            argv.insert(1, f"--partition={cfg.cluster.partition}")
        proc = run(argv, capture_output=True, text=True, timeout=900)
        seen = proc.stdout.strip().splitlines()[-1:] if proc.returncode == 0 else []
        ok = bool(seen) and seen[0].isdigit() and int(seen[0]) >= 1
        rows.append(_ok("gpu", program, ok, f"torch sees {seen[0]} GPU(s)" if ok else _tail(proc.stderr + proc.stdout)))
    return rows


# --------------------------------------------------------------------------- weights and tokenizers

def check_weights(cfg: StudyConfig) -> list[Row]:
    rows = []
    hf_home = cfg.cluster.weights.hf_home
    for ref, where in ((m.ref, m.used_by) for m in config_models(cfg)):
        if mini_ref(ref) is not None:
            rows.append(Row("weights", ref, "PASS", "mini-world model, built by the DAG's build step"))
        elif not is_hub_id(ref):
            rows.append(_ok("weights", ref, (Path(ref) / "config.json").is_file(), f"local directory ({where})"))
        elif not hf_home:
            rows.append(Row("weights", ref, "FAIL", f"{where}: a hub model, and cluster.weights.hf_home is not set"))
        else:
            snap = staged(hf_home, ref)
            rows.append(_ok("weights", ref, snap is not None,
                            str(snap) if snap else f"not staged in {hf_home} ({where}): run "
                                                   "`compress-distill stage-weights CONFIG`"))
    return rows


def local_model_dir(cfg: StudyConfig, ref: str) -> Path | None:
    """Where a model's files are on this machine: a mini model's build, a local dir, a staged snapshot."""
    if mini_ref(ref) is not None or not is_hub_id(ref):
        try:
            return resolve_model_dir(ref)
        except (FileNotFoundError, ValueError):
            return None
    hf_home = cfg.cluster.weights.hf_home
    return staged(hf_home, ref) if hf_home else None


def template_text(cfg: StudyConfig, student: str, tokenizer_template: str | None) -> str | None:
    """The chat template the student trains with: ours, Axolotl's built-in, or the tokenizer's."""
    fam = cfg.family_for(student)
    if fam.template_file:
        return fam.template_text()
    if fam.chat_template == "tokenizer_default":
        return tokenizer_template
    axolotl = env_dir(cfg, "axolotl")
    hits = sorted(axolotl.glob(f"lib/python*/site-packages/axolotl/utils/chat_templates/templates/"
                               f"{fam.chat_template}.jinja")) if axolotl else []
    return hits[0].read_text() if hits else None


def check_tokenizers(cfg: StudyConfig) -> list[Row]:
    from transformers import AutoTokenizer

    rows = []
    probe = "PREFLIGHT-REASONING-PROBE"
    for name in cfg.students:
        fam = cfg.family_for(name)
        model_dir = local_model_dir(cfg, cfg.students[name].model)
        if model_dir is None:
            rows.append(Row("tokenizer", name, "SKIP", "weights not here (see the weights rows)"))
            continue
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        template = template_text(cfg, name, tok.chat_template)
        if not template:
            rows.append(Row("tokenizer", name, "FAIL", f"no chat template: {fam.chat_template!r} names none here "
                                                       "and the tokenizer has none"))
            continue
        msgs = [{"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A", fam.thinking_key: probe}]
        try:  # the tokenizer renders it as training does (HF's jinja, with {% generation %})
            extra: dict[str, Any] = {} if tok.bos_token else {"bos_token": ""}
            text = tok.apply_chat_template(msgs, chat_template=template, tokenize=False, **extra)
        except Exception as err:  # noqa: BLE001 - jinja errors and template exceptions alike
            rows.append(Row("tokenizer", name, "FAIL", f"the chat template does not render: {err}"))
            continue
        multi = [t for t in fam.eot_tokens if len(tok.encode(t, add_special_tokens=False)) != 1]
        problems = []
        if probe not in text:
            problems.append(f"the template does not render the reasoning key {fam.thinking_key!r}")
        if multi:
            problems.append(f"EOT token(s) {multi} are not single tokens of this vocabulary")
        missing = [t for t in fam.eot_tokens if t not in text]
        if missing:
            problems.append(f"EOT token(s) {missing} are not in the rendered turn")
        rows.append(_ok("tokenizer", name, not problems, "; ".join(problems) or
                        f"{fam.chat_template} renders {fam.thinking_key}; EOT {', '.join(fam.eot_tokens)}"))
    return rows


# --------------------------------------------------------------------------- Axolotl label check

def student_cells(cfg: StudyConfig) -> dict[str, Cell]:
    """One cell per student (its first trace-carrying cell): the label check's subject."""
    out: dict[str, Cell] = {}
    for c in build_plan(cfg).cells:
        if cfg.data_sources[c.data].uses_trace:
            out.setdefault(c.student, c)
    return out


def sample_rows(n: int = LABEL_ROWS) -> list[dict]:
    """Training records in traces/trainset.py's shape, each with a distinct trace and answer."""
    return [{"id": f"preflight-{i}", "messages": [
        {"role": "user", "content": f"What is {i} + {i + 3}? Answer with a number."},
        {"role": "assistant", "content": f"<think>Start from {i}. Adding {i + 3} to {i} gives {2 * i + 3}; "
                                         f"check: {2 * i + 3} - {i + 3} = {i}.</think>The answer is {2 * i + 3}."}]}
        for i in range(n)]


def check_labels(cfg: StudyConfig, workdir: Path) -> list[Row]:
    if cfg.training.backend != "axolotl":
        return [Row("labels", "all students", "SKIP", "training.backend is not axolotl")]
    axolotl = env_dir(cfg, "axolotl")
    if axolotl is None or not (axolotl / "bin" / "python").exists():
        return [Row("labels", "all students", "FAIL", "no Axolotl env (see the env rows)")]
    data = workdir / "labels" / "train.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in sample_rows()))
    rows = []
    plan = build_plan(cfg)
    for student, cell in student_cells(cfg).items():
        model_dir = local_model_dir(cfg, cfg.students[student].model)
        if model_dir is None:
            rows.append(Row("labels", student, "SKIP", "weights not here (see the weights rows)"))
            continue
        out = workdir / "labels" / student
        train = plan.nodes[f"train/{cell.name}"]
        axo = cpu_overlay(render_axolotl_config(train, dataset_path=data, output_dir=out, base_model=str(model_dir)))
        axo.update(val_set_size=0.0, dataset_processes=1)
        path = out / "axolotl.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump_yaml(axo, f"preflight label check for {student} ({cell.name})"))
        proc = subprocess.run([str(axolotl / "bin" / "python"), str(LABEL_CHECK), str(path), "--rows",
                               str(LABEL_ROWS)], capture_output=True, text=True, timeout=900,
                              env=_offline_env(cfg))
        line = next((x for x in proc.stdout.splitlines() if x.startswith(("PASS", "FAIL"))), "")
        detail = line.split(": ", 1)[-1] if line else _tail(proc.stderr + proc.stdout)
        rows.append(_ok("labels", student, proc.returncode == 0, detail))
    return rows


def _offline_env(cfg: StudyConfig) -> dict[str, str]:
    return {**os.environ, **job_env(cfg), "HF_HUB_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1"}


# --------------------------------------------------------------------------- job scripts

def check_vllm_args(cfg: StudyConfig, rendered: Path) -> list[Row]:
    env = env_dir(cfg, "vllm")
    if env is None or not (env / "bin" / "python").exists():
        status = "FAIL" if cfg.uses_vllm() else "SKIP"
        return [Row("vllm-args", "all serving jobs", status, f"no vLLM env ({env or 'cluster.envs.vllm unset'})")]
    proc = subprocess.run([str(env / "bin" / "python"), str(VLLM_CHECK), str(rendered)], capture_output=True,
                          text=True, timeout=600)
    fails = [x for x in proc.stdout.splitlines() if x.startswith("FAIL")]
    summary = next((x for x in proc.stdout.splitlines() if " vLLM command lines accepted" in x), "")
    rows = [Row("vllm-args", Path(x.split()[1].rstrip(":")).name, "FAIL", x.split(": ", 1)[-1]) for x in fails]
    if proc.returncode not in (0, 1) or not summary:
        rows.append(Row("vllm-args", "check", "FAIL", _tail(proc.stderr + proc.stdout)))
    elif not fails:
        rows.append(Row("vllm-args", "all serving jobs", "PASS", summary))
    return rows


def check_sbatch(cfg: StudyConfig, rendered: Path) -> list[Row]:
    if cfg.cluster.backend != "slurm":
        return [Row("sbatch", "all jobs", "SKIP", "local backend")]
    if not shutil.which("sbatch"):
        return [Row("sbatch", "all jobs", "FAIL", _NO_SLURM)]
    scripts = sorted(rendered.rglob("*.sbatch"))
    fails = []
    for script in scripts:
        proc = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=60,
                              cwd=rendered)
        if proc.returncode != 0:
            fails.append(Row("sbatch", str(script.relative_to(rendered)), "FAIL", _tail(proc.stderr)))
    return fails or [Row("sbatch", "all jobs", "PASS", f"sbatch --test-only accepted {len(scripts)} scripts")]


_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def slurm_minutes(text: str) -> float | None:
    """Slurm's time formats (D-HH:MM:SS, HH:MM:SS, MM:SS, MM, D-HH) in minutes; None for UNLIMITED."""
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE", "N/A"):
        return None
    m = _TIME.match(text)
    if not m:
        raise ValueError(f"not a Slurm time: {text!r}")
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        return days * 1440 + (a or 0) * 60 + (b or 0) + (c or 0) / 60
    if c is not None:  # HH:MM:SS
        return (a or 0) * 60 + (b or 0) + c / 60
    if b is not None:  # MM:SS
        return (a or 0) + b / 60
    return float(a or 0)  # MM


def check_time_limits(cfg: StudyConfig, sinfo: Callable[[], str] | None = None) -> list[Row]:
    if cfg.cluster.backend != "slurm":
        return [Row("time-limit", "all jobs", "SKIP", "local backend")]
    if sinfo is None and not shutil.which("sinfo"):
        return [Row("time-limit", "all jobs", "FAIL", _NO_SLURM)]
    text = sinfo() if sinfo else subprocess.run(["sinfo", "-h", "-o", "%P %l"], capture_output=True, text=True,
                                                timeout=30).stdout
    limits = {}
    for line in text.splitlines():
        if line.strip():
            part, limit = line.split()
            limits[part.rstrip("*")] = limit
    part = cfg.cluster.partition or next((p.rstrip("*") for p in text.split() if p.endswith("*")), "")
    if part not in limits:
        return [Row("time-limit", part or "(default)", "FAIL", f"partition not in sinfo: {sorted(limits)}")]
    cap = slurm_minutes(limits[part])
    rows = []
    for kind in sorted({n.job.kind for n in build_plan(cfg).nodes.values()}):
        want = slurm_minutes(cfg.cluster.job(kind).time_limit)
        ok = cap is None or (want is not None and want <= cap)
        rows.append(_ok("time-limit", kind, ok, f"{cfg.cluster.job(kind).time_limit} on {part} (max {limits[part]})"))
    return rows


# --------------------------------------------------------------------------- all of it

def run_preflight(cfg: StudyConfig, *, workdir: Path | None = None, skip: Iterable[str] = ()) -> list[Row]:
    """Every check, in the order a user would fix them. `skip`: check names to leave out."""
    from ..jobs.study import render_study

    skipped = set(skip)
    with tempfile.TemporaryDirectory(prefix="cd-preflight-") as tmp:
        work = workdir or Path(tmp)
        rendered = work / "render"
        render_study(cfg, rendered, store_root=work / "store")
        checks: list[tuple[str, Callable[[], list[Row]]]] = [  # the order of CHECKS
            ("env", lambda: check_envs(cfg)),
            ("gpu", lambda: check_gpus(cfg)),
            ("weights", lambda: check_weights(cfg)),
            ("tokenizer", lambda: check_tokenizers(cfg)),
            ("labels", lambda: check_labels(cfg, work)),
            ("vllm-args", lambda: check_vllm_args(cfg, rendered)),
            ("sbatch", lambda: check_sbatch(cfg, rendered)),
            ("time-limit", lambda: check_time_limits(cfg)),
        ]
        rows: list[Row] = []
        for name, fn in checks:
            if name in skipped:
                rows.append(Row(name, "-", "SKIP", "--skip"))
                continue
            try:
                rows += fn()
            except Exception as err:  # noqa: BLE001 - a check that cannot run is a failed check, with its reason
                rows.append(Row(name, "-", "FAIL", f"{type(err).__name__}: {err}"))
    return rows

