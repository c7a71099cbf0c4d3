"""Checkpoints: loading that never executes code from the file, and saving that never loses the last good one.

Loading: ``.pkl`` (detectron2 / Mask2Former model zoo, converted ImageNet weights) is read with a restricted
unpickler that only reconstructs numpy arrays, dicts, lists, scalars and strings (pickle protocols 0-5);
``.pth`` / ``.pt`` with ``torch.load(weights_only=True)``. Anything else in the file is refused with a clear error.

Saving (training): every checkpoint and ``last_checkpoint`` is written to a temporary file, fsync'ed and renamed
(:mod:`universal_seg.atomic`), so a kill at any moment leaves the previous files intact; weights that are not
finite (a diverged run) are never saved. Resuming falls back to the newest intact checkpoint, with a warning naming
each broken one.

Loading is strict: a checkpoint that matches no tensor of the model, a tensor whose shape does not fit, a model
tensor the checkpoint lacks or a checkpoint tensor the model lacks is a :class:`CheckpointMismatchError` naming the
tensors, with documented exceptions when ``MODEL.WEIGHTS`` initialises training (``fine_tune=True``; never for
``--eval-only``, ``--resume``, the demo or export):

- a backbone-only checkpoint (ImageNet weights: none of its tensors lies outside ``backbone.``) initialises the
  backbone; every other tensor keeps its initialisation, and the log counts them;
- the class head (:meth:`SegmentorBase.class_head_keys`) of a checkpoint trained with another class count is
  re-initialised when only its class dimension differs, and the log names each tensor, both shapes and why;
- tensors matching a regular expression of ``MODEL.REINIT_KEYS`` are re-initialised (never loaded), logged.
"""

import contextlib
import logging
import os
import pickle
import re

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from fvcore.common.checkpoint import _IncompatibleKeys

from .atomic import TEMP_PREFIX, atomic_open, atomic_write_text

logger = logging.getLogger(__name__)


def _latin1_encode(text, encoding="latin1"):
    """What protocol 0-2 pickles call (as ``_codecs.encode``) to rebuild ``bytes``; only latin-1 is allowed, so no
    other codec can be reached from a file."""
    if encoding.replace("-", "").replace("_", "").lower() != "latin1":
        raise UnsafeCheckpointError(f"refusing the codec {encoding!r} in a checkpoint: weights pickles use latin1.")
    return text.encode("latin1")


# (module, name) pairs a weights pickle may reference: numpy array / scalar reconstruction (protocol 5's
# out-of-band buffers through _frombuffer), OrderedDict, and bytes of protocols 0-2 (through _latin1_encode).
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint references a Python object that weights never need (possible code execution)."""


class _WeightsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
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
        raise CheckpointUnreadableError(
            f"{path} holds a {type(data).__name__}, not a dict of weights; give a checkpoint saved from a model."
        )
    return data


_PERIODIC = re.compile(r"^model_(\d+)\.pth$")


def non_finite_parameters(state_dict: dict) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` holding NaN or infinity."""
    return [
        k for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()
    ]


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model (see the module docstring for what is allowed)."""


def _shape(t) -> list[int]:
    return list(t.shape)


def _listing(keys, limit: int = 8) -> str:
    keys = list(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


class CheckpointUnreadableError(RuntimeError):
    """A checkpoint file is truncated or corrupt (e.g. a run killed while it was written by an older version)."""


class CheckpointNotFoundError(CheckpointUnreadableError):
    """MODEL.WEIGHTS (or another checkpoint path) names a local file that does not exist."""


#: what loading a checkpoint raises for a bad file: tools turn these into a one-line exit
CHECKPOINT_ERRORS = (CheckpointMismatchError, CheckpointUnreadableError, UnsafeCheckpointError)
_TORCH_SUFFIXES = (".pth", ".pt", ".pyth")  # files torch.save wrote: a zip archive, or a protocol 2 pickle
CHECKPOINT_SUFFIXES = (".pth", ".pkl", ".pt", ".pyth")


class UniversalSegCheckpointer(DetectionCheckpointer):
    """detectron2's DetectionCheckpointer with safe loading of ``.pkl`` and ``.pth`` files, strict matching, atomic
    saves that refuse non-finite weights, and a resume that falls back to the newest intact checkpoint (module
    docstring).

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

    def load(self, path: str, checkpointables=None) -> dict:
        """As detectron2's; a CheckpointMismatchError names ``path``, and a local ``path`` that does not exist
        raises CheckpointNotFoundError (URLs and detectron2:// names are fetched by detectron2)."""
        if path and "://" not in path and not os.path.isfile(path):  # a local path (URLs: fetched by detectron2)
            if os.path.isdir(path):
                raise CheckpointNotFoundError(
                    f"checkpoint {path!r} (MODEL.WEIGHTS) is a directory; give the checkpoint file in it (e.g. "
                    "model_final.pth)."
                )
            raise CheckpointNotFoundError(f"checkpoint {path!r} (MODEL.WEIGHTS) does not exist; check the path.")
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
            holds = f"it holds {len(ckpt_keys)}, e.g. {_listing(ckpt_keys, 3)}" if ckpt_keys else "it holds none"
            raise CheckpointMismatchError(
                f"the checkpoint matches none of the model's {len(model_keys)} tensors ({holds}): it is not a "
                "checkpoint of this model; check MODEL.WEIGHTS and the config it was trained with."
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

    def save(self, name: str, **kwargs) -> None:
        """Writes ``<save_dir>/<name>.pth`` (model + checkpointables + ``kwargs``) atomically, then points
        ``last_checkpoint`` at it (also atomically). Raises FloatingPointError, writing nothing, when a weight is NaN
        or infinite: the last good checkpoint stays the one to resume from."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        bad = non_finite_parameters(data["model"])
        if bad:
            last = self.get_checkpoint_file() if self.has_checkpoint() else "(none)"
            raise FloatingPointError(
                f"not saving checkpoint {name!r}: {len(bad)} weight tensor(s) are NaN or infinite (e.g. {bad[0]}), "
                f"the run diverged; the last good checkpoint is {last}; lower SOLVER.BASE_LR or enable "
                f"SOLVER.CLIP_GRADIENTS and resume from it."
            )
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        with atomic_open(save_file, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Points ``<save_dir>/last_checkpoint`` at ``last_filename_basename``, atomically."""
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    def resume_candidates(self) -> list[str]:
        """The checkpoints a resume may start from, newest first: the one ``last_checkpoint`` names, then every
        other ``*.pth`` of save_dir by modification time (temporary files of an interrupted save excluded)."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        files = [
            os.path.join(self.save_dir, f)
            for f in os.listdir(self.save_dir)
            if f.endswith(".pth") and not f.startswith(TEMP_PREFIX)
        ]
        files = sorted((f for f in files if os.path.isfile(f)), key=os.path.getmtime, reverse=True)
        tagged = self.get_checkpoint_file() if self.has_checkpoint() else ""
        if tagged and os.path.isfile(tagged):
            files = [tagged] + [f for f in files if os.path.abspath(f) != os.path.abspath(tagged)]
        return files

    def _load_intact(self, path: str) -> dict:
        """``_load_file(path)``, with a truncated / corrupt file reported as CheckpointUnreadableError (a file that
        is readable but holds forbidden objects still raises UnsafeCheckpointError)."""
        try:
            return self._load_file(path)
        except UnsafeCheckpointError:
            raise
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError, KeyError, AttributeError) as e:
            raise CheckpointUnreadableError(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict:
        """With ``resume``: loads everything (model, optimizer, scheduler, trainer state) from the newest intact
        checkpoint of save_dir, warning about each newer one that is broken (and about a missing or dangling
        ``last_checkpoint``); raises CheckpointUnreadableError when checkpoints exist but none is intact. Without
        ``resume``, or with no checkpoint in save_dir: loads only the model weights of ``path``. Sets
        ``resumed_from`` to the checkpoint resumed from (None when only weights were loaded)."""
        self.resumed_from = None
        self._initialising = self.fine_tune and not (resume and self.resume_candidates())
        try:
            return self._resume_or_load(path, resume)
        finally:
            self._initialising = False

    def remove_interrupted_saves(self) -> None:
        """Deletes the temporary checkpoint files that saves killed mid-way left in save_dir (each up to a
        checkpoint's size), counted in the log; only the main process does."""
        if not self.save_dir or not os.path.isdir(self.save_dir) or not comm.is_main_process():
            return
        left = [f for f in os.listdir(self.save_dir) if f.startswith(TEMP_PREFIX) and f.endswith(".pth")]
        size = 0
        for name in left:
            with contextlib.suppress(OSError):
                size += os.path.getsize(os.path.join(self.save_dir, name))
                os.remove(os.path.join(self.save_dir, name))
        if left:
            self.logger.info(
                f"removed {len(left)} temporary file(s) ({size / 2**20:.0f} MiB) of interrupted checkpoint saves "
                f"from {self.save_dir}."
            )

    def _resume_or_load(self, path: str, resume: bool) -> dict:
        if resume:
            self.remove_interrupted_saves()
            candidates = self.resume_candidates()
            tagged = self.get_checkpoint_file() if self.has_checkpoint() else ""
            if candidates and tagged and not os.path.isfile(tagged):
                self.logger.warning(f"last_checkpoint names {tagged}, which does not exist; trying the others.")
            elif candidates and not tagged:
                self.logger.warning(f"{self.save_dir} has checkpoints but no last_checkpoint file; trying the newest.")
            broken = []
            for candidate in candidates:
                try:
                    checkpoint = self._load_intact(candidate)
                except CheckpointUnreadableError as e:
                    self.logger.warning(f"checkpoint {candidate} is unreadable ({e}); falling back to an older one.")
                    broken.append(candidate)
                    continue
                if broken:
                    self.logger.warning(
                        f"resuming from {candidate}, the newest intact checkpoint; broken: {', '.join(broken)}."
                    )
                self.logger.info(f"[Checkpointer] Loading from {candidate} ...")
                self.resumed_from = candidate
                return self._apply(checkpoint, candidate, checkpointables=None)
            if broken:
                raise CheckpointUnreadableError(
                    f"no intact checkpoint in {self.save_dir} to resume from (unreadable: {', '.join(broken)}); "
                    f"delete them to start over, or run without --resume."
                )
        return self.load(path, checkpointables=[])

    def _apply(self, checkpoint: dict, path: str, checkpointables=None) -> dict:
        """Loads an already read checkpoint dict into the model and checkpointables (fvcore's load, after
        _load_file); returns what is left of it."""
        incompatible = self._load_model(checkpoint)
        if incompatible is not None:
            self._log_incompatible_keys(incompatible)
        for key in self.checkpointables if checkpointables is None else checkpointables:
            if key in checkpoint:
                self.logger.info(f"Loading {key} from {path} ...")
                self.checkpointables[key].load_state_dict(checkpoint.pop(key))
        return checkpoint

    def prune_periodic(self, keep: int) -> list[str]:
        """Deletes all but the ``keep`` newest periodic checkpoints (``model_<iteration>.pth``, newest by
        iteration); never ``model_final.pth`` nor the file ``last_checkpoint`` names. Returns the deleted paths."""
        if keep <= 0 or not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        periodic = sorted(
            ((int(m.group(1)), f) for f in os.listdir(self.save_dir) if (m := _PERIODIC.match(f))), reverse=True
        )
        tagged = os.path.basename(self.get_checkpoint_file()) if self.has_checkpoint() else ""
        deleted = []
        for _, name in periodic[keep:]:
            if name != tagged:
                os.remove(os.path.join(self.save_dir, name))
                deleted.append(os.path.join(self.save_dir, name))
        return deleted

    def _load_file(self, filename: str) -> dict:
        """The checkpoint dict of ``filename``; a truncated, empty or foreign file is CheckpointUnreadableError
        (one sentence), a pickle holding code UnsafeCheckpointError."""
        if not filename.endswith(CHECKPOINT_SUFFIXES):
            raise CheckpointUnreadableError(
                f"{filename} is not a checkpoint file: weights are read from {', '.join(CHECKPOINT_SUFFIXES)} files "
                "(e.g. the model_final.pth training writes, or an official model's .pkl); check MODEL.WEIGHTS."
            )
        with PathManager.open(filename, "rb") as f:
            magic = f.read(2)
        torch_file = filename.endswith(_TORCH_SUFFIXES)
        if not magic or (torch_file and not (magic == b"PK" or magic[:1] == b"\x80")):
            raise CheckpointUnreadableError(
                f"{filename} is not a checkpoint ({'empty' if not magic else 'neither a zip archive nor a pickle'}): "
                "it is truncated or another kind of file; copy it again or give another checkpoint."
            )
        try:
            loaded = self._read_file(filename)
        except UnsafeCheckpointError:
            raise
        except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
            first = str(e).splitlines()[0] if str(e) else ""
            raise CheckpointUnreadableError(
                f"{filename} cannot be read ({type(e).__name__}: {first}): it is truncated or corrupt; copy it again "
                "or give another checkpoint."
            ) from e
        if not isinstance(loaded.get("model"), dict):
            raise CheckpointUnreadableError(
                f"{filename} holds a {type(loaded.get('model')).__name__}, not a dict of tensors (a state dict, or "
                "{'model': state dict}); give a checkpoint saved from a model."
            )
        return loaded

    def _read_file(self, filename: str) -> dict:
        if filename.endswith(".pkl"):
            data = load_pickle_safely(filename)
            if "model" in data and "__author__" in data:  # detectron2 model-zoo format
                self.logger.info(f"Reading a file from '{data['__author__']}'")
                return data
            data = data.get("blobs", data)  # Caffe2 / Detectron1 format
            model = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": model, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(_TORCH_SUFFIXES):
            with PathManager.open(filename, "rb") as f:
                try:
                    loaded = torch.load(f, map_location="cpu", weights_only=True)
                except pickle.UnpicklingError as err:
                    raise UnsafeCheckpointError(
                        f"refusing to load {filename}: it contains objects beyond tensors and containers "
                        f"(torch.load(weights_only=True) said: {str(err).splitlines()[0]})."
                    ) from err
            if not isinstance(loaded, dict):
                return {"model": loaded}  # refused by _load_file, naming what it holds
            if filename.endswith(".pyth"):
                loaded = {"model": loaded["model_state"], "__author__": "pycls", "matching_heuristics": True}
            return loaded if "model" in loaded else {"model": loaded}
        raise AssertionError(f"_load_file admits only {CHECKPOINT_SUFFIXES}")


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


def save_detectron2_pickle(state_dict: dict, path: str, author: str, matching_heuristics: bool = True) -> dict:
    """Writes converted weights in detectron2's model-zoo format ({"model": name -> numpy array, "__author__",
    "matching_heuristics"}) and returns that dict. ``matching_heuristics``: detectron2 matches the names by suffix
    (backbone-only weights without the ``backbone.`` prefix); False for a whole model in our names, so a tensor
    whose shape does not fit is refused by name instead of being skipped by the heuristics."""
    obj = {
        "model": {k: torch.as_tensor(v).numpy() for k, v in state_dict.items()},
        "__author__": author,
        "matching_heuristics": matching_heuristics,
    }
    with atomic_open(path, "wb") as f:
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
        help="allow a .pth / .bin that holds Python objects besides tensors (runs code from the file)",
    )
    args = parser.parse_args(argv)
    if not os.path.isfile(args.input):
        parser.error(f"input {args.input!r} does not exist or is not a file")
    from safetensors import SafetensorError

    try:
        obj = convert_file(args.input, args.output, trust_pickle=args.trust_pickle)
    except (KeyError, ValueError, OSError, RuntimeError, pickle.UnpicklingError, SafetensorError) as err:
        # a file of another model, a truncated or corrupt file (torch.load: RuntimeError), an unsafe pickle
        from .config import usage_error

        usage_error(f"{args.input}: {err.args[0] if isinstance(err, KeyError) and err.args else err}")
    print(f"wrote {len(obj['model'])} tensors to {args.output}")
