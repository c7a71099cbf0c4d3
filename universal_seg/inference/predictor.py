"""The batched predictor: images of any type and size in, detectron2's standard outputs out.

    from universal_seg import Predictor
    predictor = Predictor(cfg, batch_size=4)          # cfg: universal_seg.config.load_config(...)
    outputs = predictor(["a.jpg", bgr_array, pil_image], format="BGR")   # one dict per image, in order
    outputs = predictor(rgb_array)                    # one image -> one dict

Batches hold images of the same padded size only. Mask2Former's attention and the per-pixel heads' convolutions
have no padding mask, so an image padded further to its batch's largest size would get other results than alone;
grouping by padded size (the resized size rounded up to the model's size divisibility) keeps batched results equal
to one-by-one results.
"""

import os
from collections import defaultdict
from contextlib import nullcontext

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image

from .. import data as _data  # noqa: F401  (registers the datasets: the models read their metadata)
from .. import modeling as _modeling  # noqa: F401  (registers the models)
from ..checkpoint import UniversalSegCheckpointer
from ..data.mappers.image_io import UnreadableImageError, decode_rgb_image, pil_to_rgb
from .tiling import TilingConfig, tiled_inference

__all__ = ["ImageTooLargeError", "InputError", "Predictor", "load_image"]

_FORMATS = ("RGB", "BGR")


class InputError(ValueError):
    """An input the predictor cannot use (unreadable file, unsupported type, empty or non-3-channel image)."""


class ImageTooLargeError(ValueError):
    """An image above TEST.MAX_OUTPUT_PIXELS for whole-image inference (tiled inference would take it)."""


def _name(image, index: int | None) -> str:
    """How an input is named in error messages: its path, else its position in the list and type."""
    if isinstance(image, (str, os.PathLike)):
        return repr(os.fspath(image))
    where = f"input {index}" if index is not None else "the input"
    return f"{where} ({type(image).__name__})"


def load_image(image, format: str = "RGB", index: int | None = None) -> np.ndarray:
    """Any supported input -> RGB uint8 [H, W, 3] (a new or read-only array; never modified).

    Supported: a path or a PIL image (EXIF orientation applied, gray / palette / RGBA / 16-bit / float converted
    as in training: universal_seg.data.mappers.image_io.decode_rgb_image), a uint8 numpy array [H, W, 3] or a
    uint8 tensor [3, H, W] (detectron2's layout). Arrays and tensors are in ``format`` ("RGB" or "BGR");
    paths and PIL images carry their own. Raises InputError (one sentence naming the input) otherwise.
    """
    if format not in _FORMATS:
        raise InputError(f"format must be one of {_FORMATS}, got {format!r}.")
    name = _name(image, index)
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise InputError(f"image {name} does not exist or is not a file; check the path.")
        try:
            array = decode_rgb_image(path, "RGB")
        except UnreadableImageError as err:  # its reason: empty, truncated, not an image, a float range, ...
            raise InputError(f"{err}; check or replace it.") from err
    elif isinstance(image, Image.Image):
        try:
            array = pil_to_rgb(image)  # as training reads files: EXIF orientation, 16-bit and float scaling
        except ValueError as err:
            raise InputError(f"{name}: {err}.") from err
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        is_tensor = isinstance(image, torch.Tensor)
        if is_tensor:
            if image.dim() != 3 or image.shape[0] != 3:
                raise InputError(
                    f"{name} has shape {list(image.shape)}; a tensor must be [3, H, W] (3 channels first)."
                )
            array = image.detach().cpu().permute(1, 2, 0).numpy()
        else:
            if image.ndim != 3 or image.shape[2] != 3:
                raise InputError(
                    f"{name} has shape {list(image.shape)}; an array must be [H, W, 3] (3 channels last); convert "
                    f"gray or RGBA images to 3 channels first, or pass the file path."
                )
            array = image
        if array.dtype != np.uint8:
            raise InputError(
                f"{name} has dtype {array.dtype}; pass uint8 values 0..255 (e.g. (x * 255).round().astype(np.uint8))."
            )
        if format == "BGR":
            array = array[:, :, ::-1]
    else:
        raise InputError(
            f"{name} is not a supported image type; pass a path, a PIL image, a uint8 numpy array [H, W, 3] or a "
            f"uint8 tensor [3, H, W]."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{name} is empty ({array.shape[0]}x{array.shape[1]} pixels).")
    return array


class Predictor:
    """A model built from a config, with its weights, run on batches of images.

    Args:
        cfg: a universal_seg config (universal_seg.config.load_config); not modified. The test-time resize is
            INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST (MIN_SIZE_TEST 0: no resize), channel order INPUT.FORMAT, tiling
            TEST.TILING, the whole-image pixel budget TEST.MAX_OUTPUT_PIXELS; the tasks output are those the
            config enables (universal_seg.modeling.meta_arch.output_tasks / enable_output_task).
        weights: checkpoint to load (default cfg.MODEL.WEIGHTS; "" for none), read with the safe checkpointer.
        batch_size: images per forward pass (among images of the same padded size).
        device: "cpu", "cuda", "cuda:1", ... (default cfg.MODEL.DEVICE).
        amp: run the network under autocast (float16 on CUDA, bfloat16 on the CPU).

    Calling it with one image returns one dict; with a list (or tuple), a list of dicts in the same order:
    {"sem_seg": [K, H, W] float, "panoptic_seg": (int32 [H, W], segments_info), "instances": Instances with
    pred_masks bool [N, H, W], pred_boxes, scores, pred_classes}, those the model outputs, at each image's original
    (H, W), on the model's device.
    """

    def __init__(
        self, cfg, *, weights: str | None = None, batch_size: int = 1, device: str | None = None, amp: bool = False
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        cfg = cfg.clone()
        cfg.defrost()
        if device is not None:
            cfg.MODEL.DEVICE = device
        if str(cfg.MODEL.DEVICE).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(
                f"device {cfg.MODEL.DEVICE!r} was asked for but no CUDA device is available; pass device='cpu' "
                "(or set MODEL.DEVICE cpu)."
            )
        if cfg.INPUT.FORMAT not in _FORMATS:
            raise ValueError(f"INPUT.FORMAT {cfg.INPUT.FORMAT!r} is not supported by the predictor; use RGB or BGR.")
        if cfg.INPUT.MIN_SIZE_TEST < 0 or cfg.INPUT.MAX_SIZE_TEST < 0:
            raise ValueError(
                f"INPUT.MIN_SIZE_TEST {cfg.INPUT.MIN_SIZE_TEST} / MAX_SIZE_TEST {cfg.INPUT.MAX_SIZE_TEST}: sizes are "
                "positive (MIN_SIZE_TEST 0: no resize)."
            )
        self.tiling = TilingConfig.from_cfg(cfg)
        self.max_output_pixels = int(cfg.TEST.MAX_OUTPUT_PIXELS)
        self.cfg = cfg
        self.model = build_model(cfg).eval()
        weights = cfg.MODEL.WEIGHTS if weights is None else weights
        if weights:
            UniversalSegCheckpointer(self.model).load(weights)
        self.resize = (
            T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
            if cfg.INPUT.MIN_SIZE_TEST > 0
            else None
        )
        self.input_format = cfg.INPUT.FORMAT
        self.batch_size = batch_size
        self.amp = amp

    @property
    def device(self) -> torch.device:
        return self.model.device

    def prepare(self, image, format: str = "RGB", index: int | None = None) -> dict:
        """One input -> the model's input dict {"image": uint8 [3, h, w] resized, in INPUT.FORMAT, "height",
        "width"} (original size). Raises InputError / ImageTooLargeError naming the input."""
        rgb = load_image(image, format, index)
        height, width = rgb.shape[:2]
        over_budget = self.max_output_pixels > 0 and height * width > self.max_output_pixels
        too_large = (
            f"{_name(image, index)} is {height}x{width} = {height * width / 1e6:.1f} Mpx, above "
            f"TEST.MAX_OUTPUT_PIXELS ({self.max_output_pixels / 1e6:.1f} Mpx)"
        )
        if over_budget and self.tiling is None:
            raise ImageTooLargeError(
                f"{too_large} for whole-image inference; set TEST.TILING.ENABLED True (tiled inference) or raise "
                "TEST.MAX_OUTPUT_PIXELS."
            )
        if self.input_format == "BGR":
            rgb = rgb[:, :, ::-1]
        resized = self.resize.get_transform(rgb).apply_image(np.ascontiguousarray(rgb)) if self.resize else rgb
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        if over_budget and not self._needs_tiling(tensor):  # tiling is on, but this input fits one tile
            raise ImageTooLargeError(
                f"{too_large}, and its network input {tensor.shape[-2]}x{tensor.shape[-1]} fits one "
                f"{self.tiling.tile_size[0]}x{self.tiling.tile_size[1]} tile, so it would run whole; set "
                "INPUT.MIN_SIZE_TEST 0 (tile it at full resolution), a smaller TEST.TILING.TILE_SIZE, or raise "
                "TEST.MAX_OUTPUT_PIXELS."
            )
        return {"image": tensor, "height": height, "width": width}

    def _padded_size(self, tensor: torch.Tensor) -> tuple[int, int]:
        d = max(int(self.model.size_divisibility), 1)
        h, w = tensor.shape[-2:]
        return -(-h // d) * d, -(-w // d) * d

    def _autocast(self):
        if not self.amp:
            return nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _needs_tiling(self, tensor: torch.Tensor) -> bool:
        return self.tiling is not None and (
            tensor.shape[-2] > self.tiling.tile_size[0] or tensor.shape[-1] > self.tiling.tile_size[1]
        )

    def run(self, inputs: list[dict]) -> list[dict]:
        """Prepared inputs (:meth:`prepare`) -> outputs, in order: tiled one by one when TEST.TILING applies, the
        rest in batches of up to batch_size images with the same padded size."""
        outputs: list[dict | None] = [None] * len(inputs)
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        with torch.no_grad(), self._autocast():
            for i, x in enumerate(inputs):
                if self._needs_tiling(x["image"]):
                    outputs[i] = tiled_inference(self.model, x["image"], (x["height"], x["width"]), self.tiling)
                else:
                    groups[self._padded_size(x["image"])].append(i)
            for members in groups.values():
                for start in range(0, len(members), self.batch_size):
                    chunk = members[start : start + self.batch_size]
                    for i, out in zip(chunk, self.model([inputs[i] for i in chunk])):
                        outputs[i] = out
        if self.amp:  # semantic scores in float32 whatever the autocast dtype
            for out in outputs:
                if "sem_seg" in out:
                    out["sem_seg"] = out["sem_seg"].float()
        return outputs

    def __call__(self, images, format: str = "RGB"):
        """One image -> its output dict; a list or tuple of images -> a list of output dicts (see the class
        docstring). Every input is checked before any runs (InputError / ImageTooLargeError naming it)."""
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        if not batch:
            raise InputError("the list of images is empty; pass at least one image.")
        inputs = [self.prepare(image, format, None if single else i) for i, image in enumerate(batch)]
        outputs = self.run(inputs)
        return outputs[0] if single else outputs
