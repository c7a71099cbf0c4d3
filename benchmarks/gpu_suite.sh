#!/usr/bin/env bash
# The GPU check of universal_seg in one command (at most ~8 minutes on one H100):
#   1. installs the wheels that benchmarks/gpu_suite_prepare.sh put in .whl/ (offline machines: detectron2 & co.),
#   2. builds the op for the local GPU (TORCH_CUDA_ARCH_LIST = its compute capability, unless set),
#   3. runs every CUDA test (pytest -k cuda),
#   4. benchmarks the op (benchmarks/gpu_op.py) and the models end to end (benchmarks/gpu_e2e.py),
#   5. writes gpu_suite.json and prints one table.
# Each step has its own time limit and its output is kept under the output folder, so a failure or a timeout in
# one step still leaves the others' results. Usage:
#   bash benchmarks/gpu_suite.sh [--out DIR] [--dry-run]
# --dry-run runs the CPU-checkable parts here (the .venv of scripts/setup.sh, no GPU): the CPU tests of the arch
# selection and of the op, and both benchmarks in their CPU dry-run modes.
# On the project's lent GPU machine: bash benchmarks/gpu_suite_prepare.sh here first, then carry .whl and run
#   bash benchmarks/gpu_suite.sh --out "$OUT"
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY=0
OUT_DIR="$ROOT/output/gpu_suite"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT_DIR="$2"; shift ;;
    *) echo "gpu_suite.sh: unknown argument $1 (use --out DIR and/or --dry-run)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
say() { printf '[gpu_suite %4ds] %s\n' "$SECONDS" "$*"; }
STATUS=()
step() {  # step NAME LIMIT_S COMMAND...: runs it with a time limit, logs to OUT_DIR/NAME.log, records the outcome
  local name=$1 limit=$2; shift 2
  say "$name: $*"
  local start=$SECONDS
  timeout "$limit" "$@" > >(tee "$OUT_DIR/$name.log") 2>&1
  local rc=$?
  STATUS+=("$name=$rc:$((SECONDS - start))s")
  say "$name: exit $rc after $((SECONDS - start)) s"
  return $rc
}

if [ "$DRY" = 1 ]; then
  PY="${UNIVERSAL_SEG_VENV:-$ROOT/.venv}/bin/python"
  [ -x "$PY" ] || { echo "gpu_suite.sh --dry-run: no $PY; run bash scripts/setup.sh first." >&2; exit 1; }
  DEVICE_ARGS=(--dry-run)
  TESTS=(tests/test_cuda_arch.py tests/test_ms_deform_attn.py)
else
  PY=python3
  if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
    step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/universal_seg_site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/universal_seg_site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c 'import torch; assert torch.cuda.is_available()' ||
    { echo "gpu_suite.sh: no CUDA device visible to $PY; use --dry-run on a machine without a GPU." >&2; exit 1; }
  if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
    export TORCH_CUDA_ARCH_LIST
  fi
  export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
  step build 300 "$PY" setup.py -q build_ext --inplace || exit 1
  "$PY" -c 'import torch, universal_seg._C as C; print("[gpu_suite] built for", C.cuda_targets(), "CUDA", C.cuda_version())'
  DEVICE_ARGS=()
  TESTS=(tests -k "cuda")
fi

step tests 240 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" "${TESTS[@]}" -rfEs
step op 150 "$PY" benchmarks/gpu_op.py "${DEVICE_ARGS[@]}" --json "$OUT_DIR/op.json"
step e2e 300 "$PY" benchmarks/gpu_e2e.py "${DEVICE_ARGS[@]}" ${E2E_TIME_BUDGET:+--time-budget "$E2E_TIME_BUDGET"} ${E2E_CASES:+--cases "$E2E_CASES"} --json "$OUT_DIR/e2e.json"

"$PY" - "$OUT_DIR" "${STATUS[@]}" <<'EOF'
import json, os, sys
out, steps = sys.argv[1], dict(s.split("=", 1) for s in sys.argv[2:])
summary = {"steps": steps}
for name in ("op", "e2e"):
    path = os.path.join(out, f"{name}.json")
    summary[name] = json.load(open(path)) if os.path.exists(path) else None
tests = os.path.join(out, "tests.log")
if os.path.exists(tests):
    lines = [l for l in open(tests).read().splitlines() if " passed" in l or " failed" in l or " error" in l]
    summary["tests"] = lines[-1] if lines else None
json.dump(summary, open(os.path.join(out, "gpu_suite.json"), "w"), indent=1)
print("\n## GPU suite summary")
print("steps (exit code: seconds):", ", ".join(f"{k} {v}" for k, v in steps.items()))
print("tests:", summary.get("tests"))
print("results:", os.path.join(out, "gpu_suite.json"))
EOF
for s in "${STATUS[@]}"; do case "$s" in *=0:*) ;; *) exit 1 ;; esac; done
