#!/usr/bin/env python3
"""Pre-flight: do the reasoning traces and the end-of-turn token survive Axolotl's tokenization into the labels?

Runs INSIDE the Axolotl environment, on the machine that will train (it loads the
config with that machine's capabilities, and the tokenizer):

    .venv-axolotl/bin/python compress_distill/envchecks/check_axolotl_labels.py CELL/axolotl.yaml... [--rows 64]

Why: with `split_thinking: true` Axolotl moves `<think>...</think>` out of the
assistant content into the key the chat template reads (`template_thinking_key`:
`reasoning_content`, or `thinking` for gpt-oss's harmony template). A template that
does not render that key drops every trace without a warning, silently turning a
trace-distillation cell into answer-only training; an `eot_tokens` entry that is not
in the template is dropped with only a warning, and the student never learns to stop.

The check needs no per-family marker (harmony has no `</think>`): it looks for the
traces themselves. For each source row with a trace it takes the trace's last
PROBE_CHARS characters (whitespace removed; the whole trace if shorter) and asks
whether that text is in the decoded trained labels of a tokenized row. It also asks whether each row's labels
contain an EOT token (`eot_tokens`, or the eos, which `train_on_eos` trains).
Prints PASS/FAIL per config and exits 1 when any config fails either.
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

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
PROBE_CHARS = 24  # long enough to be specific to one trace, short enough to survive a truncated row
MIN_EOT_SHARE = 0.9  # rows cut at sequence_len may lose their EOT; nearly all others must have it


def _squash(text: str) -> str:
    return "".join(text.split())


def source_probes(path: Path, limit: int = 1000) -> tuple[int, int, set[str]]:
    """(rows read, rows with a trace, the traces' tail probes) from the first `limit` source rows.

    A probe is the trace's last PROBE_CHARS non-space characters (the whole trace if shorter)."""
    rows = with_trace = 0
    probes: set[str] = set()
    with path.open() as f:
        for line in f:
            if not line.strip():
                continue
            rows += 1
            for m in json.loads(line).get("messages", []):
                content = str(m.get("content", ""))
                if m.get("role") == "assistant" and THINK_OPEN in content and THINK_CLOSE in content:
                    trace = _squash(content.split(THINK_OPEN, 1)[1].split(THINK_CLOSE, 1)[0])
                    if trace:
                        with_trace += 1
                        probes.add(trace[-PROBE_CHARS:])
                    break
            if rows >= limit:
                break
    return rows, with_trace, probes


def has_probe(text: str, probes: set[str]) -> bool:
    """Whether some window of `text` is a probe (linear in the text for each probe length)."""
    for size in {len(p) for p in probes}:
        if any(text[i:i + size] in probes for i in range(len(text) - size + 1)):
            return True
    return False


def check(path: Path, rows: int) -> bool:
    cfg = load_cfg(str(path))
    n_src, n_traced, probes = source_probes(Path(cfg.datasets[0]["path"]))
    src_share = n_traced / n_src if n_src else 0.0
    tokenizer = load_tokenizer(cfg)
    eots = list(dict.fromkeys(t for t in (*(cfg.eot_tokens or []), tokenizer.eos_token) if t))
    train = load_datasets(cfg=cfg).train_dataset
    n = min(rows, len(train))
    with_trace = with_eot = 0
    for row in train.select(range(n)):
        trained = [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100]
        text = tokenizer.decode(trained, skip_special_tokens=False)
        with_trace += has_probe(_squash(text), probes)
        with_eot += any(e in text for e in eots)
    trace_share = with_trace / n if n else 0.0
    eot_share = with_eot / n if n else 0.0
    trace_ok = not (src_share > 0 and trace_share < 0.5 * src_share)
    eot_ok = n > 0 and eot_share >= MIN_EOT_SHARE
    ok = trace_ok and eot_ok
    print(f"{'PASS' if ok else 'FAIL'} {path}: traces in source rows {src_share:.0%}, in trained labels "
          f"{trace_share:.0%}; an EOT ({', '.join(eots)}) in trained labels {eot_share:.0%} ({n} rows)")
    if not trace_ok:
        print("  the traces do not reach the trained labels. With split_thinking: true the chat template must "
              "render the key split_thinking fills (template_thinking_key); otherwise set "
              "training.split_thinking: false.")
    if not eot_ok:
        print("  the end-of-turn token does not reach the trained labels: is it in the chat template "
              "(students.NAME.eot_tokens)? Axolotl drops an eot token the template lacks with only a warning.")
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
