#!/usr/bin/env python3
"""Validate rendered Axolotl YAMLs with Axolotl's own validator, as if on H100s.

Runs INSIDE the Axolotl environment (`.venv-axolotl`, see
compress_distill/jobs/envs/axolotl-cpu-requirements.txt), not the orchestrator's:

    .venv-axolotl/bin/python scripts/validate_axolotl_configs.py RENDER_DIR_OR_YAML... [--cpu]

For each file it (1) registers the config's plugins as `axolotl train` does,
(2) fails on any top-level key that Axolotl's merged schema (base + plugin
args) does not define, since Axolotl would silently drop it, and (3) calls
`axolotl.utils.config.validate_config` with injected capabilities: H100
(sm_90, bf16, tf32, fp8) and `n_gpu` = the cell's GPU count from the render
manifest (`manifest.json`, written by `render_study`), or `--cpu` for the
CPU variants. Prints one PASS/FAIL line per file; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")  # no telemetry from a validation run
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # validation must not depend on the hub

import torch  # noqa: E402
import yaml  # noqa: E402
from axolotl.integrations.config import merge_input_args  # noqa: E402
from axolotl.utils.config import prepare_plugins, validate_config  # noqa: E402
from axolotl.utils.dict import DictDefault  # noqa: E402

H100 = {"bf16": True, "tf32": True, "fp8": True, "n_node": 1, "compute_capability": "sm_90"}
CPU = {"bf16": False, "tf32": False, "fp8": False, "n_node": 1, "n_gpu": 1, "compute_capability": None}


def find_configs(args: list[str]) -> list[tuple[Path, int | None]]:
    """YAML files to check, each with its GPU count when a render manifest gives one."""
    out: list[tuple[Path, int | None]] = []
    for arg in map(Path, args):
        if arg.is_dir():
            manifest = arg / "manifest.json"
            if manifest.exists():
                for cell in json.loads(manifest.read_text())["cells"]:
                    out.append((arg / cell["axolotl_config"], cell["gpus"]))
            else:
                out += [(p, None) for p in sorted(arg.rglob("axolotl*.y*ml"))]
        else:
            out.append((arg, None))
    return out


def schema_keys() -> set[str]:
    """Every top-level key the (plugin-merged) Axolotl schema defines, aliases included."""
    _, input_config = merge_input_args()
    keys: set[str] = set()
    for name, field in input_config.model_fields.items():
        keys.add(name)
        alias = field.validation_alias
        for choice in getattr(alias, "choices", [alias] if isinstance(alias, str) else []):
            if isinstance(choice, str):
                keys.add(choice)
        if field.alias:
            keys.add(field.alias)
    return keys


def validate_one(path: Path, capabilities: dict[str, Any]) -> None:
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError("top level is not a mapping")
    cfg = DictDefault(raw)
    prepare_plugins(cfg)
    unknown = sorted(set(raw) - schema_keys())
    if unknown:
        raise ValueError(f"keys unknown to Axolotl {axolotl_version()} (it would ignore them): {unknown}")
    env = {"torch_version": torch.__version__.split("+", 1)[0]}
    validate_config(cfg, capabilities=capabilities, env_capabilities=env)


def axolotl_version() -> str:
    from importlib.metadata import version

    return version("axolotl")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="render directories (with manifest.json) or YAML files")
    ap.add_argument("--cpu", action="store_true", help="validate as CPU configs (mini world)")
    ap.add_argument("--n-gpu", type=int, default=8, help="GPU count when no manifest gives one")
    ap.add_argument("-v", "--verbose", action="store_true", help="show Axolotl's own log output")
    args = ap.parse_args(argv)
    if not args.verbose:
        logging.disable(logging.WARNING)  # Axolotl warns a lot; failures are reported below

    configs = find_configs(args.paths)
    if not configs:
        print("no Axolotl configs found", file=sys.stderr)
        return 2
    failed = 0
    for path, gpus in configs:
        caps = dict(CPU) if args.cpu else {**H100, "n_gpu": gpus or args.n_gpu}
        try:
            validate_one(path, caps)
        except Exception as err:  # noqa: BLE001 - any rejection is a FAIL line, not a crash
            failed += 1
            msg = " ".join(str(err).split())
            print(f"FAIL {path}: {type(err).__name__}: {msg[:2000]}")
        else:
            print(f"PASS {path} (n_gpu={caps['n_gpu']})")
    print(f"{len(configs) - failed}/{len(configs)} passed Axolotl {axolotl_version()} validate_config")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
