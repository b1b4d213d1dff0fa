#!/usr/bin/env python3
"""Pre-flight: do the reasoning traces survive Axolotl's tokenization into the trained labels?

Runs INSIDE the Axolotl environment, on the machine that will train (it loads the
config with that machine's capabilities, and the tokenizer):

    .venv-axolotl/bin/python scripts/check_axolotl_labels.py CELL/axolotl.yaml... [--rows 64]

Why: with `split_thinking: true` Axolotl moves `<think>...</think>` out of the
assistant content into `reasoning_content`; a chat template that does not render
`reasoning_content` then drops every trace without a warning, silently turning
a trace-distillation cell into answer-only training. Prints PASS/FAIL per config
and exits 1 when, for any config, the source rows carry traces but the trained
labels of the tokenized rows do not.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")

from axolotl.cli.config import load_cfg  # noqa: E402
from axolotl.common.datasets import load_datasets  # noqa: E402
from axolotl.loaders import load_tokenizer  # noqa: E402

END_THINK = "</think>"


def source_trace_share(path: Path, limit: int = 1000) -> float:
    """Share of the first `limit` source rows whose assistant turns contain a trace."""
    rows = with_trace = 0
    with path.open() as f:
        for line in f:
            if not line.strip():
                continue
            msgs = json.loads(line).get("messages", [])
            rows += 1
            with_trace += any(m.get("role") == "assistant" and END_THINK in str(m.get("content", "")) for m in msgs)
            if rows >= limit:
                break
    return with_trace / rows if rows else 0.0


def check(path: Path, rows: int) -> bool:
    cfg = load_cfg(str(path))
    src = source_trace_share(Path(cfg.datasets[0]["path"]))
    tokenizer = load_tokenizer(cfg)
    train = load_datasets(cfg=cfg).train_dataset
    n = min(rows, len(train))
    kept = 0
    for row in train.select(range(n)):
        trained = [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100]
        kept += END_THINK in tokenizer.decode(trained)
    share = kept / n if n else 0.0
    ok = not (src > 0 and share < 0.5 * src)
    print(f"{'PASS' if ok else 'FAIL'} {path}: traces in source rows {src:.0%}, "
          f"in trained labels {share:.0%} ({kept}/{n} rows)")
    if not ok:
        print("  the traces do not reach the trained labels. With split_thinking: true the chat template "
              "must render `reasoning_content`; otherwise set training.split_thinking: false.")
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", type=Path, nargs="+")
    ap.add_argument("--rows", type=int, default=64, help="tokenized rows to decode per config")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    results = [check(path, args.rows) for path in args.configs]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
