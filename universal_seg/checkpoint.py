"""Checkpoint loading that never executes code from the file.

``.pkl`` (detectron2 / Mask2Former model zoo, converted ImageNet weights) is read with a restricted unpickler
that only reconstructs numpy arrays, dicts, lists, scalars and strings; ``.pth`` / ``.pt`` with
``torch.load(weights_only=True)``. Anything else in the file is refused with a clear error.
"""
import pickle

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

# (module, name) pairs a weights pickle may reference: numpy array / scalar reconstruction and OrderedDict.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint references a Python object that weights never need (possible code execution)."""


class _WeightsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"refusing to load {module}.{name} from the checkpoint: a weights file holds only arrays, dicts, "
            f"lists, numbers and strings; re-save it as a plain state dict if you trust its source.")


def load_pickle_safely(path: str) -> dict:
    """Reads a ``.pkl`` weights file without executing code from it (see module docstring)."""
    with PathManager.open(path, "rb") as f:
        data = _WeightsUnpickler(f, encoding="latin1").load()
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not contain a dict of weights (found {type(data).__name__}).")
    return data


class UniversalSegCheckpointer(DetectionCheckpointer):
    """detectron2's DetectionCheckpointer with safe loading of ``.pkl`` and ``.pth`` files."""

    def _load_file(self, filename: str) -> dict:
        if filename.endswith(".pkl"):
            data = load_pickle_safely(filename)
            if "model" in data and "__author__" in data:  # detectron2 model-zoo format
                self.logger.info(f"Reading a file from '{data['__author__']}'")
                return data
            data = data.get("blobs", data)  # Caffe2 / Detectron1 format
            model = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": model, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith((".pth", ".pt", ".pyth")):
            with PathManager.open(filename, "rb") as f:
                try:
                    loaded = torch.load(f, map_location="cpu", weights_only=True)
                except pickle.UnpicklingError as err:
                    raise UnsafeCheckpointError(
                        f"refusing to load {filename}: it contains objects beyond tensors and containers "
                        f"(torch.load(weights_only=True) said: {str(err).splitlines()[0]}).") from err
            if filename.endswith(".pyth"):
                loaded = {"model": loaded["model_state"], "__author__": "pycls", "matching_heuristics": True}
            return loaded if "model" in loaded else {"model": loaded}
        raise ValueError(f"unsupported checkpoint format {filename!r}: use a .pkl or .pth file.")
