#!/usr/bin/env python
"""Install a pure-Python, patched detectron2 v0.6 into the running Python environment.

Usage (run by the Python of the target environment)::

    python scripts/install_detectron2.py [--cache-dir DIR] [--force]
    python scripts/install_detectron2.py --wheel-dir DIR [--cache-dir DIR] [--force]

With ``--wheel-dir`` the same patched tree is built into a pure-Python wheel in DIR (for a machine without
network access) instead of being installed; nothing in the running environment changes.

The package registry has no ``detectron2`` distribution. It has ``pb1-detectron2==0.6``, an sdist whose
Python files are upstream detectron2 v0.6 but which lacks the C++/CUDA sources, so it cannot be built
as is. This script

1. leaves a working detectron2 that it did not make (e.g. upstream built from source) alone, and exits
   at once when its own build with the current patch set is already installed;
2. downloads the sdist with pip (cached under ``--cache-dir``), pinned to its sha256 so pip verifies it before
   any of its code runs, and checks the sha256 of a cached copy;
3. extracts it and applies the substitutions in ``SUBSTITUTIONS`` (each must match exactly once),
   writes a pure-Python ``detectron2/_C.py``, moves the bundled projects under
   ``detectron2/projects/`` and replaces ``setup.py`` by a minimal one without extensions;
4. installs the result with ``pip install --no-deps --no-build-isolation`` (not editable), or, with
   ``--wheel-dir``, builds it with ``pip wheel --no-deps --no-build-isolation`` into that directory
   (skipped when a wheel of the current patch set is already there; other detectron2 wheels are removed).

All changes live in the installed files; nothing is monkeypatched at import time.
Only the standard library is used. Importing this file has no side effects (tests load it).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence

SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"

# Bump whenever the substitutions, _C.py, the project layout or setup.py change: an installed build
# with another patch set is reinstalled. (The marker also records a digest of all of these, so an
# edit without a bump still triggers a reinstall.)
PATCH_SET_VERSION = 2
DIST_VERSION = f"{SDIST_VERSION}+universalseg{PATCH_SET_VERSION}"
MARKER_NAME = "_universal_seg_patched.txt"

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "detectron2"


class Substitution(NamedTuple):
    """Replace ``old`` (which must occur exactly once) by ``new`` in ``path`` (relative to the sdist root)."""

    path: str
    old: str
    new: str


# fmt: off
SUBSTITUTIONS: List[Substitution] = [
    # Pillow 10 removed Image.LINEAR (an alias of BILINEAR) [upstream ff53992b]
    Substitution("detectron2/data/transforms/transform.py",
                 "interp=Image.LINEAR", "interp=Image.BILINEAR"),
    # numpy 1.24 removed the np.int alias [027099d3]
    Substitution("detectron2/data/build.py",
                 "histogram = np.zeros((num_classes,), dtype=np.int)",
                 "histogram = np.zeros((num_classes,), dtype=int)"),
    # same [027099d3]
    Substitution("detectron2/data/build.py",
                 'if not x.get("iscrowd", 0)], dtype=np.int',
                 'if not x.get("iscrowd", 0)], dtype=int'),
    # same [027099d3]
    Substitution("detectron2/evaluation/sem_seg_evaluation.py",
                 "pred = np.array(output, dtype=np.int)", "pred = np.array(output, dtype=int)"),
    # same [027099d3]
    Substitution("detectron2/evaluation/sem_seg_evaluation.py",
                 "gt = np.array(Image.open(f), dtype=np.int)", "gt = np.array(Image.open(f), dtype=int)"),
    # numpy 1.24 removed the np.float alias [54dd614e]
    Substitution("detectron2/evaluation/sem_seg_evaluation.py",
                 "acc = np.full(self._num_classes, np.nan, dtype=np.float)",
                 "acc = np.full(self._num_classes, np.nan, dtype=float)"),
    # same [54dd614e]
    Substitution("detectron2/evaluation/sem_seg_evaluation.py",
                 "iou = np.full(self._num_classes, np.nan, dtype=np.float)",
                 "iou = np.full(self._num_classes, np.nan, dtype=float)"),
    # same [54dd614e]
    Substitution("detectron2/evaluation/sem_seg_evaluation.py",
                 "tp = self._conf_matrix.diagonal()[:-1].astype(np.float)",
                 "tp = self._conf_matrix.diagonal()[:-1].astype(float)"),
    # same [54dd614e]
    Substitution("detectron2/evaluation/sem_seg_evaluation.py",
                 "pos_gt = np.sum(self._conf_matrix[:-1, :-1], axis=0).astype(np.float)",
                 "pos_gt = np.sum(self._conf_matrix[:-1, :-1], axis=0).astype(float)"),
    # same [54dd614e]
    Substitution("detectron2/evaluation/sem_seg_evaluation.py",
                 "pos_pred = np.sum(self._conf_matrix[:-1, :-1], axis=1).astype(np.float)",
                 "pos_pred = np.sum(self._conf_matrix[:-1, :-1], axis=1).astype(float)"),
    # numpy 1.24 removed the np.str alias [654570a2]
    Substitution("detectron2/data/datasets/pascal_voc.py",
                 "np.loadtxt(f, dtype=np.str)", "np.loadtxt(f, dtype=str)"),
    # np.bool: removed in numpy 1.24, back as a different type (np.bool_) in numpy 2 [857d5de2]
    Substitution("detectron2/evaluation/pascal_voc_evaluation.py",
                 'np.array([x["difficult"] for x in R]).astype(np.bool)',
                 'np.array([x["difficult"] for x in R]).astype(bool)'),
    # same, in a comment only, so that no np.bool is left anywhere [857d5de2]
    Substitution("detectron2/evaluation/pascal_voc_evaluation.py",
                 "np.array([False for x in R]).astype(np.bool)",
                 "np.array([False for x in R]).astype(bool)"),
    # same [857d5de2]
    Substitution("detectron2/structures/masks.py",
                 "return np.zeros((height, width)).astype(np.bool)",
                 "return np.zeros((height, width)).astype(bool)"),
    # same [857d5de2]
    Substitution("detectron2/structures/masks.py",
                 "return mask_util.decode(rle).astype(np.bool)", "return mask_util.decode(rle).astype(bool)"),
    # same [857d5de2]
    Substitution("detectron2/structures/masks.py",
                 "np.asarray(keep, dtype=np.bool)", "np.asarray(keep, dtype=bool)"),
    # same [857d5de2]
    Substitution("detectron2/utils/visualizer.py",
                 "return (self._seg != empty_ids[0]).numpy().astype(np.bool)",
                 "return (self._seg != empty_ids[0]).numpy().astype(bool)"),
    # same [857d5de2]
    Substitution("detectron2/utils/visualizer.py",
                 "yield (self._seg == sid).numpy().astype(np.bool), sinfo",
                 "yield (self._seg == sid).numpy().astype(bool), sinfo"),
    # same [857d5de2]
    Substitution("detectron2/utils/visualizer.py",
                 "mask = (self._seg == sid).numpy().astype(np.bool)",
                 "mask = (self._seg == sid).numpy().astype(bool)"),
    # same [857d5de2]
    Substitution("detectron2/utils/video_visualizer.py",
                 "is_crowd = np.zeros((len(instances),), dtype=np.bool)",
                 "is_crowd = np.zeros((len(instances),), dtype=bool)"),
    # numpy 2: np.array(copy=False) raises when a copy is needed; asarray copies only if needed [70f45430]
    Substitution("detectron2/layers/mask_ops.py",
                 "mask = np.array(mask, copy=False)", "mask = np.asarray(mask)"),
    # Python 3.11: random.sample() no longer accepts a set [400a49c1]
    Substitution("detectron2/data/common.py",
                 "self._rng.sample(self._fallback_candidates, k=1)",
                 "self._rng.sample(list(self._fallback_candidates), k=1)"),
    # colorsys may return a channel slightly above 1, which matplotlib rejects: clip [b8ef0392]
    Substitution("detectron2/utils/visualizer.py",
                 "        return modified_color\n",
                 "        return tuple(np.clip(modified_color, 0.0, 1.0))\n"),
    # setuptools >= 81 has no pkg_resources: find the configs next to the module (not fixed upstream)
    Substitution("detectron2/model_zoo/model_zoo.py",
                 "import pkg_resources\n", ""),
    # same (not fixed upstream)
    Substitution("detectron2/model_zoo/model_zoo.py",
                 'cfg_file = pkg_resources.resource_filename(\n'
                 '        "detectron2.model_zoo", os.path.join("configs", config_path)\n'
                 '    )',
                 'cfg_file = os.path.join(\n'
                 '        os.path.dirname(os.path.abspath(__file__)), "configs", config_path\n'
                 '    )'),
    # torch 2 has no caffe2: import the caffe2 export API only where caffe2 exists [d29378aa]
    Substitution("detectron2/export/__init__.py",
                 "from .api import *\n",
                 "try:\n"
                 "    from caffe2.proto import caffe2_pb2 as _tmp  # noqa: F401  (caffe2 is optional)\n"
                 "except ImportError:\n"
                 "    pass\n"
                 "else:\n"
                 "    from .api import *\n"),
    # Python >= 3.10: `import importlib` no longer makes importlib.abc / importlib.util available [2a68c056]
    Substitution("detectron2/projects/__init__.py",
                 "import importlib\n", "import importlib.abc\nimport importlib.util\n"),
    # comm.create_local_process_group, so that a launcher sets up the per-machine group through comm instead of
    # assigning comm._LOCAL_PROCESS_GROUP from outside (upstream added it after v0.6 [PR #4742]; written here)
    Substitution("detectron2/utils/comm.py",
                 "def get_local_rank() -> int:\n",
                 "def create_local_process_group(num_workers_per_machine: int) -> None:\n"
                 '    """\n'
                 "    Create one process group per machine, of the ranks [m * num_workers_per_machine,\n"
                 "    (m + 1) * num_workers_per_machine) of machine m, and make this process's machine's group\n"
                 "    _LOCAL_PROCESS_GROUP (what get_local_rank() and get_local_size() use).\n"
                 "\n"
                 "    Every process calls it once, after torch.distributed.init_process_group(): creating a\n"
                 "    group is a collective call.\n"
                 '    """\n'
                 "    global _LOCAL_PROCESS_GROUP\n"
                 '    assert _LOCAL_PROCESS_GROUP is None, "the local process group was already created"\n'
                 "    world_size = get_world_size()\n"
                 "    assert world_size % num_workers_per_machine == 0, (world_size, num_workers_per_machine)\n"
                 "    num_machines = world_size // num_workers_per_machine\n"
                 "    machine_rank = get_rank() // num_workers_per_machine\n"
                 "    for machine in range(num_machines):\n"
                 "        first = machine * num_workers_per_machine\n"
                 "        group = dist.new_group(list(range(first, first + num_workers_per_machine)))\n"
                 "        if machine == machine_rank:\n"
                 "            _LOCAL_PROCESS_GROUP = group\n"
                 "\n"
                 "\n"
                 "def get_local_rank() -> int:\n"),
]
# fmt: on

# Bundled projects: sdist location -> package directory they are installed as (upstream's setup.py maps
# them with package_dir; moving them makes them ordinary subpackages of detectron2.projects).
PROJECTS: Dict[str, str] = {
    "projects/DeepLab/deeplab": "detectron2/projects/deeplab",
    "projects/PointRend/point_rend": "detectron2/projects/point_rend",
    "projects/Panoptic-DeepLab/panoptic_deeplab": "detectron2/projects/panoptic_deeplab",
}

C_MODULE_SOURCE = '''\
"""Pure-Python stand-in for detectron2's compiled extension ``detectron2._C``.

Written by universal_seg's scripts/install_detectron2.py. The detectron2 v0.6 sdist on the package
registry ships without the C++/CUDA sources, so this build has no compiled operators. The environment
queries used by ``detectron2.utils.collect_env`` are answered here; any other attribute (an operator
such as box_iou_rotated, nms_rotated, roi_align_rotated_forward, deform_conv_forward,
modulated_deform_conv_forward, COCOevalEvaluateImages, COCOevalAccumulate, InstanceAnnotation)
raises ``MissingCompiledOpError`` naming it.
"""

__all__ = ["get_compiler_version", "get_cuda_version", "has_cuda", "MissingCompiledOpError"]

IS_PURE_PYTHON_BUILD = True

_MISSING_OP_MESSAGE = (
    "detectron2._C.{name} is a compiled operator, and this detectron2 is a pure-Python build "
    "(installed by universal_seg's scripts/install_detectron2.py) without compiled operators. "
    "Avoid the code path that needs it (e.g. use COCOEvaluator(..., use_fast_impl=False) instead of "
    "the C++ COCO evaluation; rotated boxes and deformable convolutions are unavailable), "
    "or build upstream detectron2 from source."
)


class MissingCompiledOpError(AttributeError, NotImplementedError):
    """Raised when code asks for a compiled operator that this build does not have."""


def get_compiler_version():
    """Compiler the extension was built with: none."""
    return "none: pure-Python build by universal_seg"


def get_cuda_version():
    """CUDA the extension was built with: none; reports the CUDA of PyTorch for information."""
    try:
        import torch
    except ImportError:
        return "not available"
    cuda = getattr(torch.version, "cuda", None)
    return "not compiled (PyTorch built with CUDA {})".format(cuda) if cuda else "not available"


def has_cuda():
    """Whether the extension has CUDA kernels: never."""
    return False


def __getattr__(name):
    # Dunder probes (hasattr(_C, "__file__"), copy, inspect, pickle) must see a plain AttributeError.
    if name.startswith("__"):
        raise AttributeError("module {!r} has no attribute {!r}".format(__name__, name))
    raise MissingCompiledOpError(_MISSING_OP_MESSAGE.format(name=name))


def __dir__():
    return sorted(list(globals()))
'''

SETUP_PY_TEMPLATE = """\
# Written by universal_seg's scripts/install_detectron2.py: a pure-Python build of detectron2 v0.6
# (from the {sdist} sdist, patched), without the compiled extension of upstream's setup.py.
import glob
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_ZOO = os.path.join(HERE, "detectron2", "model_zoo")
# model_zoo.get_config_file() reads these YAML files from the installed package.
CONFIGS = sorted(
    os.path.relpath(p, MODEL_ZOO)
    for p in glob.glob(os.path.join(MODEL_ZOO, "configs", "**", "*.yaml"), recursive=True)
)

setup(
    name="detectron2",
    version="{version}",
    author="FAIR",
    url="https://github.com/facebookresearch/detectron2",
    description="detectron2 v0.6, pure-Python build patched for numpy 2 / Pillow >= 10 / Python 3.11 "
    "/ torch 2 by universal_seg (no compiled operators)",
    license="Apache-2.0",
    packages=find_packages(include=["detectron2", "detectron2.*"]),
    package_data={{"detectron2": ["{marker}"], "detectron2.model_zoo": CONFIGS}},
    python_requires=">=3.8",
    zip_safe=False,
)
"""

PYPROJECT_TOML = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"
"""

# Parts of the sdist that must not reach the build: its metadata (naming the distribution pb1-detectron2),
# the projects/ tree emptied by relocate_projects(), and tools/ (scripts that upstream does not install).
SDIST_LEFTOVERS = ["PKG-INFO", "pb1_detectron2.egg-info", "projects", "tools"]


class InstallError(Exception):
    """A failure that stops the install; its message is printed as is."""


class InstalledState(NamedTuple):
    """What ``import detectron2`` would find: kind is absent, ours, stale, foreign or unknown."""

    kind: str
    location: Optional[Path] = None
    detail: str = ""


def log(message: str) -> None:
    """Print one progress line."""
    print(f"[install_detectron2] {message}", flush=True)


# ----------------------------------------------------------------------------- identity of a build


def patch_set_id() -> str:
    """Version plus digest of everything this script changes; recorded in the marker file."""
    digest = hashlib.sha256()
    for part in (repr(SUBSTITUTIONS), repr(PROJECTS), C_MODULE_SOURCE, SETUP_PY_TEMPLATE, DIST_VERSION):
        digest.update(part.encode("utf-8"))
    return f"{PATCH_SET_VERSION}.{digest.hexdigest()[:12]}"


def marker_text() -> str:
    """Contents of the marker file written into the installed package."""
    return (
        "# detectron2 built by universal_seg's scripts/install_detectron2.py. Do not edit.\n"
        f"sdist={SDIST_NAME}=={SDIST_VERSION}\n"
        f"sdist_sha256={SDIST_SHA256}\n"
        f"patch_set={patch_set_id()}\n"
    )


def parse_marker(text: str) -> Dict[str, str]:
    """key=value lines of a marker file (comments ignored)."""
    fields = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            fields[key.strip()] = value.strip()
    return fields


def find_package_dir() -> Optional[Path]:
    """Directory of the ``detectron2`` package that ``import detectron2`` would load, without importing it."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def has_compiled_extension(package_dir: Path) -> bool:
    """Whether the package holds a real compiled ``_C`` extension (upstream built from source)."""
    patterns = ("_C.*.so", "_C.so", "_C.*.pyd", "_C.pyd")
    return any(glob.glob(str(package_dir / pattern)) for pattern in patterns)


def imports_cleanly() -> bool:
    """Whether ``import detectron2, detectron2._C`` works in a fresh interpreter."""
    code = "import detectron2, detectron2._C"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def inspect_installed() -> InstalledState:
    """Classify the detectron2 visible to this interpreter.

    Reads files only (fast), except that a build with a compiled ``_C`` is test-imported in a subprocess.
    """
    package_dir = find_package_dir()
    if package_dir is None:
        return InstalledState("absent")
    marker = package_dir / MARKER_NAME
    if marker.is_file():
        fields = parse_marker(marker.read_text(encoding="utf-8"))
        current = fields.get("sdist_sha256") == SDIST_SHA256 and fields.get("patch_set") == patch_set_id()
        detail = f"patch set {fields.get('patch_set')}"
        return InstalledState("ours" if current else "stale", package_dir, detail)
    if has_compiled_extension(package_dir) and imports_cleanly():
        return InstalledState("foreign", package_dir, "has a compiled detectron2._C")
    return InstalledState("unknown", package_dir, "no compiled detectron2._C and no universal_seg marker")


# ----------------------------------------------------------------------------- download


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_cached_sdist(cache_dir: Path) -> Optional[Path]:
    """The sdist in the cache dir, under either spelling pip may use for its name."""
    for stem in (SDIST_NAME, SDIST_NAME.replace("-", "_")):
        name = f"{stem}-{SDIST_VERSION}.tar.gz"
        if (cache_dir / name).is_file():
            return cache_dir / name
    return None


def download_sdist(cache_dir: Path) -> None:
    """``pip download`` the sdist into cache_dir, hash-pinned: pip checks the archive's sha256 against
    SDIST_SHA256 (``--require-hashes``) before it unpacks it, so no code of a tampered sdist runs.

    pip then prepares the verified sdist's metadata, which runs its setup.py, which imports torch:
    --no-build-isolation lets that setup.py see the torch of this environment.
    """
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{SDIST_NAME}=={SDIST_VERSION} --hash=sha256:{SDIST_SHA256}\n")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--no-build-isolation",
            "--require-hashes",
            "-r",
            str(requirements),
            "-d",
            str(cache_dir),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        if "DO NOT MATCH THE HASHES" in output:
            raise InstallError(
                f"the downloaded {SDIST_NAME}=={SDIST_VERSION} sdist does not have the expected sha256 "
                f"{SDIST_SHA256}; it was neither unpacked nor run. Check the package index you use.\n" + tail(output)
            )
        raise InstallError(
            f"pip download of {SDIST_NAME}=={SDIST_VERSION} failed (exit {result.returncode}); "
            "torch and setuptools must already be installed in this environment.\n" + tail(output)
        )


def fetch_sdist(cache_dir: Path) -> Path:
    """Path of the verified sdist, downloading it unless it is cached."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    sdist = find_cached_sdist(cache_dir)
    if sdist is None:
        log(f"downloading {SDIST_NAME}=={SDIST_VERSION} into {cache_dir}")
        download_sdist(cache_dir)
        sdist = find_cached_sdist(cache_dir)
        if sdist is None:
            raise InstallError(f"pip download succeeded but left no {SDIST_NAME} sdist in {cache_dir}")
    else:
        log(f"using cached {sdist}")
    actual = sha256_of(sdist)
    if actual != SDIST_SHA256:
        raise InstallError(
            f"sha256 mismatch for {sdist}: expected {SDIST_SHA256}, got {actual}. "
            "Nothing was installed. Delete the file to download it again."
        )
    return sdist


# ----------------------------------------------------------------------------- preparing the tree


def extract_sdist(sdist: Path, dest: Path) -> Path:
    """Extract the sdist into dest and return its single top-level directory."""
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python < 3.11.4: the archive's checksum was verified above
            tar.extractall(dest)
    entries = [p for p in dest.iterdir() if p.is_dir()]
    if len(entries) != 1:
        raise InstallError(f"expected one top-level directory in {sdist.name}, found {len(entries)}")
    return entries[0]


def plan_substitutions(root: Path, table: Sequence[Substitution]) -> Dict[str, str]:
    """Apply the table in memory and return the new text of each touched file.

    Every ``old`` must occur exactly once in its file (as it reads after the earlier rows); otherwise
    InstallError lists each mismatch with file, text and count, and nothing has been written.
    """
    texts: Dict[str, str] = {}
    errors: List[str] = []
    for path, old, new in table:
        if path not in texts:
            file = root / path
            if not file.is_file():
                errors.append(f"{path}: file not found (wanted to replace {old!r})")
                continue
            with open(file, encoding="utf-8", newline="") as f:
                texts[path] = f.read()
        count = texts[path].count(old)
        if count != 1:
            errors.append(f"{path}: expected exactly 1 occurrence of {old!r}, found {count}")
            continue
        texts[path] = texts[path].replace(old, new, 1)
    if errors:
        details = "\n  ".join(errors)
        raise InstallError(f"substitutions do not match the sdist; nothing installed:\n  {details}")
    return texts


def apply_substitutions(root: Path, table: Sequence[Substitution] = SUBSTITUTIONS) -> int:
    """Check every substitution, then write the changed files; returns the number applied."""
    texts = plan_substitutions(root, table)
    for path, text in texts.items():
        with open(root / path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return len(table)


def relocate_projects(root: Path) -> None:
    """Move the bundled projects to their place under detectron2/projects/."""
    for source, target in PROJECTS.items():
        src, dst = root / source, root / target
        if not (src / "__init__.py").is_file():
            raise InstallError(f"project package {source} not found in the sdist")
        if dst.exists():
            raise InstallError(f"cannot move {source}: {target} already exists in the sdist")
        shutil.move(str(src), str(dst))


def write_build_files(root: Path) -> None:
    """Write _C.py, the marker, a minimal setup.py / pyproject.toml, and drop the sdist's own metadata."""
    (root / "detectron2" / "_C.py").write_text(C_MODULE_SOURCE, encoding="utf-8")
    (root / "detectron2" / MARKER_NAME).write_text(marker_text(), encoding="utf-8")
    setup_py = SETUP_PY_TEMPLATE.format(
        sdist=f"{SDIST_NAME}=={SDIST_VERSION}", version=DIST_VERSION, marker=MARKER_NAME
    )
    (root / "setup.py").write_text(setup_py, encoding="utf-8")
    (root / "pyproject.toml").write_text(PYPROJECT_TOML, encoding="utf-8")
    for name in SDIST_LEFTOVERS:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def prepare_tree(root: Path) -> None:
    """Turn the extracted sdist into the source tree of our pure-Python build."""
    count = apply_substitutions(root)
    log(f"applied {count} substitutions")
    relocate_projects(root)
    write_build_files(root)
    log("wrote detectron2/_C.py, relocated projects, wrote a minimal setup.py")


# ----------------------------------------------------------------------------- installing


def tail(text: str, lines: int = 40) -> str:
    """Last lines of a command's output, for error messages."""
    return "\n".join(text.strip().splitlines()[-lines:])


def run_pip(*args: str) -> None:
    """Run ``python -m pip ARGS``; InstallError with its output's tail on failure."""
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        output = tail(result.stdout + result.stderr)
        raise InstallError(f"pip {' '.join(args)} failed (exit {result.returncode}):\n{output}")


def remove_pb1_distribution() -> None:
    """Uninstall the pb1-detectron2 distribution if present: it would own the same detectron2 files."""
    try:
        importlib.metadata.distribution(SDIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        return
    log(f"uninstalling the {SDIST_NAME} distribution")
    run_pip("uninstall", "--yes", SDIST_NAME)


def pip_install(root: Path) -> None:
    """Build and install the prepared tree (non-editable, no dependencies, replacing any detectron2 dist)."""
    log(f"pip install detectron2=={DIST_VERSION}")
    run_pip("install", "--no-deps", "--no-build-isolation", "--force-reinstall", "--no-cache-dir", str(root))


def verify_install() -> Path:
    """Check in a fresh interpreter that the detectron2 now imported is ours and that its parts import."""
    code = (
        "import detectron2, detectron2._C, detectron2.projects.deeplab, detectron2.projects.point_rend\n"
        "print(detectron2.__file__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        output = tail(result.stdout + result.stderr)
        raise InstallError(f"the installed detectron2 does not import:\n{output}")
    package_dir = Path(result.stdout.strip().splitlines()[-1]).parent
    if not (package_dir / MARKER_NAME).is_file():
        raise InstallError(f"installed, but `import detectron2` loads {package_dir}, which shadows it; remove that one")
    return package_dir


@contextmanager
def prepared_tree(cache_dir: Path) -> Iterator[Path]:
    """Download (or reuse) and verify the sdist, extract and patch it in a temporary directory; yields its root."""
    sdist = fetch_sdist(cache_dir)
    with tempfile.TemporaryDirectory(prefix="detectron2-build-") as tmp:
        root = extract_sdist(sdist, Path(tmp))
        prepare_tree(root)
        yield root


def build_and_install(cache_dir: Path) -> Path:
    """Download (or reuse), patch and install; returns the installed package directory."""
    with prepared_tree(cache_dir) as root:
        remove_pb1_distribution()
        pip_install(root)
    return verify_install()


# ----------------------------------------------------------------------------- building a wheel


def wheel_filename() -> str:
    """File name of the wheel that --wheel-dir builds (pure Python, any platform)."""
    return f"detectron2-{DIST_VERSION}-py3-none-any.whl"


def wheel_marker(wheel: Path) -> Optional[Dict[str, str]]:
    """Fields of the marker file inside a detectron2 wheel, or None if it has none or is unreadable."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            text = archive.read(f"detectron2/{MARKER_NAME}").decode("utf-8")
    except (OSError, KeyError, zipfile.BadZipFile):
        return None
    return parse_marker(text)


def wheel_is_current(wheel: Path) -> bool:
    """Whether the wheel was built from the expected sdist with the current patch set."""
    fields = wheel_marker(wheel)
    return (
        fields is not None and fields.get("sdist_sha256") == SDIST_SHA256 and fields.get("patch_set") == patch_set_id()
    )


def build_wheel(cache_dir: Path, wheel_dir: Path, force: bool = False) -> Path:
    """Build the patched tree into ``wheel_dir/detectron2-<DIST_VERSION>-py3-none-any.whl``; returns its path.

    Nothing is built when a wheel of the current patch set is already there (unless ``force``). Any other
    detectron2 wheel in wheel_dir is removed, so that the directory holds exactly one version.
    """
    wheel_dir.mkdir(parents=True, exist_ok=True)
    target = wheel_dir / wheel_filename()
    if not force and target.is_file() and wheel_is_current(target):
        log(f"{target} is current (patch set {patch_set_id()}); nothing to build")
        return target
    for old in sorted(wheel_dir.glob("detectron2-*.whl")):
        log(f"removing {old}")
        old.unlink()
    with prepared_tree(cache_dir) as root, tempfile.TemporaryDirectory(prefix="detectron2-wheel-") as out:
        log(f"pip wheel detectron2=={DIST_VERSION}")
        run_pip("wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", str(root), "-w", out)
        built = sorted(Path(out).glob("detectron2-*.whl"))
        if [p.name for p in built] != [target.name]:
            raise InstallError(f"pip wheel made {[p.name for p in built]}, expected [{target.name!r}]")
        shutil.move(str(built[0]), str(target))
    if not wheel_is_current(target):
        raise InstallError(f"{target} lacks the marker of patch set {patch_set_id()}")
    return target


# ----------------------------------------------------------------------------- command line


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help=f"where the sdist is downloaded and reused (default: {DEFAULT_CACHE_DIR})",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="reinstall even if a detectron2 is installed (with --wheel-dir: rebuild the wheel)",
    )
    parser.add_argument(
        "--wheel-dir",
        type=Path,
        default=None,
        help="build the patched detectron2 into a pure-Python wheel in this directory "
        "instead of installing it (the running environment is not changed)",
    )
    return parser.parse_args(argv)


def skip_reason(state: InstalledState) -> Optional[str]:
    """The line to print when nothing needs doing, or None when installing."""
    if state.kind == "ours":
        return f"detectron2 {DIST_VERSION} already installed at {state.location} ({state.detail})"
    if state.kind == "foreign":
        return (
            f"a working detectron2 not built by this script is at {state.location} ({state.detail}); leaving it alone"
        )
    return None


def describe_install_reason(state: InstalledState) -> None:
    """Say why we (re)install over what is there."""
    if state.kind == "stale":
        log(f"updating our detectron2 at {state.location} (patch set {patch_set_id()} replaces {state.detail})")
    elif state.kind == "unknown":
        log(f"replacing the detectron2 at {state.location} ({state.detail})")
    elif state.kind in ("ours", "foreign"):
        log(f"--force: reinstalling over the detectron2 at {state.location}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    if args.wheel_dir is not None:
        try:
            wheel = build_wheel(args.cache_dir.resolve(), args.wheel_dir.resolve(), force=args.force)
        except InstallError as error:
            print(f"[install_detectron2] ERROR: {error}", file=sys.stderr, flush=True)
            return 1
        log(f"wheel: {wheel}")
        return 0
    state = inspect_installed()
    message = None if args.force else skip_reason(state)
    if message:
        log(message)
        return 0
    describe_install_reason(state)
    try:
        package_dir = build_and_install(args.cache_dir.resolve())
    except InstallError as error:
        print(f"[install_detectron2] ERROR: {error}", file=sys.stderr, flush=True)
        return 1
    log(f"installed detectron2 {DIST_VERSION} at {package_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
