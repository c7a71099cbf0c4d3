#!/usr/bin/env bash
# Idempotent set-up of universal_seg on a fresh machine (Linux, Python >= 3.10, 2+ cores):
#   1. a virtual environment in .venv (override with UNIVERSAL_SEG_VENV),
#   2. the pinned requirements (constraints.txt pins torch/torchvision as a pair, also for sdist builds),
#   3. detectron2 v0.6 from the registry, patched for the current stack (scripts/install_detectron2.py),
#   4. universal_seg itself, editable, with its compiled op (CPU kernels; CUDA kernels too when nvcc exists).
# Each step is skipped when its inputs have not changed since it last succeeded, so a second run takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${UNIVERSAL_SEG_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
export PIP_CONSTRAINT="$ROOT/constraints.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '[setup] %s\n' "$*"; }
hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
start=$SECONDS

# 1. virtual environment
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' 2>/dev/null || {
    echo "[setup] error: $PYTHON is not Python >= 3.10; set PYTHON=/path/to/python3.11 and run again." >&2; exit 1; }
  say "creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip)

# 2. requirements
deps_stamp="$VENV/.universal_seg-deps.sha256"
deps_hash=$(hash_of requirements.txt constraints.txt scripts/setup.sh)
if [ "$(cat "$deps_stamp" 2>/dev/null)" != "$deps_hash" ]; then
  say "installing requirements (torch $(grep '^torch==' constraints.txt | cut -d= -f3))"
  "${PIP[@]}" install -q setuptools wheel
  "${PIP[@]}" install -q -r requirements.txt
  # panopticapi's metadata pins numpy<2 and pulls scikit-image, neither of which its code needs.
  "${PIP[@]}" install -q --no-deps panopticapi-lite==0.2.0
  echo "$deps_hash" > "$deps_stamp"
else
  say "requirements up to date"
fi

# 3. detectron2 (the script is itself idempotent and leaves an upstream build alone)
"$PY" scripts/install_detectron2.py

# 4. universal_seg and its compiled op: rebuilt when the sources, torch or the CUDA toolkit change
build_stamp="$VENV/.universal_seg-build.sha256"
build_hash=$( { hash_of setup.py universal_seg/ops/csrc/*.h universal_seg/ops/csrc/*.cpp \
                  universal_seg/ops/csrc/cpu/* universal_seg/ops/csrc/cuda/*;
                "$PY" -c 'import torch; print(torch.__version__)';
                command -v nvcc || true; echo "${CUDA_HOME:-}${TORCH_CUDA_ARCH_LIST:-}${UNIVERSAL_SEG_CUDA:-}"; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$build_stamp" 2>/dev/null)" != "$build_hash" ] || ! "$PY" -c 'import torch, universal_seg._C' 2>/dev/null; then
  say "building universal_seg and its compiled op (a few minutes with nvcc on 2 cores)"
  "${PIP[@]}" install -q --no-build-isolation --no-deps -e .
  "$PY" -c 'import torch, universal_seg._C as C; print("[setup] universal_seg._C built:", "CPU + CUDA %d" % C.cuda_version() if C.cuda_version() else "CPU only")'
  echo "$build_hash" > "$build_stamp"
else
  say "universal_seg up to date"
fi
"$PY" datasets/prepare_mini.py
say "done in $((SECONDS - start)) s; environment: $VENV"
