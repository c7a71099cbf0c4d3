"""Command-line image inputs shared by ``tools/predict.py`` and ``demo/demo.py``."""

import glob
import logging
import os

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files named by ``patterns`` (files, globs, directories -> their images, sorted), in order, no repeats.
    A glob that matches nothing is kept as is (the caller reports it as a missing input); a folder without images
    is a warning."""
    paths: dict[str, None] = {}  # insertion-ordered, without repeats
    for pattern in patterns:
        if os.path.isdir(pattern):
            names = sorted(os.listdir(pattern))
            found = [os.path.join(pattern, f) for f in names if f.lower().endswith(IMAGE_EXTENSIONS)]
            others = [f for f in names if not f.lower().endswith(IMAGE_EXTENSIONS)]
            if others:
                logger.warning(
                    f"{pattern}: skipped {len(others)} entries that are not image files by their extension "
                    f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}; images end in "
                    f"{'/'.join(IMAGE_EXTENSIONS)}; sub-folders are not searched)."
                )
            if not found:
                logger.warning(f"{pattern}: the folder holds no image files.")
        elif glob.has_magic(pattern):
            found = sorted(glob.glob(os.path.expanduser(pattern))) or [pattern]
        else:
            found = [pattern]
        paths.update(dict.fromkeys(found))
    return list(paths)


def colliding_inputs(paths: list[str], output_name) -> dict[str, str]:
    """{path: error message} of the inputs whose output name (``output_name(path)``, e.g. the file stem) is that of
    an earlier input: their outputs would overwrite each other, so only the first of each name is processed."""
    errors: dict[str, str] = {}
    seen: dict[str, str] = {}
    for path in paths:
        name = output_name(path)
        if name in seen:
            errors[path] = f"its output name {name!r} is also that of {seen[name]!r}; outputs would collide."
        seen.setdefault(name, path)
    return errors


def file_stem(path: str) -> str:
    """'a/b/name.jpg' -> 'name': what predictions are named and matched by."""
    return os.path.splitext(os.path.basename(path))[0]
