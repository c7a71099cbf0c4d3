"""What the datasets/convert_*.py scripts share: checked image reading, COCO panoptic / instance records from
segment maps, split selection, problem collection and the ``dataset.json`` manifest that registers the output
(universal_seg/data/datasets/custom.py: register_manifest)."""

import os
import sys

import numpy as np
from pycocotools import mask as mask_util

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from _atomic import write_json  # noqa: E402

MANIFEST = "dataset.json"
IGNORE = 255


class ConversionError(ValueError):
    """A problem that stops the conversion (one sentence naming the file and the fix)."""


class Problems:
    """Errors (the conversion fails at the end, after every file was looked at) and counted skips."""

    def __init__(self):
        self.errors, self.skips, self.notes = [], {}, {}

    def error(self, message):
        self.errors.append(message)

    def skip(self, reason, where):
        self.skips.setdefault(reason, []).append(where)

    def note(self, what, where):
        self.notes.setdefault(what, []).append(where)

    def report(self, tag):
        """Prints the skips (counted, with up to 5 examples) and errors; returns the exit status (1 on errors)."""
        for prefix, table in (("skipped ", self.skips), ("", self.notes)):
            for reason, where in sorted(table.items()):
                more = " ..." if len(where) > 5 else ""
                print(f"[{tag}] {prefix}{len(where)} {reason}: {', '.join(where[:5])}{more}")
        for message in self.errors:
            print(f"[{tag}] error: {message}", file=sys.stderr)
        if self.errors:
            print(f"[{tag}] {len(self.errors)} errors: nothing registered (no {MANIFEST} written).", file=sys.stderr)
        return 1 if self.errors else 0


def read_class_lines(path):
    """[(line number, name)] of the non-blank lines of a class list (one name per line; numbers from 1, blank
    lines counted, as an editor shows them)."""
    with open(path) as f:
        return [(number, line.strip()) for number, line in enumerate(f, 1) if line.strip()]


def refuse_duplicate_names(path, numbered):
    """Raises ConversionError naming every class name that ``numbered`` ([(line number, name)] of the class list
    ``path``) holds more than once, with its line numbers: the categories of a dataset must be unique."""
    lines_of = {}
    for number, name in numbered:
        lines_of.setdefault(name, []).append(number)
    dupes = [f"'{n}' (lines {', '.join(map(str, lines))})" for n, lines in lines_of.items() if len(lines) > 1]
    if dupes:
        raise ConversionError(
            f"'{path}' lists the class{'es' if len(dupes) > 1 else ''} {' and '.join(dupes)} more than once; keep one "
            "line per class name."
        )


def read_class_names(path, tag):
    """The class names of the class list ``path`` (one per line), in order; exits with one ``[tag] error:`` line
    when a name appears twice (:func:`refuse_duplicate_names`)."""
    numbered = read_class_lines(path)
    try:
        refuse_duplicate_names(path, numbered)
    except ConversionError as err:
        sys.exit(f"[{tag}] error: {err}")
    return [name for _, name in numbered]


def read_image_checked(path, expect_hw=None):
    """uint8 [H, W, 3] of ``path`` (universal_seg's one image reader: EXIF orientation applied); raises
    ConversionError naming the file when it is missing, empty, truncated or not of the size ``expect_hw``."""
    from universal_seg.data.mappers.image_io import read_rgb_image

    if not os.path.isfile(path):
        raise ConversionError(f"image '{path}' does not exist; put it there or fix the path that names it.")
    if os.path.getsize(path) == 0:
        raise ConversionError(f"image '{path}' is an empty (0-byte) file; copy the image again or drop its entry.")
    try:
        image = read_rgb_image(path)
    except Exception:  # noqa: BLE001 - whatever the reader raises for a broken file
        image = None
    if image is None:
        raise ConversionError(
            f"image '{path}' cannot be decoded (truncated or not an image); copy the image again or drop its entry."
        )
    if expect_hw is not None and tuple(image.shape[:2]) != tuple(expect_hw):
        raise ConversionError(
            f"image '{path}' is {image.shape[0]}x{image.shape[1]} (HxW) but its annotation says "
            f"{expect_hw[0]}x{expect_hw[1]}; re-annotate it or use the image that was annotated."
        )
    return image


def segments_of(segment_map, segment_class):
    """COCO panoptic ``segments_info`` of an int [H, W] map of segment ids (0 = void) whose category ids are
    ``segment_class[id]``; segments with no pixel are left out."""
    segments = []
    for sid in sorted(int(s) for s in np.unique(segment_map) if s != 0):
        ys, xs = np.nonzero(segment_map == sid)
        segments.append(
            {
                "id": sid,
                "category_id": int(segment_class[sid]),
                "iscrowd": 0,
                "area": int(len(ys)),
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
            }
        )
    return segments


def instance_annotation(mask, category_id, image_id, ann_id):
    """COCO instance annotation (RLE, area and bbox by pycocotools) of a bool [H, W] mask."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    area, bbox = float(mask_util.area(rle)), [float(v) for v in mask_util.toBbox(rle)]
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": int(category_id),
        "segmentation": rle,
        "area": area,
        "bbox": bbox,
        "iscrowd": 0,
    }


def pick_splits(stems, val, val_every):
    """{stem: "train" | "val"}: ``val`` (a list of stems) or every ``val_every``-th stem in sorted order is held
    out; raises ConversionError naming a ``val`` stem that is not in the input."""
    val = set(val or [])
    unknown = sorted(val - set(stems))
    if unknown:
        raise ConversionError(f"--val names {unknown}, which are not among the input images; use their file stems.")
    if val_every < 0:
        raise ConversionError(f"--val-every must be 0 (no hold-out) or a positive N, got {val_every}.")
    split = {}
    for i, stem in enumerate(sorted(stems)):
        held = stem in val or (val_every and (i + 1) % val_every == 0)
        split[stem] = "val" if held else "train"
    if val_every and split and "val" not in split.values():
        raise ConversionError(
            f"--val-every {val_every} holds out no image of {len(split)} (every {val_every}-th image is held out); "
            f"use a smaller N (at most {len(split)}) or name the held-out stems with --val."
        )
    if split and "train" not in split.values():
        raise ConversionError(
            f"the hold-out ({'--val-every 1' if val_every == 1 else '--val'}) takes all {len(split)} images, leaving "
            f"none to train on; hold out fewer (--val-every N with 2 <= N <= {len(split)}, or fewer --val stems)."
        )
    return split


def write_outputs(
    out,
    name,
    categories,
    images,
    pan_annotations,
    instances,
    split_of,
    ignore_label=IGNORE,
    image_dir="images",
    semantic_dir="semantic",
):
    """The per-split JSONs, then the manifest (last: a folder is registered only when complete).

    ``images``: COCO image records (``file_name``, ``id``, ``height``, ``width``); ``pan_annotations`` (same
    order) and ``instances`` (COCO annotations, or None when there are no things); ``split_of[file_name]``;
    ``image_dir`` / ``semantic_dir``: relative to ``out`` or absolute (inputs referenced where they are)."""
    splits = {}
    for split in sorted(set(split_of.values())):
        ids = {img["id"] for img in images if split_of[img["file_name"]] == split}
        pan = {
            "images": [img for img in images if img["id"] in ids],
            "annotations": [a for a in pan_annotations if a["image_id"] in ids],
            "categories": categories,
        }
        write_json(os.path.join(out, f"panoptic_{split}.json"), pan)
        entry = {
            "images": image_dir,
            "panoptic_root": "panoptic",
            "panoptic_json": f"panoptic_{split}.json",
            "semantic_root": semantic_dir,
        }
        if instances is not None:
            ins = {
                "images": pan["images"],
                "annotations": [a for a in instances if a["image_id"] in ids],
                "categories": [c for c in categories if c["isthing"]],
            }
            write_json(os.path.join(out, f"instances_{split}.json"), ins)
            entry["instances_json"] = f"instances_{split}.json"
        splits[split] = entry
    manifest = {"name": name, "categories": categories, "ignore_label": ignore_label, "splits": splits}
    write_json(os.path.join(out, MANIFEST), manifest)
    return manifest


def remove_manifest(out):
    """Unregisters ``out`` while it is rewritten (an interrupted run leaves no manifest pointing at mixed files)."""
    path = os.path.join(out, MANIFEST)
    if os.path.exists(path):
        os.remove(path)
