"""Command-line image inputs shared by ``tools/predict.py`` and ``demo/demo.py``."""

import glob
import os

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files named by ``patterns`` (files, globs, directories -> their images, sorted), in order, no repeats.
    A pattern that matches nothing is kept as is (it is reported as unreadable later)."""
    paths: list[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(
                os.path.join(pattern, f) for f in os.listdir(pattern) if f.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif glob.has_magic(pattern):
            found = sorted(glob.glob(os.path.expanduser(pattern)))
        else:
            found = [pattern]
        paths.extend(p for p in found if p not in paths)
    return paths
