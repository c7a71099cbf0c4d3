"""Which GPU architectures the CUDA kernels are built for, and whether a built extension can run on a given GPU.

Pure Python with no torch import: ``setup.py`` loads this file by path at build time, and the op calls
:func:`check_device` at run time. Architectures are written as in ``TORCH_CUDA_ARCH_LIST`` ("7.5;8.6;9.0+PTX").

Compatibility rules of CUDA binaries (the CUDA C++ programming guide, "binary compatibility"):
- machine code (SASS) built for sm_XY runs on a GPU of capability X.Z for Z >= Y (same major version);
  arch-specific targets (sm_90a) run on exactly that capability;
- PTX built for compute_XY is compiled by the driver at load time for any GPU of capability >= X.Y.
"""

from __future__ import annotations

import re

# Default targets when no GPU is visible at build time: V100 (7.0), T4 / RTX 20xx (7.5), A100 / A30 (8.0),
# RTX 30xx / A10 / A40 (8.6), L4 / L40 / RTX 40xx (8.9), H100 / H200 (9.0), and 9.0 PTX for newer GPUs
# (Blackwell), which the driver compiles at first use. Toolkits drop old targets: CUDA 13 cannot build 7.0.
DEFAULT_ARCHS = ("7.0", "7.5", "8.0", "8.6", "8.9", "9.0")

# Named architectures that torch.utils.cpp_extension accepts in TORCH_CUDA_ARCH_LIST.
NAMED_ARCHS = {
    "Volta": "7.0+PTX",
    "Turing": "7.5+PTX",
    "Ampere": "8.0;8.6+PTX",
    "Ada": "8.9+PTX",
    "Hopper": "9.0+PTX",
}

_ARCH = re.compile(r"^(\d+)\.(\d+)([af]?)(\+PTX)?$")

REBUILD_COMMAND = 'TORCH_CUDA_ARCH_LIST="{cap}" bash scripts/setup.sh'


def parse_arch_list(arch_list: str) -> list[tuple[str, int, int, str]]:
    """Targets of a TORCH_CUDA_ARCH_LIST string as (kind, major, minor, suffix), kind "sm" or "compute".

    "8.6" gives sm 8.6; "9.0+PTX" gives sm 9.0 and compute 9.0; "9.0a" gives sm 9.0 with suffix "a".
    Separators: ';', ',' or white space. Raises ValueError naming the entry it cannot read.
    """
    targets = []
    for entry in re.split(r"[;,\s]+", arch_list.strip()):
        if not entry:
            continue
        if entry in NAMED_ARCHS:
            targets += parse_arch_list(NAMED_ARCHS[entry])
            continue
        match = _ARCH.match(entry)
        if match is None:
            raise ValueError(
                f"TORCH_CUDA_ARCH_LIST entry {entry!r} is not an architecture like 8.6, 9.0+PTX or 9.0a; "
                f'fix the variable (e.g. TORCH_CUDA_ARCH_LIST="8.6;9.0+PTX") and rebuild.'
            )
        major, minor, suffix, ptx = int(match[1]), int(match[2]), match[3], match[4]
        targets.append(("sm", major, minor, suffix))
        if ptx:
            targets.append(("compute", major, minor, suffix))
    return targets


def format_targets(targets: list[tuple[str, int, int, str]]) -> str:
    """'sm_75;sm_86;compute_90': the compiled targets as nvcc names them (no characters a macro cannot hold)."""
    return ";".join(f"{kind}_{major}{minor}{suffix}" for kind, major, minor, suffix in targets)


def parse_targets(text: str) -> list[tuple[str, int, int, str]]:
    """Inverse of :func:`format_targets` (one-digit minor versions, as every CUDA architecture has)."""
    targets = []
    for name in filter(None, text.split(";")):
        kind, _, digits = name.partition("_")
        suffix = digits[-1] if digits[-1].isalpha() else ""
        digits = digits.rstrip("af")
        targets.append((kind, int(digits[:-1]), int(digits[-1]), suffix))
    return targets


def select_arch_list(
    env_value: str | None, visible_capabilities: list[tuple[int, int]], supported: set[tuple[int, int]] | None
) -> str:
    """The TORCH_CUDA_ARCH_LIST to build with.

    Args:
        env_value: the user's TORCH_CUDA_ARCH_LIST, if set: used as is.
        visible_capabilities: (major, minor) of the GPUs visible at build time: their architectures, the
            newest with PTX (so that a GPU of a newer architecture added later still runs).
        supported: the (major, minor) targets the toolkit's nvcc can build (``nvcc --list-gpu-arch``), or None
            when unknown. Targets it cannot build are dropped; a visible GPU newer than every supported target
            gets the newest supported one with PTX.
    Returns:
        The list, e.g. "7.5;8.0;8.6;8.9;9.0+PTX".
    Raises:
        ValueError: a visible GPU is older than every target the toolkit can build (e.g. a V100 with CUDA 13).
    """
    if env_value and env_value.strip():
        return env_value.strip()
    wanted = sorted(set(visible_capabilities)) or [tuple(map(int, a.split("."))) for a in DEFAULT_ARCHS]
    if supported:
        oldest, newest = min(supported), max(supported)
        too_old = [a for a in visible_capabilities if a < oldest]
        if too_old:
            raise ValueError(
                f"the visible GPU of compute capability {too_old[0][0]}.{too_old[0][1]} is older than every target "
                f"this CUDA toolkit builds (oldest {oldest[0]}.{oldest[1]}): build with a toolkit that supports it "
                f"(CUDA 12.x for 7.0) by setting CUDA_HOME."
            )
        kept = [a for a in wanted if a in supported]
        if any(a > newest for a in wanted) and newest not in kept:
            kept.append(newest)
        wanted = kept or [newest]
    names = [f"{major}.{minor}" for major, minor in wanted]
    names[-1] += "+PTX"
    return ";".join(names)


def kernel_image_for(capability: tuple[int, int], targets: list[tuple[str, int, int, str]]) -> str | None:
    """How a GPU of ``capability`` runs the built kernels: "sm_XY" (machine code), "compute_XY" (PTX compiled by
    the driver at first use) or None (no image can run there)."""
    major, minor = capability
    sass = [
        (ma, mi, sfx)
        for kind, ma, mi, sfx in targets
        if kind == "sm" and ma == major and (mi == minor if sfx else mi <= minor)
    ]
    if sass:
        ma, mi, sfx = max(sass)
        return f"sm_{ma}{mi}{sfx}"
    ptx = [(ma, mi) for kind, ma, mi, sfx in targets if kind == "compute" and not sfx and (ma, mi) <= capability]
    if ptx:
        ma, mi = max(ptx)
        return f"compute_{ma}{mi}"
    return None


def unsupported_device_message(device_name: str, capability: tuple[int, int], built: str) -> str:
    """The one-sentence error for a GPU the build has no kernel image for."""
    cap = f"{capability[0]}.{capability[1]}"
    return (
        f"universal_seg._C was built for CUDA targets {built.replace(';', ', ') or '(none)'}, none of which runs "
        f"on {device_name} (compute capability {cap}): rebuild the op for it with "
        f"`{REBUILD_COMMAND.format(cap=cap)}`."
    )
