"""Robust image and label reading for the mappers."""

import logging

import numpy as np
from detectron2.data import detection_utils as utils
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

UNREADABLE = {"count": 0, "paths": [], "reasons": {}}  # images skipped so far in this process (mapper returned None)


class UnreadableImageError(OSError):
    """An image file is missing, truncated, corrupt or in a format PIL cannot decode."""


def decode_rgb_image(path, fmt="RGB"):
    """The one image reader of training, evaluation and the demo: uint8 [H, W, 3] in ``fmt`` ("RGB" or "BGR").

    The EXIF orientation is applied; grayscale, palette and RGBA / LA images become RGB (alpha dropped); 16-bit
    images are rescaled by their type's range (v * 255 / 65535, rounded), 32-bit integer images likewise by 2^32 - 1
    unless their values fit 16 bits; float images within [0, 1] are scaled by 255, within [0, 255] kept (rounded),
    others refused (their range has no standard meaning). Raises UnreadableImageError (naming the file) when it
    cannot be decoded.
    """
    if fmt not in ("RGB", "BGR"):
        raise ValueError(f"image format {fmt!r} is not supported; set INPUT.FORMAT to RGB or BGR.")
    try:
        with Image.open(path) as img:
            array = pil_to_rgb(img)
    except Exception as e:  # noqa: BLE001 - any decoding failure (PIL raises OSError, SyntaxError, ValueError, ...)
        raise UnreadableImageError(f"cannot read image {path} ({type(e).__name__}: {e})") from e
    return array[:, :, ::-1].copy() if fmt == "BGR" else array


def read_rgb_image(path, fmt="RGB"):
    """:func:`decode_rgb_image`, returning None (logged, counted in UNREADABLE with its reason) when unreadable."""
    try:
        return decode_rgb_image(path, fmt)
    except UnreadableImageError as e:
        UNREADABLE["count"] += 1
        UNREADABLE["paths"].append(path)
        UNREADABLE["reasons"][path] = str(e.__cause__ or e)
        logger.warning("Skipping unreadable image %s (%s); %d skipped so far.", path, e.__cause__, UNREADABLE["count"])
        return None


def unreadable_reason(path):
    """Why :func:`read_rgb_image` returned None for ``path`` (in this process)."""
    return UNREADABLE["reasons"].get(path, "unreadable image")


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """A PIL image as :func:`decode_rgb_image` gives it: EXIF orientation applied, then uint8 RGB [H, W, 3] with
    the same conversions of every mode. Raises ValueError for a float image of no standard range."""
    return _to_uint8_rgb(ImageOps.exif_transpose(img))


def _to_uint8_rgb(img):
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(img, dtype=np.float64)
        wide = img.mode == "I" and img.format != "PNG" and array.size and (array.max() > 65535 or array.min() < 0)
        scale = 4294967295.0 if wide else 65535.0  # a PNG opened as "I" is 16-bit
        gray = np.clip(np.floor(array / scale * 255.0 + 0.5), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        if not np.isfinite(array).all():
            raise ValueError("a floating-point image with NaN or infinite values: convert it to 8-bit first")
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if low < 0 or high > 255:
            raise ValueError(
                f"a floating-point image with values in [{low:g}, {high:g}], neither 0..1 nor 0..255: convert it to "
                "8-bit first (rescaled as your data needs)"
            )
        gray = np.floor(array * (255.0 if high <= 1.0 else 1.0) + 0.5).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.ascontiguousarray(np.asarray(img.convert("RGB")))


def read_label(path):
    """Read a label PNG (semantic ids, palette indices kept) as an integer array [H, W]."""
    return utils.read_image(path).astype(np.int64)


def read_panoptic(path):
    """Read a COCO-panoptic PNG as segment ids [H, W] (id = R + 256 G + 256^2 B)."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


class AnnotationError(ValueError):
    """A training annotation the model cannot learn from (a label of the wrong size or format, a class id out of
    range), naming the file and the fix; the training stream stops on it with one line."""


_CHECK_HINT = "re-run the dataset's preparation script, or `python tools/check_dataset.py NAME` to list every such file"


def check_same_size(image, label, path):
    """Raise AnnotationError when a label's [H, W] differs from ``image``'s, naming the file. ``image``: an array
    [H, W, ...] or an (H, W) size."""
    size = tuple(image) if isinstance(image, tuple) else tuple(image.shape[:2])
    if size != tuple(label.shape[:2]):
        raise AnnotationError(f"Label '{path}' is {label.shape[:2]} but its image is {size}; {_CHECK_HINT}.")


def check_semantic_label(label, path, num_classes: int, ignore_label: int) -> None:
    """Raise AnnotationError unless ``label`` is [H, W] class ids in [0, num_classes) or ``ignore_label``."""
    if label.ndim != 2:
        raise AnnotationError(
            f"Label '{path}' has {label.shape[2] if label.ndim == 3 else label.ndim} channels; semantic labels are "
            f"single-channel PNGs of class ids (map colours to ids first); {_CHECK_HINT}."
        )
    if label.size == 0:
        return
    low, high = int(label.min()), int(label.max())
    if low >= 0 and high < num_classes:
        return
    # the ids present: a histogram is much faster than np.unique for the usual uint8-range labels
    values = np.flatnonzero(np.bincount(label.ravel())) if 0 <= low and high < 1 << 16 else np.unique(label)
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_label)]
    if bad.size:
        raise AnnotationError(
            f"Label '{path}' holds class id(s) {bad[:5].tolist()}, outside 0..{num_classes - 1} "
            f"(MODEL.SEM_SEG_HEAD.NUM_CLASSES = {num_classes}) and not the ignore label {ignore_label}; fix the "
            f"labels or NUM_CLASSES; {_CHECK_HINT}."
        )
