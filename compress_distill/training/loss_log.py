"""The loss curve of one training cell, as `loss.parquet`, kept by a TrainerCallback.

Rows (step, epoch, loss, learning_rate, tokens_seen, elapsed_s) are collected at every
logging step and the file is rewritten atomically (temp + rename) every `flush_every`
steps, after every checkpoint save, and at the end; a reader never sees a torn file.
On resume the rows up to the checkpoint's step are kept and later ones dropped, since
training repeats those steps; elapsed_s continues from the kept rows, so it counts
only work that survived.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from compress_distill.store import write_parquet

log = logging.getLogger(__name__)

LOSS_FILE = "loss.parquet"
SCHEMA = pa.schema([
    ("step", pa.int64()),
    ("epoch", pa.float64()),
    ("loss", pa.float64()),
    ("learning_rate", pa.float64()),
    ("tokens_seen", pa.int64()),
    ("elapsed_s", pa.float64()),
])


class LossLogger(TrainerCallback):
    """Appends one row per logged step; `resume_step` keeps earlier rows of an interrupted run."""

    def __init__(self, path: Path, *, resume_step: int = 0, flush_every: int = 50, progress_every: int = 100,
                 total_steps: int | None = None) -> None:
        self.path = path
        self.flush_every = flush_every
        self.progress_every = progress_every
        self.total_steps = total_steps
        self.rows: list[dict[str, Any]] = []
        if resume_step > 0 and path.is_file():
            self.rows = [r for r in pq.read_table(path).to_pylist() if r["step"] <= resume_step]
        self.elapsed_offset = self.rows[-1]["elapsed_s"] if self.rows else 0.0
        self._t0 = time.perf_counter()

    @property
    def elapsed(self) -> float:
        """Training seconds so far, including the kept part of an interrupted run."""
        return self.elapsed_offset + time.perf_counter() - self._t0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        self._t0 = time.perf_counter()  # exclude model loading and tokenisation from elapsed_s

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not logs or "loss" not in logs:
            return  # the end-of-training summary log carries train_loss, not loss
        row = {
            "step": state.global_step,
            "epoch": float(state.epoch or 0.0),
            "loss": float(logs["loss"]),
            "learning_rate": float(logs.get("learning_rate", math.nan)),
            "tokens_seen": int(state.num_input_tokens_seen),
            "elapsed_s": self.elapsed,
        }
        self.rows.append(row)
        if state.global_step % self.flush_every == 0:
            self.flush()
        if self.progress_every and state.global_step % self.progress_every == 0:
            log.info("step %d/%s loss %.4f lr %.2e %.0f tok/s", row["step"], self.total_steps or "?", row["loss"],
                     row["learning_rate"], row["tokens_seen"] / max(row["elapsed_s"], 1e-9))

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        self.flush()  # a checkpoint and the curve up to it must agree for resume

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        self.flush()

    def flush(self) -> None:
        write_parquet(pa.Table.from_pylist(self.rows, schema=SCHEMA), self.path)
