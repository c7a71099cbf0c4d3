#!/usr/bin/env python
"""Make ADE20K (SceneParsing 150) label PNGs in detectron2's convention.

Input:  ROOT/ADEChallengeData2016/annotations/{training,validation}/<stem>.png   (official release; values 0-150,
        0 = "other")
Output: ROOT/ADEChallengeData2016/annotations_detectron2/{training,validation}/<stem>.png   uint8, label - 1
        (0-149), 0 -> 255 (ignored)
Restartable: existing outputs are skipped; each file is written atomically. Needed by ade20k_sem_seg_* and
ade20k_panoptic_* (its semantic root).
"""

import argparse
import glob
import os
import sys

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atomic import write_png  # noqa: E402
from _cli import run  # noqa: E402

FOLDERS = ("training", "validation")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="datasets root holding ADEChallengeData2016/ (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    return p.parse_args(argv)


def shift_labels(label):
    """ADE label values 0-150 -> 0-149 with 0 ("other") -> 255."""
    label = np.asarray(label, np.int64)
    return np.where(label == 0, 255, label - 1).astype(np.uint8)


def convert_folder(ade, folder):
    src_dir = os.path.join(ade, "annotations", folder)
    if not os.path.isdir(src_dir):
        raise FileNotFoundError(
            f"Missing '{src_dir}'; extract ADEChallengeData2016.zip "
            "(sceneparsing.csail.mit.edu) into the datasets root."
        )
    done = 0
    for src in tqdm(sorted(glob.glob(os.path.join(src_dir, "*.png"))), desc=f"ade20k sem_seg ({folder})", unit="img"):
        out = os.path.join(ade, "annotations_detectron2", folder, os.path.basename(src))
        if not os.path.exists(out):
            write_png(out, shift_labels(Image.open(src)))
            done += 1
    return done


def main(argv=None):
    args = parse_args(argv)
    for folder in FOLDERS:
        n = convert_folder(os.path.join(args.root, "ADEChallengeData2016"), folder)
        print(f"[prepare_ade20k_sem_seg] {folder}: wrote {n} new file(s)")


if __name__ == "__main__":
    run(main)
