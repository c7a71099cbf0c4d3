#!/usr/bin/env bash
# Set up (idempotent) and run the main job on its bundled default. Until the model lands this is the
# MSDeformAttn benchmark (compiled op vs reference, CPU and, when present, GPU); extra arguments go to it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "${UNIVERSAL_SEG_VENV:-$ROOT/.venv}/bin/python" benchmarks/ms_deform_attn.py "$@"
