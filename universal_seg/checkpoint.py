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
            f"lists, numbers and strings; re-save it as a plain state dict if you trust its source."
        )


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
                        f"(torch.load(weights_only=True) said: {str(err).splitlines()[0]})."
                    ) from err
            if filename.endswith(".pyth"):
                loaded = {"model": loaded["model_state"], "__author__": "pycls", "matching_heuristics": True}
            return loaded if "model" in loaded else {"model": loaded}
        raise ValueError(f"unsupported checkpoint format {filename!r}: use a .pkl or .pth file.")


# ----------------------------------------------------------------------------------- checkpoint converters
def unwrap_state_dict(ckpt: dict) -> dict:
    """The state dict inside a training checkpoint ({"state_dict": ...} of mmseg, {"model": ...} of detectron2 /
    DeiT), or ``ckpt`` itself when it is already one."""
    for key in ("state_dict", "model"):
        if key in ckpt and isinstance(ckpt[key], dict):
            return ckpt[key]
    return ckpt


def load_weights_file(path: str, trust_pickle: bool = False) -> dict:
    """Tensors of a ``.pth`` / ``.pt`` / ``.bin`` (torch.load with weights_only=True unless ``trust_pickle``) or
    ``.safetensors`` file, for the converters in tools/."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{path} holds Python objects besides tensors (e.g. a training config), so it was not unpickled; "
            f"pass --trust-pickle if you trust its source."
        ) from err


def save_detectron2_pickle(state_dict: dict, path: str, author: str) -> dict:
    """Writes converted weights in detectron2's model-zoo format ({"model": name -> numpy array, "__author__",
    "matching_heuristics": True}) and returns that dict."""
    obj = {
        "model": {k: torch.as_tensor(v).numpy() for k, v in state_dict.items()},
        "__author__": author,
        "matching_heuristics": True,
    }
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return obj


def converter_main(description: str, convert_file, input_help: str, argv=None) -> None:
    """Command line shared by tools/convert_*.py: ``INPUT OUTPUT [--trust-pickle]``."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("input", help=input_help)
    parser.add_argument("output", help="detectron2 weights (.pkl)")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a .pth that holds Python objects besides tensors (runs code from the file)",
    )
    args = parser.parse_args(argv)
    obj = convert_file(args.input, args.output, trust_pickle=args.trust_pickle)
    print(f"wrote {len(obj['model'])} tensors to {args.output}")
