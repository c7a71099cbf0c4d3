"""Atomic-write helpers shared by the preparation scripts (write to a temporary file, then os.replace); the files
get the usual 0644 mode (0666 less the umask)."""

import json
import os
import tempfile

import numpy as np
from PIL import Image


def _umask():
    """The process's umask (read from /proc on Linux, so no other thread sees it changed)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic(path, write):
    """``write(tmp)`` to a temporary file next to ``path``, fsync it, give it the mode a plain open() would
    (0666 less the umask: 0644 usually, not mkstemp's 0600), then rename it over ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-", suffix=os.path.splitext(path)[1]
    )
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path, data):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    _atomic(path, write)


def write_json(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f)

    _atomic(path, write)


def write_png(path, array):
    """Write a uint8 [H, W] label map or uint8 [H, W, 3] RGB image as PNG."""
    _atomic(path, lambda tmp: Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG"))


def id2rgb(ids):
    """Panoptic segment ids [H, W] -> RGB uint8 [H, W, 3] (id = R + 256 G + 256^2 B)."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)
