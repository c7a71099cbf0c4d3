#!/usr/bin/env bash
# Set up (idempotent) and run the main job on its bundled default: train Mask2Former (ResNet-18, from scratch)
# on the bundled real mini dataset on the CPU, then evaluate it (PQ, mask AP, mIoU). Extra arguments are
# config overrides for tools/train_net.py, e.g. `bash scripts/main.sh SOLVER.MAX_ITER 100`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "${UNIVERSAL_SEG_VENV:-$ROOT/.venv}/bin/python" tools/train_net.py \
  --config-file configs/mini/panoptic/m2f_r18.yaml "$@"
