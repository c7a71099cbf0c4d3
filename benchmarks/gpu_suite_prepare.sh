#!/usr/bin/env bash
# Fill the git-ignored .whl/ with every wheel that an offline GPU machine (CPython 3.12, Linux x86-64, torch and
# the usual scientific stack already installed) needs to import and run universal_seg, its tests and benchmarks.
# The set is named in benchmarks/gpu_wheels.txt (the only place); run this here, where PyPI is reachable:
#
#     bash benchmarks/gpu_suite_prepare.sh          # needs .venv (bash scripts/setup.sh) for pip and the builds
#
# and on the GPU machine, from the repository root:
#
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
#     export PYTHONPATH=/tmp/site
#
# Idempotent: a wheel of the listed name and version already in .whl/ is kept; a wheel of another version, or of
# a package not listed, is removed (two versions of one package would break that install). Binary wheels are the
# registry's cp312 manylinux ones; sdist-only packages are built here into py3-none-any wheels; detectron2 is our
# patched build (scripts/install_detectron2.py --wheel-dir). Ends by checking the set: total size under 40 MiB,
# and a pip install --target for CPython 3.12 (as on the GPU machine) whose result holds every listed import
# name once, no package twice, no top-level name owned by two wheels, none shadowing the standard library, and
# every requirement of a shipped wheel either shipped, preinstalled there, or marked skip in the list.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
LIST="$ROOT/benchmarks/gpu_wheels.txt"
WHL="$ROOT/.whl"
LIMIT_MIB=40
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The target: what `pip download` fetches and what the final check installs for.
TARGET_FLAGS=(--python-version 3.12 --implementation cp
              --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
              --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# Distributions already on the GPU machine (never shipped); used to check the requirements of what is shipped.
GPU_PREINSTALLED="absl-py accelerate aiohttp attrs certifi click cloudpickle cmake contourpy cycler cython filelock
  fonttools fsspec h5py huggingface-hub imageio iniconfig jinja2 joblib kiwisolver lxml markdown matplotlib networkx
  ninja numba numpy onnx onnxruntime opencv-python-headless packaging pandas pillow pip pluggy portalocker protobuf
  psutil pybind11 pygments pyparsing pytest pytest-xdist pytest-timeout python-dateutil pyyaml regex requests rich
  safetensors scikit-image scikit-learn scipy setuptools six sympy tabulate tensorboard timm tokenizers torch
  torchvision tqdm transformers triton typing-extensions wheel urllib3"

start=$SECONDS
say() { printf '[gpu_suite_prepare] %s\n' "$*"; }
die() { printf '[gpu_suite_prepare] error: %s\n' "$*" >&2; exit 1; }
norm() { printf '%s' "$1" | tr 'A-Z' 'a-z' | sed -E 's/[-_.]+/_/g'; }  # wheel-filename spelling of a name

[ -x "$PY" ] || die "no Python at $PY: run 'bash scripts/setup.sh' first (or set PYTHON=/path/to/python)"
[ -f "$LIST" ] || die "missing $LIST"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_suite_prepare.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# Run a pip command quietly (pip's configured-but-absent index locations warn on every call); its output is shown
# only when it fails.
pip_quiet() {
  local log="$WORK/pip.log"
  if ! "$PY" -m pip "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location 'file:" "$log" | tail -n 30 >&2
    die "pip $* failed"
  fi
}

# ----------------------------------------------------------------------------- the list
declare -A VERSION HOW          # key: normalised name
declare -a ORDER SPEC
while IFS= read -r line || [ -n "$line" ]; do
  line="${line%%#*}"
  read -r spec how imports extra <<<"$line" || true
  [ -z "${spec:-}" ] && continue
  [ -n "${extra:-}" ] && die "$LIST: too many columns in '$line'"
  case "$how" in
    download|build|detectron2) [[ "$spec" == *==* ]] || die "$LIST: '$spec' needs NAME==VERSION" ;;
    skip) continue ;;
    *) die "$LIST: unknown HOW '$how' in '$line'" ;;
  esac
  key="$(norm "${spec%%==*}")"
  [ -n "${VERSION[$key]:-}" ] && die "$LIST: '${spec%%==*}' is listed twice"
  VERSION[$key]="${spec#*==}"; HOW[$key]="$how"; ORDER+=("$key"); SPEC+=("$spec")
done <"$LIST"

# The detectron2 line must name the version that scripts/install_detectron2.py builds.
d2_version="$("$PY" -c '
import importlib.util, sys
spec = importlib.util.spec_from_file_location("install_detectron2", "scripts/install_detectron2.py")
module = importlib.util.module_from_spec(spec); sys.modules[spec.name] = module; spec.loader.exec_module(module)
print(module.DIST_VERSION)')"
[ "${VERSION[detectron2]:-}" = "$d2_version" ] ||
  die "$LIST names detectron2==${VERSION[detectron2]:-?}, scripts/install_detectron2.py builds $d2_version: update the list"

# Warn when .venv (what CI tests) has another version than the list.
"$PY" - "${SPEC[@]}" <<'EOF'
import importlib.metadata, sys
for spec in sys.argv[1:]:
    name, version = spec.split("==")
    if name == "detectron2":
        continue
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        installed = "not installed"
    if installed != version:
        print(f"[gpu_suite_prepare] warning: benchmarks/gpu_wheels.txt ships {spec}, .venv has {installed}")
EOF

# ----------------------------------------------------------------------------- fill .whl/
mkdir -p "$WHL"
declare -A PRESENT
shopt -s nullglob
for wheel in "$WHL"/*.whl; do
  file="$(basename "$wheel")"
  IFS=- read -r wname wversion _ <<<"$file"
  key="$(norm "$wname")"
  if [ -z "${VERSION[$key]:-}" ]; then
    say "removing $file (not in benchmarks/gpu_wheels.txt)"; rm -f "$wheel"
  elif [ "$wversion" != "${VERSION[$key]}" ] && [ "$key" != detectron2 ]; then
    say "removing $file (the list wants ${VERSION[$key]})"; rm -f "$wheel"
  elif [ -n "${PRESENT[$key]:-}" ] && [ "$key" != detectron2 ]; then
    say "removing $file (a second wheel of $wname ${VERSION[$key]})"; rm -f "$wheel"
  else
    PRESENT[$key]="$file"
  fi
done

fetched=0
for i in "${!ORDER[@]}"; do
  key="${ORDER[$i]}"; spec="${SPEC[$i]}"
  case "${HOW[$key]}" in
    detectron2)  # idempotent itself: keeps a wheel of the current patch set, replaces any other detectron2 wheel
      out="$("$PY" scripts/install_detectron2.py --wheel-dir "$WHL" 2>&1)" || { echo "$out" >&2; die "building the detectron2 wheel failed"; }
      case "$out" in *"nothing to build"*) ;; *) say "built detectron2 $d2_version"; fetched=$((fetched + 1)) ;; esac
      continue ;;
  esac
  if [ -n "${PRESENT[$key]:-}" ]; then continue; fi
  rm -rf "$WORK/out"; mkdir "$WORK/out"
  if [ "${HOW[$key]}" = download ]; then
    say "downloading $spec"
    pip_quiet download --no-deps --only-binary=:all: "${TARGET_FLAGS[@]}" -d "$WORK/out" "$spec"
  else
    say "building $spec from its sdist"
    pip_quiet wheel --no-deps --no-build-isolation --no-binary "${spec%%==*}" -w "$WORK/out" "$spec"
  fi
  made=("$WORK"/out/*.whl)
  [ "${#made[@]}" -eq 1 ] || die "$spec: expected one wheel, got ${#made[@]}: ${made[*]}"
  file="$(basename "${made[0]}")"
  IFS=- read -r wname wversion _ <<<"$file"
  [ "$(norm "$wname")" = "$key" ] && [ "$wversion" = "${VERSION[$key]}" ] || die "$spec: got $file"
  if [ "${HOW[$key]}" = build ]; then
    case "$file" in *-py3-none-any.whl|*-py2.py3-none-any.whl) ;; *) die "$spec: built $file, not a pure-Python wheel" ;; esac
  fi
  mv "${made[0]}" "$WHL/"
  fetched=$((fetched + 1))
done

# ----------------------------------------------------------------------------- size
wheels=("$WHL"/*.whl)
total=$(stat -c %s "${wheels[@]}" | awk '{s += $1} END {print s + 0}')
total_mib=$(awk -v b="$total" 'BEGIN {printf "%.2f", b / 1048576}')
for wheel in "${wheels[@]}"; do
  printf '  %8s KiB  %s\n' "$(( $(stat -c %s "$wheel") / 1024 ))" "$(basename "$wheel")"
done
say "${#wheels[@]} wheels, $total_mib MiB in total ($fetched fetched or built now)"
[ "$total" -le $((LIMIT_MIB * 1048576)) ] ||
  die ".whl/ holds $total_mib MiB of wheels, over the $LIMIT_MIB MiB limit: drop or slim a package in $LIST"

# ----------------------------------------------------------------------------- verify the set
# cp312 wheels do not import with this Python, so install them for CPython 3.12 (as pip will on the GPU machine)
# and check the listing and the metadata.
pip_quiet install --no-index --no-deps --no-compile --upgrade --only-binary=:all: "${TARGET_FLAGS[@]}" \
  --target "$WORK/site" "${wheels[@]}"
"$PY" - "$WORK/site" "$LIST" "$GPU_PREINSTALLED" <<'EOF'
import csv, re, sys
from email.parser import Parser
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement

site, list_file, preinstalled = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split()
canon = lambda name: re.sub(r"[-_.]+", "-", name).lower()
errors = []

shipped, skipped, imports = {}, set(), {}
for line in list_file.read_text(encoding="utf-8").splitlines():
    fields = line.split("#", 1)[0].split()
    if not fields:
        continue
    name, _, version = fields[0].partition("==")
    if fields[1] == "skip":
        skipped.add(canon(name))
    else:
        shipped[canon(name)] = version
        imports[canon(name)] = fields[2].split(",")

installed = {}  # canonical name -> (version, dist-info dir)
for info in sorted(site.glob("*.dist-info")):
    meta = Parser().parsestr((info / "METADATA").read_text(encoding="utf-8"))
    name = canon(meta["Name"])
    if name in installed:
        errors.append(f"{meta['Name']} is installed twice ({installed[name][0]} and {meta['Version']})")
    installed[name] = (meta["Version"], info, meta)

for name, version in shipped.items():
    if name not in installed:
        errors.append(f"{name} is listed but no wheel installed it")
    elif installed[name][0] != version:
        errors.append(f"{name}: installed {installed[name][0]}, listed {version}")
for name in installed:
    if name not in shipped:
        errors.append(f"{name} was installed but is not listed")
    if name in map(canon, preinstalled):
        errors.append(f"{name} is already on the GPU machine and must not be shipped")

# Top-level names: each listed import name present, each top-level entry owned by one distribution only,
# none shadowing a standard-library module (PYTHONPATH comes before the standard library on sys.path).
owners = {}
for name, (_, info, _) in installed.items():
    with open(info / "RECORD", newline="", encoding="utf-8") as f:
        tops = {row[0].split("/", 1)[0] for row in csv.reader(f) if row}
    for top in tops:
        if top.endswith(".dist-info") or top in ("..", "bin"):
            continue
        owners.setdefault(top.removesuffix(".py"), set()).add(name)
for top, names in sorted(owners.items()):
    if len(names) > 1:
        errors.append(f"top-level {top!r} is written by {sorted(names)}")
    if top in sys.stdlib_module_names:
        errors.append(f"top-level {top!r} (from {sorted(names)}) would shadow the standard library")
for name, modules in imports.items():
    for module in modules:
        is_package = (site / module / "__init__.py").is_file()
        if not (is_package or (site / f"{module}.py").is_file() or list(site.glob(f"{module}.*.so"))):
            errors.append(f"{name}: top-level module {module!r} missing from the installed set")

# Requirements (for CPython 3.12 on Linux x86-64, no extras): shipped, preinstalled there, or marked skip.
env = {"python_version": "3.12", "python_full_version": "3.12.0", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
       "os_name": "posix", "platform_machine": "x86_64", "extra": ""}
available = set(shipped) | set(map(canon, preinstalled)) | skipped
for name, (_, _, meta) in installed.items():
    for text in meta.get_all("Requires-Dist") or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        if canon(req.name) not in available:
            errors.append(f"{name} requires {text!r}: neither shipped, preinstalled on the GPU machine, nor skipped")

if errors:
    print("[gpu_suite_prepare] error: the wheel set is not consistent:", *errors, sep="\n  ", file=sys.stderr)
    sys.exit(1)
print(f"[gpu_suite_prepare] verified: {len(installed)} distributions install for CPython 3.12 into one target, "
      f"{sum(map(len, imports.values()))} top-level modules present, each package once, requirements covered")
EOF

say "done in $((SECONDS - start)) s; on the GPU machine run:"
echo "    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site"
