#!/usr/bin/env python
"""Make COCO semantic label PNGs from the COCO 2017 panoptic annotations (Mask2Former's convention).

Input (under ROOT/coco):
  annotations/panoptic_{train,val}2017.json, panoptic_{train,val}2017/<stem>.png   (download from cocodataset.org)
Output (under ROOT/coco):
  panoptic_semseg_{train,val}2017/<stem>.png   uint8; pixel = contiguous id (0-132) of the segment's category in
                                               the 133-class panoptic table, 255 = void (no segment)
Every segment (crowd ones included) is painted with its category. Restartable: existing outputs are skipped;
each file is written atomically. Needed by coco_2017_{train,val}_panoptic_with_sem_seg.
"""

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from _atomic import write_png  # noqa: E402
from _cli import run  # noqa: E402

SPLITS = ("train", "val")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="datasets root holding coco/ (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS, help="splits to convert")
    return p.parse_args(argv)


def require(path, what):
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Missing {what} '{path}'; download COCO 2017 panoptic annotations there (see datasets/README.md)."
        )


def semantic_of(panoptic_rgb, segments, contiguous):
    """COCO panoptic RGB [H, W, 3] + segments_info -> uint8 semantic labels (255 where no segment)."""
    rgb = panoptic_rgb.astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    out = np.full(ids.shape, 255, np.uint8)
    for s in segments:
        out[ids == s["id"]] = contiguous[s["category_id"]]
    return out


def convert_split(coco, split):
    json_file = os.path.join(coco, "annotations", f"panoptic_{split}2017.json")
    pan_dir = os.path.join(coco, f"panoptic_{split}2017")
    out_dir = os.path.join(coco, f"panoptic_semseg_{split}2017")
    require(json_file, "panoptic JSON")
    require(pan_dir, "panoptic PNG folder")
    with open(json_file) as f:
        annotations = json.load(f)["annotations"]
    from universal_seg.data.datasets.categories.coco import COCO_PANOPTIC_CATEGORIES  # imports torch: not at --help

    contiguous = {c["id"]: i for i, c in enumerate(COCO_PANOPTIC_CATEGORIES)}
    done = 0
    for ann in tqdm(annotations, desc=f"coco panoptic -> semantic ({split})", unit="img"):
        out = os.path.join(out_dir, ann["file_name"])
        if os.path.exists(out):
            continue
        rgb = np.asarray(Image.open(os.path.join(pan_dir, ann["file_name"])).convert("RGB"))
        write_png(out, semantic_of(rgb, ann["segments_info"], contiguous))
        done += 1
    return done


def main(argv=None):
    args = parse_args(argv)
    for split in args.splits:
        n = convert_split(os.path.join(args.root, "coco"), split)
        print(f"[prepare_coco_semantic_from_panoptic] {split}: wrote {n} new file(s)")


if __name__ == "__main__":
    run(main)
