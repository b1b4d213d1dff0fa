"""Train one student cell with Axolotl 0.19, in its own environment, as a subprocess.

The cell's config is the one the cluster renders (`axolotl_config.render_axolotl_config`,
one code path), from the train node's identity: the hyperparameters its key hashed. Only a profile with `cluster.device: cpu` (the mini world, the dev
cluster's fake GPUs) trains with `cpu_overlay` plus `CPU_RUN` below; on a `device: gpu`
profile a job whose Axolotl env sees fewer GPUs than the cell asks for fails at once,
never falling back to the CPU. `axolotl.cli.train` runs from the profile's Axolotl env
(`cluster.envs.axolotl`; on one machine `<repo>/.venv-axolotl` by default; its
torch/transformers pins differ from ours, so it is never imported here), logging to
`<work>/axolotl.log`. Outputs in the work dir, the same
as the TRL backend's:

- `model/`: a plain HF model dir plus Axolotl's saved tokenizer (LoRA merged into the base);
- `loss.parquet`: the loss curve (`loss_log.SCHEMA`) from the final checkpoint's
  `trainer_state.json`; `elapsed_s` is when each loss line reached our log (training
  seconds that survived, continued across resumes); `tokens_seen` is Axolotl's
  `tokens/total`, i.e. token slots, padding included (TRL counts non-padding tokens);
- `train_result.json`: the TrainResult (examples and trainable tokens per epoch are
  read from the tokenized set Axolotl prepares).

Resume: Axolotl's `auto_resume_from_checkpoints` picks the newest `checkpoint-N` in
`<work>/axolotl/`. Every run ends with a checkpoint (save_strategy `steps`), which is
where the loss log is read from; the whole dir is removed once `model/` is published.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.ipc as ipc

from compress_distill.axolotl_config import cpu_overlay, dump_yaml, render_axolotl_config
from compress_distill.cluster.envs import env_dir
from compress_distill.config import StudyConfig
from compress_distill.envchecks import LABEL_CHECK
from compress_distill.plan import Node, TrainParams
from compress_distill.store import atomic_write_text, write_parquet
from compress_distill.training.data import count_label_tokens
from compress_distill.training.loss_log import LOSS_FILE, SCHEMA
from compress_distill.training.trl_backend import MODEL_DIR, RESULT_FILE, TrainResult

log = logging.getLogger(__name__)

OUTPUT_DIR = "axolotl"  # Axolotl's output_dir in the work dir: checkpoints, prepared data, final save
CONFIG_FILE = "axolotl.yaml"
LOG_FILE = "axolotl.log"
TIMES_FILE = "loss_times.jsonl"  # (step, elapsed_s) per loss line, appended as they arrive
PREFLIGHT = LABEL_CHECK  # run by path with the Axolotl env's python (compress_distill is not installed there)

# On top of `cpu_overlay` (fp32, sdpa, no plugins/FSDP/packing, LoRA kernels off): a loss row
# per step as TRL logs, tokenisation in-process (two cores), and checkpoints only every
# `training.save_steps` (else only the final one, which holds the loss log): the paper's
# 10 saves per epoch would save after every step of a mini run.
CPU_RUN: dict[str, Any] = {"logging_steps": 1, "dataset_processes": 1, "dataloader_num_workers": 0,
                           "save_strategy": "steps"}
_NEVER = 10**9  # save_steps that never fires before the end-of-training save
_NOT_MODEL = ("README.md", "debug.log", "training_args.bin", "trainer_state.json", CONFIG_FILE)
_LOSS_LINE = re.compile(r"[{,]\s*'loss':")


def axolotl_env(cfg: StudyConfig) -> Path:
    """The profile's Axolotl env (`cluster.envs.axolotl`; on one machine `<repo>/.venv-axolotl`)."""
    env = env_dir(cfg, "axolotl")
    if env is None:
        raise FileNotFoundError("cluster.envs.axolotl is not set: a Slurm profile must name the Axolotl env "
                                "that its train jobs use (pinned in compress_distill/jobs/envs/axolotl-gpu.txt)")
    if not (env / "bin" / "python").exists():
        hint = "cluster.envs.axolotl" if cfg.cluster.envs.axolotl else "run `bash scripts/setup-axolotl.sh`"
        raise FileNotFoundError(f"Axolotl environment {env} not found ({hint})")
    return env


def train_gpus(cfg: StudyConfig, env: Path, want: int) -> int:
    """GPUs to train on: 0 (the CPU overlay) on a `device: cpu` profile; else `want`, which the
    Axolotl env's torch must see, or the job fails here naming what it saw."""
    if cfg.cluster.job_device == "cpu":
        return 0
    probe = subprocess.run([str(env / "bin" / "python"), "-c", "import torch; print(torch.cuda.device_count())"],
                           capture_output=True, text=True, timeout=300, env=_env(env, gpus=None))
    seen = int(probe.stdout.strip() or 0) if probe.returncode == 0 else 0
    if seen < max(want, 1):
        raise RuntimeError(
            f"this train job asked for {want} GPU(s) but the Axolotl env's torch ({env}) sees {seen} "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). Is that env a CUDA "
            f"build (compress_distill/jobs/envs/axolotl-gpu.txt)? Only a `cluster.device: cpu` profile trains on CPU.\n"
            f"{probe.stderr[-500:]}")
    return want


def cell_config(cfg: StudyConfig, node: Node, *, dataset: Path, output_dir: Path, base_model: str,
                gpus: int) -> dict[str, Any]:
    """The cluster's config for the cell's train node, with the CPU overlay when there is no GPU. Pure.
    `cfg` gives only what is not identity: how often a CPU run checkpoints (`training.save_steps`)."""
    axo = render_axolotl_config(node, dataset_path=dataset, output_dir=output_dir, base_model=base_model)
    if gpus:
        return axo
    axo = {k: v for k, v in cpu_overlay(axo).items() if k != "saves_per_epoch"}
    return {**axo, **CPU_RUN, "save_steps": cfg.training.save_steps or _NEVER}


def _env(env: Path, *, gpus: int | None) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    out.update(PATH=f"{env / 'bin'}{os.pathsep}{out.get('PATH', '')}", VIRTUAL_ENV=str(env),
               AXOLOTL_DO_NOT_TRACK="1", PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    if gpus == 0:
        out["CUDA_VISIBLE_DEVICES"] = ""
    return out


def _checkpoints(out: Path) -> list[Path]:
    found = [p for p in out.glob("checkpoint-*") if p.name.rsplit("-", 1)[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[-1]))


def _read_times(path: Path) -> dict[int, float]:
    """step -> cumulative elapsed_s; a later attempt's line for a step replaces an earlier one."""
    times: dict[int, float] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                times[int(rec["step"])] = float(rec["elapsed_s"])
    return times


def _stream(proc: subprocess.Popen[bytes], logf: IO[bytes], times: IO[str], *, start_step: int, offset: float,
            logging_steps: int) -> None:
    """Copy the child's output into the log; time-stamp each loss line with its step."""
    assert proc.stdout is not None
    t0: float | None = None
    k = 0
    for raw in proc.stdout:
        logf.write(raw)
        line = raw.decode(errors="replace")
        if t0 is None and "Starting trainer" in line:
            t0 = time.perf_counter()
        if _LOSS_LINE.search(line):
            k += 1
            step = (start_step // logging_steps + k) * logging_steps
            elapsed = offset + time.perf_counter() - (t0 if t0 is not None else time.perf_counter())
            times.write(json.dumps({"step": step, "elapsed_s": elapsed}) + "\n")
            times.flush()


def run_axolotl(config_path: Path, out: Path, work: Path, env: Path, *, gpus: int, logging_steps: int) -> None:
    """`axolotl.cli.train` on the config (torchrun over `gpus` GPUs, plain python on CPU); raises on failure.

    `out` is the config's output_dir; the log goes to `work`, which is also the child's cwd.
    """
    ckpts = _checkpoints(out)
    start_step = int(ckpts[-1].name.rsplit("-", 1)[-1]) if ckpts else 0
    offset = _read_times(out / TIMES_FILE).get(start_step, 0.0) if start_step else 0.0
    py = str(env / "bin" / "python")
    if gpus == 0:
        launch = [py, "-m", "axolotl.cli.train"]
    else:
        launch = [str(env / "bin" / "torchrun"), "--standalone", "--nnodes", "1", "--nproc-per-node", str(gpus),
                  "-m", "axolotl.cli.train"]
        if not ckpts:  # a wasted GPU run costs more than the check: traces must reach the labels
            subprocess.run([py, str(PREFLIGHT), str(config_path)], check=True, env=_env(env, gpus=gpus))
    log.info("axolotl train (%s)%s; log in %s", f"{gpus} GPU" if gpus else "CPU",
             f", resuming from {ckpts[-1].name}" if ckpts else "", work / LOG_FILE)
    out.mkdir(parents=True, exist_ok=True)
    with open(work / LOG_FILE, "ab") as logf, open(out / TIMES_FILE, "a") as times:
        logf.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(launch)} {config_path}\n".encode())
        proc = subprocess.Popen([*launch, str(config_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=_env(env, gpus=gpus), cwd=work)
        try:
            _stream(proc, logf, times, start_step=start_step, offset=offset, logging_steps=logging_steps)
        finally:
            rc = proc.wait()
    if rc != 0:
        tail = (work / LOG_FILE).read_bytes()[-4000:].decode(errors="replace")
        raise RuntimeError(f"axolotl train exited with {rc}; full log: {work / LOG_FILE}\n{tail}")


def loss_rows(history: list[dict[str, Any]], times: Mapping[int, float]) -> list[dict[str, Any]]:
    """`loss.parquet` rows from a trainer_state log_history (entries without `loss` are summaries).

    Axolotl restarts its `tokens/total` counter on resume; a drop is continued from the row before.
    """
    rows: list[dict[str, Any]] = []
    raw_prev, offset = 0, 0
    for h in history:
        if "loss" not in h:
            continue
        raw = int(h.get("tokens/total") or 0)
        if raw < raw_prev:
            offset = rows[-1]["tokens_seen"]
        raw_prev = raw
        rows.append({"step": int(h["step"]), "epoch": float(h.get("epoch") or 0.0), "loss": float(h["loss"]),
                     "learning_rate": float(h.get("learning_rate", float("nan"))), "tokens_seen": offset + raw,
                     "elapsed_s": times.get(int(h["step"]), float("nan"))})
    return rows


def _prepared_labels(out: Path) -> pa.ChunkedArray | None:
    """The `labels` column of the tokenized set Axolotl prepared (newest, if several)."""
    arrows = sorted((out / "prepared").glob("*/data-*.arrow"), key=lambda p: p.stat().st_mtime)
    if not arrows:
        return None
    newest = arrows[-1].parent
    tables = [ipc.open_stream(pa.memory_map(str(p))).read_all() for p in sorted(newest.glob("data-*.arrow"))]
    return pa.concat_tables(tables).column("labels")


def _safetensors_params(paths: list[Path]) -> int:
    """Parameter count from safetensors headers (no tensors loaded)."""
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for name, meta in header.items():
            if name != "__metadata__":
                n = 1
                for d in meta["shape"]:
                    n *= d
                total += n
    return total


def servable_config(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config.json as vLLM must read it: the KV cache on (Axolotl trains with it off), and
    no `FSDP` prefix on the architecture (an FSDP save of gpt-oss writes `FSDPGptOssForCausalLM`,
    transformers#40207; vLLM knows `GptOssForCausalLM`)."""
    out = dict(config)
    if out.get("use_cache") is False:
        out["use_cache"] = True
    archs = out.get("architectures")
    if isinstance(archs, list):
        out["architectures"] = [a.removeprefix("FSDP") if isinstance(a, str) else a for a in archs]
    return out


def publish_model(out: Path, base_model: str, dest: Path) -> None:
    """`dest`: Axolotl's final save as a plain model dir (a LoRA adapter merged into the base)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lora = (out / "adapter_config.json").is_file()
    if lora:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(base_model, dtype="auto")
        PeftModel.from_pretrained(base, out).merge_and_unload().save_pretrained(tmp)
    for f in out.iterdir():
        if not f.is_file() or f.name in _NOT_MODEL or f.name.startswith("adapter_") or f.name == TIMES_FILE:
            continue
        if lora and (f.name == "config.json" or f.name.endswith(".safetensors")):
            continue
        shutil.copy2(f, tmp / f.name)
    config = json.loads((tmp / "config.json").read_text())
    fixed = servable_config(config)
    if fixed != config:
        atomic_write_text(tmp / "config.json", json.dumps(fixed, indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def train_cell(cfg: StudyConfig, node: Node, train_jsonl: Path, work: Path, *, base_model: str) -> TrainResult:
    """Train the cell of train node `node` on `train_jsonl` with Axolotl; write model/, loss.parquet and
    train_result.json to `work`. Hyperparameters come from the node's identity; `cfg` gives the env."""
    env = axolotl_env(cfg)
    work.mkdir(parents=True, exist_ok=True)
    out = work / OUTPUT_DIR
    gpus = train_gpus(cfg, env, TrainParams.of(node).world_size)
    axo = cell_config(cfg, node, dataset=train_jsonl, output_dir=out, base_model=base_model, gpus=gpus)
    config_path = work / CONFIG_FILE
    atomic_write_text(config_path, dump_yaml(axo, f"cell {node.name}: {'GPU' if gpus else 'CPU overlay'}"))
    resumed = _checkpoints(out)
    resumed_from = int(resumed[-1].name.rsplit("-", 1)[-1]) if resumed else 0
    run_axolotl(config_path, out, work, env, gpus=gpus, logging_steps=int(axo["logging_steps"]))

    ckpts = _checkpoints(out)
    if not ckpts:
        raise RuntimeError(f"axolotl train finished without a checkpoint in {out}; see {work / LOG_FILE}")
    state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
    times = _read_times(out / TIMES_FILE)
    rows = loss_rows(state["log_history"], times)
    write_parquet(pa.Table.from_pylist(rows, schema=SCHEMA), work / LOSS_FILE)
    publish_model(out, base_model, work / MODEL_DIR)

    summary: dict[str, Any] = next((h for h in reversed(state["log_history"]) if "train_runtime" in h), {})
    train_seconds = max(times.values()) if times else float(summary.get("train_runtime", 0.0))
    tokens_seen = rows[-1]["tokens_seen"] if rows else 0
    labels = _prepared_labels(out)
    params_total = _safetensors_params(sorted((work / MODEL_DIR).glob("*.safetensors")))
    adapter = out / "adapter_model.safetensors"
    tail = [r["loss"] for r in rows[-10:]]
    result = TrainResult(
        steps=int(state["global_step"]), epochs=float(state.get("epoch") or 0.0),
        examples=len(labels) if labels is not None else 0,
        trainable_tokens=count_label_tokens(labels) if labels is not None else 0,
        tokens_seen=tokens_seen, train_seconds=train_seconds,
        tokens_per_second=tokens_seen / max(train_seconds, 1e-9),
        final_loss=sum(tail) / len(tail) if tail else float("nan"), params_total=params_total,
        params_trainable=_safetensors_params([adapter]) if adapter.is_file() else params_total,
        resumed_from_step=resumed_from,
    )
    atomic_write_text(work / RESULT_FILE, json.dumps(result.to_dict(), indent=2))
    shutil.rmtree(out)  # the published model supersedes the checkpoints; a re-run starts afresh
    log.info("axolotl trained %d steps in %.1f s (%.0f tok/s), final loss %.4f", result.steps,
             result.train_seconds, result.tokens_per_second, result.final_loss)
    return result
