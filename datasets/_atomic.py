"""Atomic writes for the preparation and conversion scripts, on :mod:`universal_seg.atomic` (temporary file in the
target's folder, fsync, rename; the usual 0644 mode, 0666 less the umask), plus the panoptic id <-> RGB encoding."""

import json

import numpy as np
from PIL import Image

from universal_seg.atomic import atomic_open, atomic_write_bytes


def write_bytes(path, data):
    atomic_write_bytes(path, data)


def write_json(path, obj):
    with atomic_open(path, "w") as f:
        json.dump(obj, f)


def write_png(path, array):
    """Write a uint8 [H, W] label map or uint8 [H, W, 3] RGB image as PNG."""
    with atomic_open(path, "wb") as f:
        Image.fromarray(np.ascontiguousarray(array)).save(f, format="PNG")


def id2rgb(ids):
    """Panoptic segment ids [H, W] -> RGB uint8 [H, W, 3] (id = R + 256 G + 256^2 B)."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)
