"""Train one student cell with TRL's SFTTrainer on CPU: the embedded backend of the mini world.

One call trains one cell: assistant-only loss (the chat template's `{% generation %}`
markers), LoRA or full fine-tuning from the method (`MethodParams`: the train node's
resolved method), schedule and batch shape from the TrainingSpec, fp32 on `threads` CPU
threads. `training_arguments` and `lora_arguments` are the pure mapping from those specs
to TRL's arguments. Outputs in `out_dir`:

- `model/`: a plain model dir (LoRA merged into the weights) plus tokenizer, so
  evaluation loads every cell the same way;
- `loss.parquet`: the loss curve (see `loss_log`);
- `train_result.json`: the TrainResult;
- `checkpoints/`: only when `save_steps` is set; a later call resumes from the newest
  (HF resume: weights, optimizer, scheduler, RNG, data position). Removed on success.

CPU choices (the GPU cells use Axolotl with the same specs):
- bf16, tf32, flash attention, plugins and pad_to_sequence_len are GPU settings and
  are ignored with a logged note; training is fp32 with SDPA attention.
- Batches are grouped by length (padding is pure waste on CPU). Sample packing is off:
  TRL packs into padding-free rows that only flash-attention kernels keep apart; with
  SDPA on CPU a packed example attends into the one before it (measured: logits off by
  0.27). Packing would also change how many examples one step of "batch 32" holds.
- Steps: `num_epochs` (a float) over the set, unless `max_steps` (argument, else
  TrainingSpec.max_steps) is given, which wins and may loop over the set.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PrinterCallback,
    ProgressCallback,
    TrainerCallback,
)
from transformers.trainer_utils import get_last_checkpoint

from compress_distill.config import MethodParams, TrainingSpec
from compress_distill.store import atomic_write_text
from compress_distill.training.data import count_label_tokens, read_chats
from compress_distill.training.loss_log import LOSS_FILE, LossLogger

log = logging.getLogger(__name__)

MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
RESULT_FILE = "train_result.json"
# Optimizers that need CUDA kernels (bitsandbytes, apex, fused); on CPU they become plain AdamW.
_GPU_OPTIMIZER_MARKS = ("bnb", "8bit", "apex", "fused", "paged")


@dataclass(frozen=True)
class TrainResult:
    steps: int  # optimizer steps actually taken (cumulative over resumes)
    epochs: float  # passes over the training set those steps amount to
    examples: int  # training examples (rows surviving truncation)
    trainable_tokens: int  # assistant tokens in the loss, per epoch (paper Table 6)
    tokens_seen: int  # non-padding tokens fed to the model, prompts included
    train_seconds: float  # wall time of the optimizer loop (setup and saving excluded)
    tokens_per_second: float  # tokens_seen / train_seconds
    final_loss: float  # mean loss over the last up-to-10 logged steps
    params_total: int
    params_trainable: int
    resumed_from_step: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_optimizer(name: str) -> str:
    if any(mark in name for mark in _GPU_OPTIMIZER_MARKS):
        log.info("optimizer %s needs a GPU; using adamw_torch on CPU", name)
        return "adamw_torch"
    return name


def _note_ignored(training: TrainingSpec) -> None:
    ignored = {k: v for k, v in (("bf16", training.bf16), ("tf32", training.tf32),
                                 ("pad_to_sequence_len", training.pad_to_sequence_len),
                                 ("plugins", training.plugins)) if v}
    if ignored:
        log.info("CPU backend ignores GPU settings %s; training in fp32 with sdpa attention", ignored)
    if training.sample_packing:
        log.info("sample_packing ignored on CPU: batches are length-grouped instead (same examples per step)")
    if training.val_set_size:
        log.info("val_set_size=%s ignored: the TRL backend trains on the whole set", training.val_set_size)


def lora_arguments(method: MethodParams) -> dict[str, Any] | None:
    """peft's LoraConfig arguments for a LoRA method; None for full fine-tuning. Pure."""
    if method.kind != "lora":
        return None
    assert method.lora is not None  # MethodParams guarantees it for kind 'lora'
    return {"r": method.lora.r, "lora_alpha": method.lora.alpha, "lora_dropout": method.lora.dropout,
            "target_modules": list(method.lora.target_modules), "task_type": "CAUSAL_LM", "bias": "none"}


def _lora_config(method: MethodParams) -> Any:
    from peft import LoraConfig

    kwargs = lora_arguments(method)
    return LoraConfig(**kwargs) if kwargs is not None else None


def training_arguments(out_dir: Path, method: MethodParams, training: TrainingSpec, *, max_steps: int | None = None,
                       save_steps: int | None = None, seed: int = 0) -> dict[str, Any]:
    """The SFTConfig arguments of one run, as `prepare_run` builds them (the same arguments): `max_steps`
    None takes TrainingSpec.max_steps, `seed` is an offset on TrainingSpec.seed. Pure."""
    steps_cap = max_steps if max_steps is not None else training.max_steps
    seed = training.seed + seed
    return dict(
        output_dir=str(out_dir / CHECKPOINT_DIR),
        use_cpu=True, bf16=False, fp16=False,
        per_device_train_batch_size=training.micro_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        num_train_epochs=training.num_epochs,
        max_steps=steps_cap if steps_cap is not None else -1,
        learning_rate=method.learning_rate,
        lr_scheduler_type=training.lr_scheduler,
        warmup_steps=training.warmup_ratio,  # a float < 1 is a ratio in transformers 5
        optim=_cpu_optimizer(method.optimizer),
        activation_checkpointing=method.gradient_checkpointing,
        max_length=training.sequence_len,
        assistant_only_loss=True,
        packing=False,
        train_sampling_strategy="group_by_length",
        include_num_input_tokens_seen="non_padding",
        logging_steps=1,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=2,
        seed=seed, data_seed=seed,
        report_to="none", disable_tqdm=True,
        dataloader_pin_memory=False,
    )


def _sft_config(out_dir: Path, method: MethodParams, training: TrainingSpec, *, max_steps: int | None,
                save_steps: int | None, seed: int) -> Any:
    """TRL's SFTConfig from `training_arguments` (same meaning of `max_steps` and `seed`)."""
    from trl import SFTConfig

    return SFTConfig(**training_arguments(out_dir, method, training, max_steps=max_steps, save_steps=save_steps,
                                          seed=seed))


def _check_template(tokenizer: Any, model_dir: Path) -> None:
    template = tokenizer.chat_template or ""
    if "generation" not in template:
        raise ValueError(f"{model_dir}: the chat template has no {{% generation %}} block, so assistant-only "
                         f"loss cannot mask prompts; rebuild the tokenizer with one")


def _resume_point(ckpt_root: Path) -> tuple[str | None, int]:
    last = get_last_checkpoint(str(ckpt_root)) if ckpt_root.is_dir() else None
    if last is None:
        return None, 0
    state = json.loads((Path(last) / "trainer_state.json").read_text())
    return last, int(state["global_step"])


def _save_model(model: Any, tokenizer: Any, dest: Path) -> None:
    """Save a plain model (LoRA merged) plus tokenizer; renamed into place so `dest` is always whole."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


@dataclass
class PreparedRun:
    """A trainer ready to run, with what train_student needs to report on it."""

    trainer: Any  # trl.SFTTrainer
    tokenizer: Any
    loss_logger: LossLogger
    resume_checkpoint: str | None
    resume_step: int
    params_total: int  # the student's own parameters (LoRA adapters not counted)


def prepare_run(model_dir: Path, train_parquet: Path, out_dir: Path, method: MethodParams, training: TrainingSpec,
                *, max_steps: int | None = None, seed: int = 0, save_steps: int | None = None,
                callbacks: list[TrainerCallback] | None = None) -> PreparedRun:
    """Load the student, tokenise the set (labels -100 outside assistant turns) and build the SFTTrainer."""
    from datasets import Dataset
    from trl import SFTTrainer

    _note_ignored(training)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    _check_template(tokenizer, model_dir)
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                                  attn_implementation="sdpa")
    params_total = sum(p.numel() for p in model.parameters())  # before PEFT injects adapters in place
    steps_cap = max_steps if max_steps is not None else training.max_steps
    args = _sft_config(out_dir, method, training, max_steps=max_steps, save_steps=save_steps, seed=seed)
    resume_ckpt, resume_step = _resume_point(out_dir / CHECKPOINT_DIR)
    logger = LossLogger(out_dir / LOSS_FILE, resume_step=resume_step, total_steps=steps_cap)
    dataset = Dataset.from_dict({"messages": read_chats(train_parquet)})
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=_lora_config(method),
                         callbacks=[logger, *(callbacks or [])])
    # Progress goes through `logging` (LossLogger), not tqdm bars or per-step prints.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return PreparedRun(trainer, tokenizer, logger, resume_ckpt, resume_step, params_total)


def train_student(model_dir: Path, train_parquet: Path, out_dir: Path, method: MethodParams,
                  training: TrainingSpec, *, threads: int = 1, max_steps: int | None = None, seed: int = 0,
                  save_steps: int | None = None, callbacks: list[TrainerCallback] | None = None) -> TrainResult:
    """Train the student in `model_dir` on `train_parquet`; write model, loss curve and result to `out_dir`.

    `seed` is an offset on TrainingSpec.seed (0 = the config's seed, as the Axolotl cells use).
    `save_steps` turns checkpoints on (off by default: at mini scale a restart costs less than
    saving); `callbacks` are extra TrainerCallbacks (progress displays, tests).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with _quiet_progress_bars():
            run = prepare_run(model_dir, train_parquet, out_dir, method, training, max_steps=max_steps, seed=seed,
                              save_steps=save_steps, callbacks=callbacks)
            trainer = run.trainer
            train_set = trainer.train_dataset
            examples = len(train_set)
            trainable_tokens = count_label_tokens(train_set.data.column("labels"))
            params_trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
            log.info("training %s (%s): %d examples, %d trainable tokens/epoch, %d/%d params trainable%s",
                     model_dir.name, method.kind, examples, trainable_tokens, params_trainable, run.params_total,
                     f", resuming from step {run.resume_step}" if run.resume_checkpoint else "")
            trainer.train(resume_from_checkpoint=run.resume_checkpoint)
            train_seconds = run.loss_logger.elapsed
            _save_model(trainer.model, run.tokenizer, out_dir / MODEL_DIR)
            # The finished model supersedes them; a re-run then starts afresh instead of resuming at the end.
            shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
    finally:
        torch.set_num_threads(prev_threads)

    state = trainer.state
    tail = [r["loss"] for r in run.loss_logger.rows[-10:]]
    result = TrainResult(
        steps=state.global_step, epochs=float(state.epoch or 0.0), examples=examples,
        trainable_tokens=trainable_tokens, tokens_seen=int(state.num_input_tokens_seen),
        train_seconds=train_seconds, tokens_per_second=state.num_input_tokens_seen / max(train_seconds, 1e-9),
        final_loss=sum(tail) / len(tail) if tail else float("nan"),
        params_total=run.params_total, params_trainable=params_trainable, resumed_from_step=run.resume_step,
    )
    atomic_write_text(out_dir / RESULT_FILE, json.dumps(result.to_dict(), indent=2))
    log.info("trained %d steps in %.1f s (%.0f tok/s), final loss %.4f", result.steps, result.train_seconds,
             result.tokens_per_second, result.final_loss)
    return result


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Silence datasets/transformers tqdm bars (map, shard writing) for the call, then restore them."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as tf_logging

    ds_on, tf_on = not are_progress_bars_disabled(), tf_logging.is_progress_bar_enabled()
    disable_progress_bars()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if ds_on:
            enable_progress_bars()
        if tf_on:
            tf_logging.enable_progress_bar()
