"""Checks that run INSIDE a job environment (vLLM's, Axolotl's), where compress_distill is not
installed: each is a standalone script, shipped in the package and run by path with that env's
python (`ENV/bin/python LABEL_CHECK CONFIG...`).

- check_axolotl_labels.py: do the traces and the EOT token survive tokenization into the labels
  (the train stage runs it before a fresh Axolotl start; `preflight` runs it too)
- check_vllm_args.py: every rendered vLLM command line through vLLM's own parser (`preflight`)

This package's __init__ imports nothing from them (they import axolotl / vllm at the top).
"""

from pathlib import Path

LABEL_CHECK = Path(__file__).resolve().parent / "check_axolotl_labels.py"
VLLM_CHECK = Path(__file__).resolve().parent / "check_vllm_args.py"
