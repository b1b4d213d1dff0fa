"""A small batched decoding engine for tiny causal LMs on CPU (the local server's back end).

Why not `model.generate`: one `generate` call has one temperature, one top_p
and one global RNG, so concurrent requests with different sampling settings
could not share a batch, and a request's sample would depend on which other
requests happened to share its batch. This loop samples each row with its own
temperature, top_p, max_tokens and `torch.Generator` seeded from the request,
so an answer is a function of (prompt, sampling, seed) alone.

Requests arriving within `batch_wait_s` of each other are left-padded into one
batch and decoded together with a KV cache.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    # filled in by the engine
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    result: GenResult | None = None
    error: BaseException | None = None


@dataclass(frozen=True)
class GenResult:
    token_ids: list[int]
    finish_reason: str  # "stop" (an end-of-sequence token) or "length" (max_tokens reached)
    batch_size: int = 1


class BatchEngine:
    """Collects concurrent requests into padded batches and decodes them on one worker thread."""

    def __init__(self, model: Any, eos_ids: set[int], pad_id: int, *, max_batch: int = 32,
                 batch_wait_s: float = 0.005, seed: int = 0):
        self.model = model
        self.eos_ids = set(eos_ids)
        self.pad_id = pad_id
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self._seed_rng = random.Random(seed)  # seeds for requests that bring none
        self._queue: queue.Queue[GenRequest | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.batches_run = 0
        self.rows_run = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="batch-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(self, req: GenRequest, timeout: float | None = None) -> GenResult:
        """Blocking: enqueue and wait for this request's result (called from a handler thread)."""
        self._queue.put(req)
        if not req.done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # re-post the stop signal for the outer loop
                    break
                batch.append(nxt)
            try:
                results = self.generate_batch(batch)
            except BaseException as e:  # every waiter must be released, whatever failed
                log.exception("batch of %d failed", len(batch))
                for r in batch:
                    r.error = e
                    r.done.set()
                continue
            for r, res in zip(batch, results, strict=True):
                r.result = res
                r.done.set()

    def generate_batch(self, reqs: list[GenRequest]) -> list[GenResult]:
        import torch

        n = len(reqs)
        width = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(reqs):  # left padding: every row's next token sits in the last column
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        gens = []
        for r in reqs:
            g = torch.Generator()
            g.manual_seed(r.seed if r.seed is not None else self._seed_rng.randrange(2**31))
            gens.append(g)
        out_tokens: list[list[int]] = [[] for _ in reqs]
        finish: list[str | None] = [None] * n
        steps = max(r.max_tokens for r in reqs)
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
            cache = out.past_key_values
            last_pos = pos[:, -1:]
            for _ in range(steps):
                logits = out.logits[:, -1, :].float()
                nxt = torch.full((n,), self.pad_id, dtype=torch.long)
                for i, r in enumerate(reqs):
                    if finish[i] is not None:
                        continue
                    tok = _sample(logits[i], r.temperature, r.top_p, gens[i])
                    nxt[i] = tok
                    out_tokens[i].append(tok)
                    if tok in self.eos_ids:
                        finish[i] = "stop"
                    elif len(out_tokens[i]) >= r.max_tokens:
                        finish[i] = "length"
                if all(f is not None for f in finish):
                    break
                mask = torch.cat([mask, torch.ones((n, 1), dtype=torch.long)], dim=1)
                last_pos = last_pos + 1
                out = self.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last_pos,
                                 past_key_values=cache, use_cache=True)
                cache = out.past_key_values
        self.batches_run += 1
        self.rows_run += n
        return [GenResult(t, f or "length", n) for t, f in zip(out_tokens, finish, strict=True)]


def _sample(logits: Any, temperature: float, top_p: float, gen: Any) -> int:
    import torch

    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sp, si = torch.sort(probs, descending=True)
        keep = sp.cumsum(-1) - sp < top_p  # the smallest prefix whose mass reaches top_p
        sp = sp * keep
        probs = torch.zeros_like(probs).scatter_(0, si, sp)
    return int(torch.multinomial(probs, 1, generator=gen))
