#!/usr/bin/env bash
# Build the three job environments a GPU cluster profile names (cluster.envs: app, vllm, axolotl)
# under PREFIX, from the pins in compress_distill/jobs/envs/*.txt. Run it once on a node with internet access whose
# file system the compute nodes share (e.g. PREFIX=/opt/envs or a project directory), then point
# the profile at PREFIX/compress-distill, PREFIX/vllm and PREFIX/axolotl and run
# `compress-distill preflight CONFIG`, which checks the versions and that each env sees CUDA.
# Usage: bash scripts/setup-cluster-envs.sh PREFIX          (Python >= 3.11; PYTHON=... to choose one)
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${1:?usage: bash scripts/setup-cluster-envs.sh PREFIX}
PY=${PYTHON:-python3}

venv() {  # venv DIR: create (once) and upgrade pip
  [[ -x $1/bin/python ]] || "$PY" -m venv "$1"
  "$1/bin/python" -m pip install -q --upgrade pip
}

# compress_distill itself: what every job's payload runs (cluster.envs.app).
venv "$PREFIX/compress-distill"
"$PREFIX/compress-distill/bin/python" -m pip install -q "torch==2.13.0"
"$PREFIX/compress-distill/bin/python" -m pip install -q ".[local]"

# vLLM: it pins its own CUDA torch (compress_distill/jobs/envs/vllm-gpu.txt).
venv "$PREFIX/vllm"
"$PREFIX/vllm/bin/python" -m pip install -q -r compress_distill/jobs/envs/vllm-gpu.txt

# Axolotl: torch first, so that flash-attn builds against it (no build isolation).
venv "$PREFIX/axolotl"
"$PREFIX/axolotl/bin/python" -m pip install -q "torch==2.13.0" packaging ninja wheel
"$PREFIX/axolotl/bin/python" -m pip install -q --no-build-isolation -r compress_distill/jobs/envs/axolotl-gpu.txt

for env in compress-distill vllm axolotl; do
  echo "setup-cluster-envs: $PREFIX/$env ready"
done
