"""Checkpoint loading that never executes code from the file, and never leaves tensors silently random.

``.pkl`` (detectron2 / Mask2Former model zoo, converted ImageNet weights) is read with a restricted unpickler
that only reconstructs numpy arrays, dicts, lists, scalars and strings; ``.pth`` / ``.pt`` with
``torch.load(weights_only=True)``. Anything else in the file is refused with a clear error.

Loading is strict (:class:`UniversalSegCheckpointer`): a checkpoint that matches no tensor of the model, a tensor
whose shape does not fit, a model tensor the checkpoint lacks or a checkpoint tensor the model lacks is a
:class:`CheckpointMismatchError` naming the tensors, with two documented exceptions when ``MODEL.WEIGHTS``
initialises training (``fine_tune=True``; never for ``--eval-only``, ``--resume``, the demo or export):

- a backbone-only checkpoint (ImageNet weights: none of its tensors lies outside ``backbone.``) initialises the
  backbone; every other tensor keeps its initialisation, and the log counts them;
- the class head (:meth:`SegmentorBase.class_head_keys`) of a checkpoint trained with another class count is
  re-initialised when only its class dimension differs, and the log names each tensor, both shapes and why;
- tensors matching a regular expression of ``MODEL.REINIT_KEYS`` are re-initialised (never loaded), logged.
"""

import logging
import pickle
import re

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.utils.file_io import PathManager
from fvcore.common.checkpoint import _IncompatibleKeys

logger = logging.getLogger(__name__)

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


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model (see the module docstring for what is allowed)."""


def _shape(t) -> list[int]:
    return list(t.shape)


def _listing(keys, limit: int = 8) -> str:
    keys = list(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


class UniversalSegCheckpointer(DetectionCheckpointer):
    """detectron2's DetectionCheckpointer with safe loading of ``.pkl`` and ``.pth`` files and strict matching.

    Args:
        model, save_dir, checkpointables: as detectron2's.
        fine_tune: the file loaded by :meth:`resume_or_load` without a checkpoint to resume from (``MODEL.WEIGHTS``)
            initialises training: the exceptions of the module docstring apply. False (evaluation, demo, export,
            resuming): every model tensor must come from the checkpoint with its shape, and nothing else may be in it.
        reinit_keys: regular expressions (``re.fullmatch`` on state-dict keys, ``MODEL.REINIT_KEYS``) of tensors
            that are re-initialised instead of loaded when fine-tuning; each must match a tensor of the model.
    """

    def __init__(self, model, save_dir="", *, fine_tune: bool = False, reinit_keys=(), **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.fine_tune = fine_tune
        self.reinit_keys = list(reinit_keys)
        self._initialising = False
        if self.reinit_keys and not fine_tune:
            raise CheckpointMismatchError(
                f"MODEL.REINIT_KEYS {self.reinit_keys} re-initialises tensors, which only makes sense when "
                "MODEL.WEIGHTS initialises training; clear it for evaluation, the demo or export."
            )

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict:
        """As detectron2's; the exceptions of ``fine_tune`` apply only when ``path`` is loaded (not resuming)."""
        self._initialising = self.fine_tune and not (resume and self.has_checkpoint())
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._initialising = False

    def load(self, path: str, checkpointables=None) -> dict:
        """As detectron2's; a CheckpointMismatchError names ``path``."""
        try:
            return super().load(path, checkpointables)
        except CheckpointMismatchError as err:
            raise CheckpointMismatchError(f"{path}: {err}") from None

    def _load_model(self, checkpoint: dict) -> _IncompatibleKeys:
        """Checks the whole checkpoint against the model first (so a refused one leaves the model untouched), then
        loads; returns empty incompatible-key lists (this method logged what it re-initialised or left out)."""
        state = checkpoint.pop("model")
        self._convert_ndarray_to_tensor(state)
        model_state = self.model.state_dict()
        if checkpoint.get("matching_heuristics", False):
            state = align_and_update_state_dicts(
                model_state, state, c2_conversion=checkpoint.get("__author__", None) == "Caffe2"
            )
        if state and all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel
            state = {k[len("module.") :]: v for k, v in state.items()}
        plan = self._plan(state, model_state)
        self.model.load_state_dict({k: state[k] for k in plan["load"]}, strict=False)
        return _IncompatibleKeys(missing_keys=[], unexpected_keys=[], incorrect_shapes=[])

    def _plan(self, state: dict, model_state: dict) -> dict:
        """Which checkpoint tensors to load; raises CheckpointMismatchError for everything not allowed."""
        fine_tune = self._initialising
        derived = set(getattr(self.model, "config_buffer_keys", list)())
        class_head = set(getattr(self.model, "class_head_keys", list)())
        model_keys = [k for k in model_state if k not in derived]
        ckpt_keys = [k for k in state if k not in derived]
        matched = [k for k in model_keys if k in state]
        if not matched:
            raise CheckpointMismatchError(
                f"the checkpoint matches none of the model's {len(model_keys)} tensors (it holds "
                f"{len(ckpt_keys)}, e.g. {_listing(ckpt_keys, 3)}): it is not a checkpoint of this model; check "
                "MODEL.WEIGHTS and the config it was trained with."
            )
        reinit = set()
        for pattern in self.reinit_keys:
            hits = {k for k in model_keys if re.fullmatch(pattern, k)}
            if not hits:
                raise CheckpointMismatchError(
                    f"MODEL.REINIT_KEYS pattern {pattern!r} matches no tensor of the model (e.g. "
                    f"{_listing(model_keys, 3)}); fix or remove it."
                )
            reinit |= hits
        if reinit and fine_tune:
            logger.warning(
                "Re-initialised %d tensors listed by MODEL.REINIT_KEYS (not loaded from the checkpoint): %s",
                len(reinit),
                _listing(sorted(reinit), 50),
            )
        mismatched = [k for k in matched if k not in reinit and _shape(state[k]) != _shape(model_state[k])]
        head_reinit = [
            k
            for k in mismatched
            if fine_tune and k in class_head and _shape(state[k])[1:] == _shape(model_state[k])[1:]
        ]
        if head_reinit:
            logger.warning(
                "Re-initialised the class head (the checkpoint was trained with another class count): %s.",
                "; ".join(
                    f"{k}: checkpoint {_shape(state[k])}, model {_shape(model_state[k])}" for k in sorted(head_reinit)
                ),
            )
        wrong = [k for k in mismatched if k not in head_reinit]
        if wrong:
            shapes = "; ".join(f"{k}: checkpoint {_shape(state[k])}, model {_shape(model_state[k])}" for k in wrong[:8])
            hint = (
                "list them in MODEL.REINIT_KEYS to re-initialise them"
                if fine_tune
                else "use the config the checkpoint was trained with"
            )
            raise CheckpointMismatchError(
                f"{len(wrong)} checkpoint tensors do not fit the model ({shapes}{' ...' if len(wrong) > 8 else ''}); "
                f"{hint}."
            )
        missing = [k for k in model_keys if k not in state and k not in reinit]
        unexpected = [k for k in ckpt_keys if k not in model_state]
        if fine_tune and not any(not k.startswith("backbone.") for k in matched):
            logger.info(
                "Backbone-only checkpoint: %d backbone tensors loaded; %d model tensors keep their initialisation "
                "(%d of them outside the backbone).",
                len(matched),
                len(missing),
                sum(not k.startswith("backbone.") for k in missing),
            )
            if any(k.startswith("backbone.") for k in missing):
                logger.warning(
                    "Backbone tensors not in the checkpoint: %s",
                    _listing([k for k in missing if k.startswith("backbone.")]),
                )
            missing = []
        if unexpected and fine_tune:
            logger.warning(
                "%d checkpoint tensors are not in the model (not used): %s", len(unexpected), _listing(unexpected, 20)
            )
            unexpected = []
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"{len(missing)} model tensors are not in the checkpoint ({_listing(missing)})")
            if unexpected:
                parts.append(f"{len(unexpected)} checkpoint tensors are not in the model ({_listing(unexpected)})")
            hint = (
                "list them in MODEL.REINIT_KEYS to initialise them from scratch, or use the config the checkpoint "
                "was trained with"
                if fine_tune
                else "use the config the checkpoint was trained with"
            )
            raise CheckpointMismatchError(f"{'; '.join(parts)}: {hint}.")
        return {"load": [k for k in matched if k not in reinit and k not in head_reinit]}

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
