"""A plain torch training loop for the mini world's builders (teacher and compressors).

Each step draws a fixed number of examples from every stream (e.g. 10 verbose + 22
concise for the teacher). Each stream's examples form their own padded sub-batch:
gradients are summed over the sub-batches and the loss is the mean over all target
(assistant) tokens of the step, so mixing short and long styles wastes no padding.
Within a stream, batches are length-bucketed. AdamW, linear warmup, cosine decay to
a floor, gradient clipping.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from compress_distill.miniworld.recipes import TrainSpec

log = logging.getLogger(__name__)

Pair = tuple[list[int], list[int]]  # (prompt ids, target ids ending in eos)
IGNORE = -100
BUCKET_BATCHES = 50  # sort by length within chunks of this many batches


@dataclass
class Stream:
    pairs: list[Pair]
    per_batch: int


def encode_pairs(tok, prompts: list[str], targets: list[str]) -> list[Pair]:
    """Tokenise prompts and targets apart, as at generation time, and end each target with eos."""
    p_ids = tok(prompts, add_special_tokens=False)["input_ids"]
    t_ids = tok(targets, add_special_tokens=False)["input_ids"]
    return [(p, t + [tok.eos_token_id]) for p, t in zip(p_ids, t_ids, strict=True)]


def bucketed_batches(pairs: list[Pair], size: int, rng: random.Random) -> Iterator[list[int]]:
    """Endless batches of indices: shuffle, sort by length within chunks, shuffle the batches."""
    while True:
        order = list(range(len(pairs)))
        rng.shuffle(order)
        batches: list[list[int]] = []
        for c in range(0, len(order), size * BUCKET_BATCHES):
            chunk = sorted(order[c:c + size * BUCKET_BATCHES], key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
            batches += [chunk[k:k + size] for k in range(0, len(chunk), size) if len(chunk[k:k + size]) == size]
        if not batches:  # fewer examples than one batch: sample with replacement
            batches = [[rng.randrange(len(pairs)) for _ in range(size)]]
        rng.shuffle(batches)
        yield from batches


def collate(pairs: list[Pair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask, and labels that are IGNORE outside the target."""
    width = max(len(p) + len(t) for p, t in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE)
    mask = torch.zeros_like(ids)
    for r, (p, t) in enumerate(pairs):
        n = len(p) + len(t)
        ids[r, :n] = torch.tensor(p + t)
        mask[r, :n] = 1
        labels[r, len(p):n] = torch.tensor(t)
    return ids, mask, labels


def lr_at(step: int, spec: TrainSpec) -> float:
    warm = min(1.0, (step + 1) / spec.warmup) if spec.warmup else 1.0
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, step / spec.steps)))
    return spec.lr * warm * max(spec.min_lr_frac, cos)


def _summed_loss(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    return nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                       ignore_index=IGNORE, reduction="sum")


def train_lm(model: nn.Module, streams: list[Stream], spec: TrainSpec, pad_id: int, log_every: int = 100,
             name: str = "model", on_log: Callable[[int], None] | None = None) -> dict:
    """Train in place for spec.steps steps; returns timing, token counts and a coarse loss curve.

    `on_log(step)` runs (in eval mode) at every log point, e.g. for a learning curve.
    """
    rng = random.Random(spec.seed)
    torch.manual_seed(spec.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.98))
    iters = [bucketed_batches(s.pairs, s.per_batch, rng) for s in streams]
    model.train()
    losses: list[float] = []
    curve: list[tuple[int, float]] = []
    tokens = 0
    t0 = time.perf_counter()
    for step in range(spec.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, spec)
        parts = [[s.pairs[i] for i in next(it)] for s, it in zip(streams, iters, strict=True)]
        n_target = sum(len(t) for part in parts for _, t in part)
        total = 0.0
        for part in parts:
            ids, mask, labels = collate(part, pad_id)
            loss = _summed_loss(model, ids, mask, labels)
            (loss / n_target).backward()  # mean over all target tokens of the step
            total += loss.item()
            tokens += int(mask.sum())
        torch.nn.utils.clip_grad_norm_(params, spec.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total / n_target)
        if (step + 1) % log_every == 0 or step + 1 == spec.steps:
            recent = statistics.mean(losses[-50:])
            curve.append((step + 1, round(recent, 4)))
            log.info("[%s] step %d/%d loss %.3f lr %.2e %.0fs", name, step + 1, spec.steps, recent,
                     lr_at(step, spec), time.perf_counter() - t0)
            if on_log is not None:
                model.eval()
                on_log(step + 1)
                model.train()
    model.eval()
    secs = time.perf_counter() - t0
    return {"steps": spec.steps, "train_secs": round(secs, 1), "tokens": tokens,
            "tokens_per_s": round(tokens / max(secs, 1e-9)), "final_loss": round(statistics.mean(losses[-50:]), 4),
            "loss_curve": curve}
