#!/usr/bin/env bash
# The package works installed from its wheel, away from the checkout (issue 17 item 6).
#
# 1. builds the wheel from the checkout's files (a copy: the checkout gets no build/ dir);
# 2. installs it, NOT editable, into a fresh venv in a temp dir outside the checkout;
# 3. from that temp dir, runs `compress-distill plan`, `render`, reads the env pins, and runs a
#    one-cell `compress-distill run` of configs/mini-ci.yaml (copied out): model builds, served
#    generation, TRL training and served evaluation, every job through its job script on the
#    local backend;
# 4. proves the installed package never touched the checkout: a sitecustomize in the venv
#    (so in the CLI and in every job process it starts) records each open/listdir/scandir/exec
#    of a path under the checkout; one such access fails the check.
#
# Dependencies are not downloaded: the venv reads the main venv's site-packages (.venv, built
# by scripts/setup.sh) through a path entry; the wheel itself goes in with --no-deps. That path
# entry adds a directory to sys.path without running its .pth files, so .venv's editable
# install of compress_distill (a .pth hook into the checkout) stays out; the check asserts that
# compress_distill is imported from the new venv. Usage: bash scripts/check_wheel.sh [PYTHON]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd -P)
py=${1:-$repo/.venv/bin/python}
t0=$(date +%s)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/cd-wheel.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
case "$tmp" in "$repo"/*) echo "[wheel] temp dir $tmp is inside the checkout" >&2; exit 2;; esac

# 1. the wheel
"$py" - "$repo" "$tmp/src" <<'PY'
import shutil, subprocess, sys
from pathlib import Path
repo, dst = Path(sys.argv[1]), Path(sys.argv[2])
files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                       capture_output=True, text=True, check=True).stdout.split("\0")
for rel in filter(None, files):
    if rel.startswith("models/") or not (repo / rel).is_file():
        continue  # models/: the committed mini models, not package data (a wheel builds its own)
    (dst / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(repo / rel, dst / rel)
PY
# offline with the venv's own setuptools when it is recent enough (pyproject: setuptools>=68), else
# pip fetches the build backend from the package index, as scripts/setup.sh does for everything
isolation=--no-build-isolation
"$py" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 68)' 2>/dev/null || isolation=
"$py" -m pip wheel -q --no-deps $isolation -w "$tmp/dist" "$tmp/src" >"$tmp/wheel.log" 2>&1 \
  || { cat "$tmp/wheel.log" >&2; echo "[wheel] FAIL: pip wheel" >&2; exit 1; }
whl=$(ls "$tmp"/dist/compress_distill-*.whl)
echo "[wheel] built $(basename "$whl") ($(du -k "$whl" | cut -f1) KiB) in $(( $(date +%s) - t0 ))s"
cp "$repo/configs/mini-ci.yaml" "$tmp/mini-ci.yaml"
rm -rf "$tmp/src"

# 2. fresh venv, the wheel without -e, dependencies from the main venv
"$py" -m venv --without-pip "$tmp/venv"
site=$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
deps=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
deps_prefix=$("$py" -c 'import os, sys; print(os.path.realpath(sys.prefix))')  # may be $repo/.venv (CI)
"$py" -m pip --python "$tmp/venv/bin/python" install -q --no-deps "$whl"
echo "$deps" > "$site/zz-deps-from-main-venv.pth"   # a plain path line: its .pth files are NOT run
cat > "$site/sitecustomize.py" <<PY
import os, sys
_REPO = os.path.realpath("$repo") + os.sep
_DEPS = "$deps_prefix" + os.sep  # the dependency venv is an environment, not the checkout's sources
_LOG = "$tmp/checkout-access.log"
def _hook(event, args):
    if event not in ("open", "os.listdir", "os.scandir", "subprocess.Popen", "os.exec", "os.posix_spawn"):
        return
    items = [args[0]]
    if event in ("subprocess.Popen", "os.exec", "os.posix_spawn"):
        items += list(args[1] or ()) + ([args[2]] if event == "subprocess.Popen" and args[2] else [])
    for a in items:
        try:
            p = os.fsdecode(a) if isinstance(a, (str, bytes, os.PathLike)) else None
        except TypeError:
            p = None
        real = os.path.realpath(p) + os.sep if p else ""
        if real.startswith(_REPO) and not real.startswith(_DEPS):
            with open(_LOG, "a") as f:
                f.write(f"{os.getpid()} {event} {p}\n")
sys.addaudithook(_hook)
PY

# 3. run it from outside the checkout, with nothing pointing back at it
cd "$tmp"
export XDG_CACHE_HOME="$tmp/cache" HOME="$tmp/home"   # models: the wheel default, $XDG_CACHE_HOME/compress-distill
unset PYTHONPATH VIRTUAL_ENV PREFECT_API_URL COMPRESS_DISTILL_MODELS
mkdir -p "$HOME"
bin="$tmp/venv/bin"
where=$("$bin/python" -c 'import compress_distill, os; print(os.path.dirname(compress_distill.__file__))')
case "$where" in "$site"/*) ;; *) echo "[wheel] FAIL: compress_distill imported from $where, not the wheel" >&2; exit 1;; esac
"$bin/compress-distill" plan mini-ci.yaml >/dev/null
"$bin/compress-distill" render mini-ci.yaml rendered --store "$tmp/store" >/dev/null   # the packaged templates
"$bin/python" -c 'from compress_distill.cluster.envs import pinned_version as v; assert v("vllm") and v("axolotl")'  # pins
t1=$(date +%s)
"$bin/compress-distill" run mini-ci.yaml --store "$tmp/store" --select data=raw --select method=full \
  --no-progress --json > run.json || { echo "[wheel] FAIL: run" >&2; tail -50 "$tmp"/store/.logs/* >&2 || true; exit 1; }
"$bin/python" - run.json <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
jobs = [n for n in s["ran"] if n.split("/")[0] in ("build", "generate", "train", "evaluate")]
assert s["ran"] and not s.get("failed") and len(jobs) >= 4, s
print(f"[wheel] run: {len(s['ran'])} nodes ran ({len(jobs)} as jobs through the packaged templates)")
PY
echo "[wheel] the run took $(( $(date +%s) - t1 ))s (from $tmp)"

# 4. nothing read from the checkout
if [[ -s $tmp/checkout-access.log ]]; then
  echo "[wheel] FAIL: the installed package touched the checkout:" >&2
  sort -u -k2 "$tmp/checkout-access.log" | head -20 >&2
  exit 1
fi
echo "[wheel] ok: installed wheel ran without touching $repo ($(( $(date +%s) - t0 ))s in all)"
