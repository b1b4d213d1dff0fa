"""Model weights on a cluster: what a config needs, staging it into a shared HF cache, and the
environment jobs run with (the Hub offline, so no job downloads and none needs a token).

`compress-distill stage-weights CONFIG` runs on a node with internet (a login node) and
downloads every hub model of the config into `cluster.weights.hf_home`; a gated model
(Llama) needs a token, read from the variable NAMED by `cluster.weights.token_env` and
never logged. Jobs then get HF_HOME and HF_HUB_OFFLINE=1 (`job_env`), and `preflight`
checks that every model is staged (`staged`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..config import StudyConfig
from ..serving import mini_ref


@dataclass(frozen=True)
class ModelRef:
    ref: str  # a hub id (org/name), a local directory, or a mini-world model (mini:...)
    used_by: str  # the config path that names it, for messages


def config_models(cfg: StudyConfig) -> list[ModelRef]:
    """Every model, separate tokenizer and hub attention kernel (an `org/name` attn_implementation,
    e.g. gpt-oss's) the config serves or trains, once each, in config order."""
    found: dict[str, str] = {}
    for name, t in cfg.teachers.items():
        found.setdefault(t.model, f"teachers.{name}.model")
    for name, c in cfg.compressors.items():
        found.setdefault(c.model, f"compressors.{name}.model")
        if c.tokenizer:
            found.setdefault(c.tokenizer, f"compressors.{name}.tokenizer")
    for name, s in cfg.students.items():
        found.setdefault(s.model, f"students.{name}.model")
    if cfg.judge is not None and cfg.judge.enabled:
        found.setdefault(cfg.judge.model, "judge.model")
    for name in cfg.students:
        attn = cfg.family_for(name).attn_implementation
        if "/" in attn:
            found.setdefault(attn, f"students.{name}.attn_implementation")
    return [ModelRef(ref, where) for ref, where in found.items()]


def is_hub_id(ref: str) -> bool:
    """A hub id is `org/name`; a local path exists or starts with / or ., a mini ref has a prefix."""
    if mini_ref(ref) is not None or ref.startswith(("/", ".", "~")) or Path(ref).exists():
        return False
    return ref.count("/") == 1


def cache_dir(hf_home: str | Path, repo_id: str) -> Path:
    """Where huggingface_hub keeps a model repo under HF_HOME (its `hub/models--org--name` layout)."""
    return Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))


def staged(hf_home: str | Path, repo_id: str) -> Path | None:
    """The staged snapshot of `repo_id`, or None: a model's has a config.json, a hub kernel's
    (an `org/name` attn_implementation, which has no config) any file at all."""
    snapshots = cache_dir(hf_home, repo_id) / "snapshots"
    if not snapshots.is_dir():
        return None
    for snap in sorted(snapshots.iterdir()):
        if (snap / "config.json").is_file() or (repo_id.startswith("kernels-") and any(snap.iterdir())):
            return snap
    return None


def job_env(cfg: StudyConfig) -> dict[str, str]:
    """The variables every job gets from `cluster.weights`: the shared cache and the Hub offline."""
    w = cfg.cluster.weights
    env: dict[str, str] = {}
    if w.hf_home:
        env["HF_HOME"] = w.hf_home
    if w.offline:
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def stage(cfg: StudyConfig, *, dry_run: bool = False) -> list[tuple[str, str]]:
    """Download every hub repo of the config into `cluster.weights.hf_home`: (ref, what) rows."""
    w = cfg.cluster.weights
    if not w.hf_home:
        raise ValueError("cluster.weights.hf_home is not set: name the shared HF cache that compute nodes see")
    rows: list[tuple[str, str]] = []
    token = os.environ.get(w.token_env) or None
    for ref in (m.ref for m in config_models(cfg)):
        if not is_hub_id(ref):
            rows.append((ref, "local (not staged)"))
            continue
        done = staged(w.hf_home, ref)
        if done is not None:
            rows.append((ref, f"staged: {done}"))
            continue
        if dry_run:
            rows.append((ref, "would download"))
            continue
        from huggingface_hub import snapshot_download  # only staging talks to the Hub

        # The whole repo: weights, tokenizer and chat template files, a kernel repo's build/ tree.
        path = snapshot_download(ref, cache_dir=str(Path(w.hf_home) / "hub"), token=token)
        rows.append((ref, f"downloaded: {path}"))
    return rows
