"""Build and install universal_seg with its compiled op (universal_seg._C).

The extension always has the C++ CPU kernels (OpenMP). Its CUDA kernels are compiled too whenever a CUDA
toolkit is found (nvcc on PATH or CUDA_HOME), even on a machine without a GPU. Environment variables:
  UNIVERSAL_SEG_CUDA=0      build the CPU kernels only, even if nvcc is present
  UNIVERSAL_SEG_CUDA=1      require the CUDA kernels (fail if no toolkit is found)
  TORCH_CUDA_ARCH_LIST      GPU architectures; default: those of the GPUs visible at build time, else
                            7.0;7.5;8.0;8.6;8.9;9.0+PTX less what the toolkit cannot build (CUDA 13: no 7.0)
  CUDA_HOME                 the CUDA toolkit root, if it cannot be found from nvcc
  MAX_JOBS                  parallel compile jobs (ninja)

Install for development (builds against the torch already installed, so no build isolation):
  pip install --no-build-isolation -e .
"""

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "universal_seg" / "ops" / "csrc"


def _cuda_arch_module():
    """universal_seg/ops/cuda_arch.py, loaded by path (the package itself is not importable before the build)."""
    spec = importlib.util.spec_from_file_location("_universal_seg_cuda_arch", ROOT / "universal_seg/ops/cuda_arch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _toolkit_root(nvcc: str) -> Path | None:
    """The toolkit directory of an nvcc binary, following symlinks and one-line wrapper scripts.

    Some machines put a shell wrapper (`exec /usr/local/cuda-13.0/bin/nvcc "$@"`) on PATH; torch would then
    guess the toolkit from the wrapper's own directory and fail to link -lcudart.
    """
    path = Path(nvcc).resolve()
    for _ in range(3):
        root = path.parent.parent
        if (root / "include" / "cuda.h").is_file():
            return root
        try:
            text = path.read_text(errors="ignore") if path.stat().st_size < 4096 else ""
        except OSError:
            return None
        target = next((tok.strip("'\"") for tok in text.split() if tok.strip("'\"").endswith("/nvcc")), None)
        if target is None:
            return None
        path = Path(target).resolve()
    return None


def find_cuda_home() -> Path | None:
    """The CUDA toolkit to build with: $CUDA_HOME, else the one behind nvcc on PATH, else /usr/local/cuda."""
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]))
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = _toolkit_root(nvcc)
        if root is not None:
            candidates.append(root)
    candidates.append(Path("/usr/local/cuda"))
    for root in candidates:
        if (root / "bin" / "nvcc").is_file() and glob.glob(str(root / "lib*" / "libcudart.so*")):
            return root.resolve()
    return None


def nvcc_targets(cuda_home: Path) -> set[tuple[int, int]] | None:
    """(major, minor) of every real architecture the toolkit's nvcc can build, or None if it cannot say."""
    try:
        text = subprocess.run(
            [str(cuda_home / "bin" / "nvcc"), "--list-gpu-code"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = {(int(m[1][:-1]), int(m[1][-1])) for m in re.finditer(r"\bsm_(\d+)\b", text)}
    return found or None


def visible_gpu_capabilities() -> list[tuple[int, int]]:
    """Compute capabilities of the GPUs torch sees now (empty on a machine without one)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]


def extension_modules():
    mode = os.environ.get("UNIVERSAL_SEG_CUDA", "auto").lower()
    cuda_home = None if mode in ("0", "false", "no") else find_cuda_home()
    if mode in ("1", "true", "yes") and cuda_home is None:
        sys.exit("UNIVERSAL_SEG_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to the toolkit root.")
    if cuda_home is not None:
        # torch.utils.cpp_extension reads CUDA_HOME when it is imported, so set it first.
        os.environ["CUDA_HOME"] = str(cuda_home)
        arch = _cuda_arch_module()
        try:
            arch_list = arch.select_arch_list(
                os.environ.get("TORCH_CUDA_ARCH_LIST"), visible_gpu_capabilities(), nvcc_targets(cuda_home)
            )
            targets = arch.format_targets(arch.parse_arch_list(arch_list))
        except ValueError as err:
            sys.exit(f"universal_seg: {err}")
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = [str(p.relative_to(ROOT)) for p in sorted(CSRC.glob("*.cpp")) + sorted(CSRC.glob("cpu/*.cpp"))]
    cxx_flags = ["-O3", "-fopenmp"]  # at::parallel_for is OpenMP pragmas inlined into our code
    if cuda_home is None:
        print(
            "universal_seg: building the CPU kernels only "
            f"({'disabled by UNIVERSAL_SEG_CUDA' if mode in ('0', 'false', 'no') else 'no CUDA toolkit found'})"
        )
        return [
            CppExtension(
                "universal_seg._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"]
            )
        ]
    print(
        f"universal_seg: building CPU + CUDA kernels with the toolkit at {cuda_home} "
        f"for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}"
    )
    sources += [str(p.relative_to(ROOT)) for p in sorted(CSRC.glob("cuda/*.cu"))]
    return [
        CUDAExtension(
            "universal_seg._C",
            sources,
            # the targets as one macro token (sm_75;sm_86;compute_90 with ';' -> '__'), reported by _C.cuda_targets()
            define_macros=[
                ("UNIVERSAL_SEG_WITH_CUDA", None),
                ("UNIVERSAL_SEG_CUDA_TARGETS", targets.replace(";", "__")),
            ],
            # --threads: nvcc compiles the architectures in parallel (the build time is mostly this one file)
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo", "--threads=0"]},
            extra_link_args=["-fopenmp"],
        )
    ]


def main():
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit(
            "universal_seg compiles against the installed torch: install torch first (bash scripts/setup.sh "
            "does), then `pip install --no-build-isolation -e .`; an isolated build environment has no torch."
        )
    ext_modules = extension_modules()  # first: it sets CUDA_HOME before torch.utils.cpp_extension is imported
    from torch.utils.cpp_extension import BuildExtension

    setup(
        name="universal_seg",
        version="0.1.0",
        description="Universal image segmentation (Mask2Former, StructToken, SegFormer, SETR, CGRSeg) on detectron2",
        long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
        long_description_content_type="text/markdown",
        license="Apache-2.0",
        python_requires=">=3.10",
        packages=find_packages(include=["universal_seg", "universal_seg.*"]),
        ext_modules=ext_modules,
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
        zip_safe=False,
    )


if __name__ == "__main__":
    main()
