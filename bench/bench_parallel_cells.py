"""Benchmark: one 2-thread training cell vs two 1-thread cells in parallel (issue 9, item 4).

Not a test. Builds a 0.37M-parameter Qwen3 student (hidden 96, 3 layers, MLP 3x,
vocab 400) and ~100-token synthetic traces, then trains the same cell through
`train_student` (TRL, full fine-tuning, batch 32) in separate processes:

  (a) one cell, 2 threads;
  (a2) the same with OMP_WAIT_POLICY=PASSIVE (OpenMP threads sleep instead of spinning
      at barriers, which matters when other processes share the cores);
  (b) two cells at once, 1 thread each;
  (c) one cell, 1 thread alone (the 2-vs-1-thread scaling);
  (d) a LoRA cell (r16, all 7 projections), 1 thread, against (c): the method axis at
      the thread count the grid's cells use.

Throughput is non-padding training tokens per second of the optimizer loop (imports,
tokenisation and saving excluded). The parallel cells wait at a barrier after setup, so
their loops overlap; their aggregate is both cells' tokens over the span from the first
loop start to the last loop end. Run it under `nice` on a shared machine:

    nice -n 10 .venv/bin/python bench/bench_parallel_cells.py [--steps 150] [--rounds 2] [--skip-lora]

tok/cpu-s (tokens per CPU-second of the cells' processes) is less sensitive to outside
load than tok/s; on an idle 2-core machine (b)/(a) ~ tok/cpu-s(b) / tok/cpu-s(a).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from compress_distill.config import LoraSpec, MethodSpec, TrainingSpec
from compress_distill.training.tiny_models import build_tiny_qwen3, synthetic_chats, write_chat_parquet
from compress_distill.training.trl_backend import train_student

Cell = tuple[str, str, int, bool]  # name, method, threads, OMP_WAIT_POLICY=PASSIVE

TRAINING = TrainingSpec(backend="trl", sequence_len=256, sample_packing=False, pad_to_sequence_len=False,
                        micro_batch_size=32, gradient_accumulation_steps=1, num_epochs=1, warmup_ratio=0.05,
                        bf16=False, tf32=False, flash_attention=False)
METHODS = {
    "full": MethodSpec(kind="full", label="Full", learning_rate=3e-3, optimizer="adamw_torch",
                       gradient_checkpointing=False),
    "lora": MethodSpec(kind="lora", label="LoRA", learning_rate=1e-2, optimizer="adamw_torch",
                       gradient_checkpointing=False,
                       lora=LoraSpec(r=16, alpha=32, dropout=0.05,
                                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                     "down_proj"])),
}


class _Barrier(TrainerCallback):
    """Blocks at train begin until `n` workers have arrived, then stamps the loop's wall-clock start."""

    def __init__(self, folder: Path, name: str, n: int) -> None:
        self.folder, self.name, self.n = folder, name, n
        self.start = self.end = self.cpu_start = self.cpu_end = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        (self.folder / f"ready-{self.name}").touch()
        while len(list(self.folder.glob("ready-*"))) < self.n:
            time.sleep(0.05)
        self.start, self.cpu_start = time.time(), time.process_time()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.end, self.cpu_end = time.time(), time.process_time()


def worker(a: argparse.Namespace) -> None:
    """One cell in this process; prints its result as one JSON line."""
    barrier = _Barrier(Path(a.barrier), a.name, a.parties)
    res = train_student(Path(a.model), Path(a.data), Path(a.out), METHODS[a.method], TRAINING,
                        threads=a.threads, max_steps=a.steps, callbacks=[barrier])
    print(json.dumps({**res.to_dict(), "loop_start": barrier.start, "loop_end": barrier.end,
                      "loop_cpu_s": barrier.cpu_end - barrier.cpu_start}))


def _spawn(work: Path, model: Path, data: Path, cell: Cell, steps: int, barrier: Path,
           parties: int) -> subprocess.Popen[str]:
    name, method, threads, passive = cell
    cmd = [sys.executable, __file__, "--worker", "--name", name, "--method", method, "--threads", str(threads),
           "--steps", str(steps), "--model", str(model), "--data", str(data), "--out", str(work / name),
           "--barrier", str(barrier), "--parties", str(parties)]
    # One thread means one: keep OpenMP/MKL pools from oversubscribing the cores.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)


def run_group(work: Path, model: Path, data: Path, cells: list[Cell], steps: int) -> dict[str, Any]:
    """Run cells at once; aggregate tok/s over the span of their loops."""
    barrier = work / f"barrier-{cells[0][0]}"
    barrier.mkdir()
    procs = [_spawn(work, model, data, c, steps, barrier, len(cells)) for c in cells]
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"worker failed (rc {p.returncode}); rerun one with --worker to see why")
        results.append(json.loads(out.strip().splitlines()[-1]))
    span = max(r["loop_end"] for r in results) - min(r["loop_start"] for r in results)
    tokens = sum(r["tokens_seen"] for r in results)
    cpu = sum(r["loop_cpu_s"] for r in results)
    return {"cells": results, "span_s": span, "tokens": tokens, "tok_per_s": tokens / span,
            "steps_per_s": sum(r["steps"] for r in results) / span, "tok_per_cpu_s": tokens / cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2, help="repeat every setup; report the best round")
    ap.add_argument("--skip-lora", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for flag in ("--name", "--method", "--model", "--data", "--out", "--barrier"):
        ap.add_argument(flag, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--parties", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)

    with tempfile.TemporaryDirectory(prefix="bench-cells-") as tmp:
        work = Path(tmp)
        model = build_tiny_qwen3(work / "student", hidden=96, layers=3, mlp_mult=3, vocab_size=400)
        data = write_chat_parquet(synthetic_chats(a.steps * TRAINING.micro_batch_size, trace_sentences=8),
                                  work / "train.parquet")
        groups = {
            "(a) 1 cell x 2 threads": [("a", "full", 2, False)],
            "(a2) 1 cell x 2 threads, OMP passive": [("a2", "full", 2, True)],
            "(b) 2 cells x 1 thread, parallel": [("b1", "full", 1, False), ("b2", "full", 1, False)],
            "(c) 1 cell x 1 thread, alone": [("c", "full", 1, False)],
        }
        if not a.skip_lora:
            groups["(d) LoRA r16, 1 cell x 1 thread"] = [("d", "lora", 1, False)]
        t0, load0 = time.time(), os.getloadavg()[0]
        res: dict[str, dict[str, Any]] = {}
        # Rounds interleave the setups so a burst of outside load hits them alike; best round wins.
        for rnd in range(a.rounds):
            for label, cells in groups.items():
                r = run_group(work, model, data, [(f"{n}-{rnd}", m, t, p) for n, m, t, p in cells], a.steps)
                print(f"  round {rnd + 1} {label}: {r['tok_per_s']:.0f} tok/s, load {os.getloadavg()[0]:.1f}",
                      flush=True)
                if label not in res or r["tok_per_s"] > res[label]["tok_per_s"]:
                    res[label] = r
        first = res["(a) 1 cell x 2 threads"]["cells"][0]

    print(f"\nstudent {first['params_total'] / 1e6:.2f}M params, {a.steps} steps x batch {TRAINING.micro_batch_size}, "
          f"{first['tokens_seen'] / first['steps'] / TRAINING.micro_batch_size:.0f} tokens/example "
          f"({first['trainable_tokens'] / first['examples']:.0f} assistant); best of {a.rounds} rounds; "
          f"load avg {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end; total {time.time() - t0:.0f} s")
    print(f"\n{'setup':36s} {'loop s':>7s} {'tok/s':>8s} {'steps/s':>8s} {'tok/cpu-s':>10s} {'final loss':>12s}")
    for label, r in res.items():
        loss = " / ".join(f"{c['final_loss']:.2f}" for c in r["cells"])
        print(f"{label:36s} {r['span_s']:7.1f} {r['tok_per_s']:8.0f} {r['steps_per_s']:8.2f} "
              f"{r['tok_per_cpu_s']:10.0f} {loss:>12s}")
    a_tps = res["(a) 1 cell x 2 threads"]["tok_per_s"]
    b_tps = res["(b) 2 cells x 1 thread, parallel"]["tok_per_s"]
    a2_tps = res["(a2) 1 cell x 2 threads, OMP passive"]["tok_per_s"]
    print(f"\nparallel speed-up (b)/(a): {b_tps / a_tps:.2f}x   (b)/(a2): {b_tps / a2_tps:.2f}x")
    print(f"OMP passive (a2)/(a):      {a2_tps / a_tps:.2f}x")
    print(f"2 threads vs 1 (a)/(c):    {a_tps / res['(c) 1 cell x 1 thread, alone']['tok_per_s']:.2f}x")
    if not a.skip_lora:
        c_tps = res["(c) 1 cell x 1 thread, alone"]["tok_per_s"]
        d = res["(d) LoRA r16, 1 cell x 1 thread"]
        print(f"full vs LoRA tok/s (c),(d): {c_tps:.0f} vs {d['tok_per_s']:.0f} "
              f"(LoRA {d['tok_per_s'] / c_tps:.2f}x of full; {d['cells'][0]['params_trainable']} trainable params)")


if __name__ == "__main__":
    main()
