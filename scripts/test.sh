#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. Extra arguments go to pytest, e.g. `bash scripts/test.sh -k deform`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
VENV="${UNIVERSAL_SEG_VENV:-$ROOT/.venv}"
# lint and format first (configuration in pyproject.toml); `ruff check --fix . && ruff format .` repairs most findings
"$VENV/bin/ruff" check --no-cache . || { echo "[test] ruff check failed: run '$VENV/bin/ruff check --fix .'" >&2; exit 1; }
"$VENV/bin/ruff" format --no-cache --check . || { echo "[test] ruff format failed: run '$VENV/bin/ruff format .'" >&2; exit 1; }
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
