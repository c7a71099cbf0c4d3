"""Robust image and label reading for the mappers."""

import logging

import numpy as np
from detectron2.data import detection_utils as utils
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

UNREADABLE = {"count": 0, "paths": []}  # images skipped so far in this process (the mapper returned None)


def read_rgb_image(path, fmt="RGB"):
    """Read an image as uint8 [H, W, 3] in ``fmt`` ("RGB" or "BGR"), applying the EXIF orientation.

    Grayscale, palette and RGBA images are converted to RGB (alpha dropped); 16-bit and float images are
    rescaled to 8 bits by their type's range. Returns None (logged, counted in UNREADABLE) when unreadable.
    """
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            array = _to_uint8_rgb(img)
    except Exception as e:  # noqa: BLE001 - any decoding failure means "skip this sample"
        UNREADABLE["count"] += 1
        UNREADABLE["paths"].append(path)
        logger.warning(
            "Skipping unreadable image %s (%s: %s); %d skipped so far.", path, type(e).__name__, e, UNREADABLE["count"]
        )
        return None
    return array[:, :, ::-1].copy() if fmt == "BGR" else array


def _to_uint8_rgb(img):
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float64)
        scale = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
        gray = np.clip(array / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        gray = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.ascontiguousarray(np.asarray(img.convert("RGB")))


def read_label(path):
    """Read a label PNG (semantic ids, palette indices kept) as an integer array [H, W]."""
    return utils.read_image(path).astype(np.int64)


def read_panoptic(path):
    """Read a COCO-panoptic PNG as segment ids [H, W] (id = R + 256 G + 256^2 B)."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def check_same_size(image, label, path):
    """Raise when a label's [H, W] differs from its image's, naming the file."""
    if image.shape[:2] != label.shape[:2]:
        raise ValueError(
            f"Label '{path}' is {label.shape[:2]} but its image is {image.shape[:2]}; "
            "re-run the dataset's preparation script."
        )
