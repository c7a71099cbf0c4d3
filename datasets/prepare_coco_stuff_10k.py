#!/usr/bin/env python
"""Make COCO-Stuff-10k images and label PNGs in detectron2's layout (171 classes).

Assumed input: the official COCO-Stuff 10k v1.1 release (cocostuff-10k-v1.1.zip) unpacked into
ROOT/coco/coco_stuff_10k:
  images/<name>.jpg, imageLists/{train,test}.txt (one <name> per line),
  annotations/<name>.mat   MATLAB v5 file whose variable "S" is the [H, W] label map of COCO-Stuff ids
                           (1-182; 0 = unlabeled); read with scipy.io.loadmat
Not supported: the older v1.0 release (MATLAB v7.3/HDF5 files, which MaskFormer reads with h5py and whose label
numbering differs) and any other v7.3 .mat file (scipy cannot read them); both raise a one-line error.
Output (under ROOT/coco/coco_stuff_10k):
  images_detectron2/{train,test}/<name>.jpg    copies of the images
  annotations_detectron2/{train,test}/<name>.png   uint8; contiguous id 0-170 in the order of
                                               categories/coco.py COCO_STUFF_171_CATEGORIES (80 things by id, then
                                               stuff ids 92-182); unlabeled and the 11 unused COCO ids -> 255
Restartable: existing outputs are skipped; each file is written atomically.
"""

import argparse
import os
import sys

import numpy as np
import scipy.io
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from _atomic import write_bytes, write_png  # noqa: E402
from _cli import run  # noqa: E402

SPLITS = ("train", "test")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="datasets root holding coco/coco_stuff_10k/ (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    return p.parse_args(argv)


def lookup_table():
    """COCO-Stuff id (0-255) -> contiguous id, 255 for unlabeled / unused ids."""
    from universal_seg.data.datasets.categories.coco import COCO_STUFF_171_CATEGORIES  # imports torch: not at --help

    lut = np.full(256, 255, np.uint8)
    for i, c in enumerate(COCO_STUFF_171_CATEGORIES):
        lut[c["id"]] = i
    return lut


def read_labels(mat_path):
    """The "S" label map of a v1.1 .mat file as uint8 COCO-Stuff ids (values above 255 cannot occur: ids <= 182)."""
    try:
        s = scipy.io.loadmat(mat_path)["S"]
    except NotImplementedError as e:
        raise ValueError(f"'{mat_path}' is a MATLAB v7.3 file (COCO-Stuff 10k v1.0?); use the v1.1 release.") from e
    return np.clip(s.astype(np.int64), 0, 255).astype(np.uint8)


def read_list(base, split):
    path = os.path.join(base, "imageLists", f"{split}.txt")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Missing '{path}'; unpack the COCO-Stuff 10k release (cocostuff-10k-v1.1.zip) into '{base}'."
        )
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def convert_split(base, split, lut):
    done = 0
    for name in tqdm(read_list(base, split), desc=f"coco-stuff-10k ({split})", unit="img"):
        image_out = os.path.join(base, "images_detectron2", split, name + ".jpg")
        label_out = os.path.join(base, "annotations_detectron2", split, name + ".png")
        if not os.path.exists(image_out):
            with open(os.path.join(base, "images", name + ".jpg"), "rb") as f:
                write_bytes(image_out, f.read())
        if not os.path.exists(label_out):
            write_png(label_out, lut[read_labels(os.path.join(base, "annotations", name + ".mat"))])
            done += 1
    return done


def main(argv=None):
    args = parse_args(argv)
    base, lut = os.path.join(args.root, "coco", "coco_stuff_10k"), lookup_table()
    for split in SPLITS:
        n = convert_split(base, split, lut)
        print(f"[prepare_coco_stuff_10k] {split}: wrote {n} new label file(s)")


if __name__ == "__main__":
    run(main)
