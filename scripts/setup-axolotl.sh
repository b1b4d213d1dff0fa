#!/usr/bin/env bash
# Build .venv-axolotl: Axolotl 0.19.0 on CPU torch, apart from the orchestrator's env (different pins).
# Used to validate every generated Axolotl config with Axolotl's own validator, and for CPU Axolotl runs.
# ~7 min and ~4.3 GB the first time; idempotent afterwards. Usage: bash scripts/setup-axolotl.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -x .venv-axolotl/bin/python ]] && .venv-axolotl/bin/python -c "import axolotl" 2>/dev/null; then
  echo "setup-axolotl: .venv-axolotl ready"; exit 0
fi
python3 -m venv .venv-axolotl
.venv-axolotl/bin/python -m pip install -q --upgrade pip
.venv-axolotl/bin/python -m pip install -q "torch==2.13.0"   # the local CPU wheel; must come first
.venv-axolotl/bin/python -m pip install -q -r compress_distill/jobs/envs/axolotl-cpu-requirements.txt
.venv-axolotl/bin/python -c "import axolotl; print('setup-axolotl: axolotl', axolotl.__version__)"
