"""Loading of the compiled extension ``universal_seg._C``, with one clear warning when it is unavailable."""

import functools
import warnings
from types import ModuleType

from .cuda_arch import kernel_image_for, parse_targets, unsupported_device_message

BUILD_HINT = (
    "build it from the repository root with `bash scripts/setup.sh` "
    "(or `pip install --no-build-isolation -e .` in an environment that has torch)"
)


@functools.lru_cache(maxsize=None)
def load_extension() -> ModuleType | None:
    """The compiled extension module, or None (after warning once) if it cannot be imported."""
    try:
        from universal_seg import _C
    except ImportError as err:
        warnings.warn(
            f"universal_seg._C could not be loaded ({err}); MSDeformAttn falls back to its slow pure-PyTorch "
            f"reference. To get the compiled CPU/CUDA kernels, {BUILD_HINT}.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return _C


def cuda_kernels_compiled() -> bool:
    """Whether the extension exists and contains the CUDA kernels."""
    ext = load_extension()
    return ext is not None and ext.cuda_version() > 0


@functools.lru_cache(maxsize=None)
def warn_no_cuda_kernels() -> None:
    """Warns once that CUDA tensors run on the reference because the extension has no CUDA kernels."""
    warnings.warn(
        "universal_seg._C was built without CUDA kernels (no nvcc / CUDA_HOME at build time), so MSDeformAttn "
        f"runs its slow pure-PyTorch reference on CUDA tensors; to fix it, {BUILD_HINT} on a machine with nvcc.",
        RuntimeWarning,
        stacklevel=4,
    )


def check_cuda_device(device) -> str:
    """How the compiled CUDA kernels run on ``device``: "sm_XY" (machine code) or "compute_XY" (PTX compiled by the
    driver). Raises RuntimeError naming TORCH_CUDA_ARCH_LIST and the rebuild command when the build has no image
    for the device's architecture (instead of CUDA's "no kernel image is available" at the first launch)."""
    import torch

    index = torch.device(device).index
    return _check_cuda_device(torch.cuda.current_device() if index is None else index)


@functools.lru_cache(maxsize=None)
def _check_cuda_device(index: int) -> str:
    import torch

    built = load_extension().cuda_targets()
    capability = torch.cuda.get_device_capability(index)
    image = kernel_image_for(capability, parse_targets(built))
    if image is None:
        raise RuntimeError(unsupported_device_message(torch.cuda.get_device_name(index), capability, built))
    return image
