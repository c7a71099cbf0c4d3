"""The one exception type for malformed or mismatched prediction / ground-truth files, and the readers that raise
it (one sentence naming the file and the fix) instead of a library's traceback."""

import json

import numpy as np
from PIL import Image


class PredictionFileError(ValueError):
    """A prediction file does not match its ground truth (ids, sizes, categories) or is malformed."""


def check_ids(pred_ids, gt_ids, what):
    """Raise PredictionFileError when predictions miss ground-truth ids or name unknown ones."""
    missing, unknown = sorted(set(gt_ids) - set(pred_ids)), sorted(set(pred_ids) - set(gt_ids))
    if missing:
        stray = f" and name {len(unknown)} not in it, e.g. {unknown[:5]}" if unknown else ""
        raise PredictionFileError(
            f"Predictions lack {len(missing)} {what}(s) of the ground truth, e.g. {missing[:5]}{stray}; predict every "
            "ground-truth image (tools/predict.py --dataset NAME gives the dataset's image ids)."
        )
    if unknown:
        raise PredictionFileError(
            f"Predictions name {len(unknown)} {what}(s) not in the ground truth, e.g. "
            f"{unknown[:5]}; check that the files belong to this dataset."
        )


def load_json(path, what="file"):
    """The JSON in ``path``; PredictionFileError when it is missing or not valid JSON (NaN / Infinity literals
    are read as floats and checked by the callers)."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise PredictionFileError(f"{what} '{path}' does not exist.") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PredictionFileError(f"{what} '{path}' is not valid JSON ({e}); regenerate it.") from e


def read_png(path, what="PNG"):
    """The image in ``path`` as an array ([H, W] or [H, W, C]) with its PIL mode; PredictionFileError when it is
    missing or cannot be decoded."""
    try:
        with Image.open(path) as im:
            return np.asarray(im), im.mode
    except FileNotFoundError as e:
        raise PredictionFileError(f"{what} '{path}' does not exist.") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise PredictionFileError(f"{what} '{path}' cannot be decoded ({type(e).__name__}: {e}).") from e


def rle_length(counts: str):
    """Total run length of a COCO compressed RLE string (pycocotools' rleFrString format: runs as 5-bit groups
    with a continuation bit, offset by 48, runs after the second as differences from the run two before), or None
    when the string is malformed (a character outside '0'..'o', an unfinished run, a negative run)."""
    runs, value, shift = [], 0, 0
    for ch in counts:
        c = ord(ch) - 48
        if not 0 <= c < 64:
            return None
        value |= (c & 0x1F) << (5 * shift)
        shift += 1
        if c & 0x20:
            continue
        if c & 0x10:
            value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return None
        runs.append(value)
        value, shift = 0, 0
    if shift:
        return None
    return sum(runs)
