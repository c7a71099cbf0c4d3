#!/usr/bin/env python
"""Make the Cityscapes files detectron2 needs beyond the download, with cityscapesscripts.

Input: the Cityscapes dataset folder (default $CITYSCAPES_DATASET, else ROOT/cityscapes) holding
  leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/<split>/<city>/*_gtFine_{polygons.json,instanceIds.png}
  (gtFine_trainvaltest.zip, leftImg8bit_trainvaltest.zip from cityscapes-dataset.com)
Output (inside that folder):
  gtFine/<split>/<city>/*_gtFine_labelTrainIds.png   one per *_polygons.json (createTrainIdLabelImgs' conversion,
                                                    json2labelImg "trainIds")
  gtFine/cityscapes_panoptic_{train,val}/, gtFine/cityscapes_panoptic_{train,val}.json
                                                    createPanopticImgs.convert2panoptic (category id = label id)
Restartable: existing label images are skipped and each is written atomically; a panoptic split is built in a
temporary folder and moved into place, its JSON last, so a split whose JSON exists is complete and skipped.
"""

import argparse
import glob
import os
import shutil
import sys

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atomic import write_png  # noqa: E402
from _cli import run  # noqa: E402

PANOPTIC_SPLITS = ("train", "val")


def parse_args(argv=None):
    default = os.getenv("CITYSCAPES_DATASET") or os.path.join(
        os.getenv("DETECTRON2_DATASETS", "datasets"), "cityscapes"
    )
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--cityscapes",
        default=default,
        help="the Cityscapes folder (default: $CITYSCAPES_DATASET, else $DETECTRON2_DATASETS/cityscapes)",
    )
    p.add_argument("--skip-panoptic", action="store_true", help="only make the trainId label images")
    return p.parse_args(argv)


def train_id_image(polygons_json):
    """The trainId label image (uint8 [H, W]) of one *_polygons.json, as createTrainIdLabelImgs makes it."""
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    annotation = Annotation()
    annotation.fromJsonFile(polygons_json)
    return np.asarray(createLabelImage(annotation, "trainIds"), np.uint8)


def make_train_ids(root):
    files = sorted(glob.glob(os.path.join(root, "gtFine", "*", "*", "*_gtFine_polygons.json")))
    if not files:
        raise FileNotFoundError(
            f"No '{os.path.join(root, 'gtFine', '<split>', '<city>', '*_gtFine_polygons.json')}'"
            "; unzip gtFine_trainvaltest.zip there or pass --cityscapes / set $CITYSCAPES_DATASET."
        )
    done = 0
    for f in tqdm(files, desc="cityscapes labelTrainIds", unit="img"):
        dst = f.replace("_polygons.json", "_labelTrainIds.png")
        if not os.path.exists(dst):
            write_png(dst, train_id_image(f))
            done += 1
    return done


def make_panoptic(root, split):
    """Build cityscapes_panoptic_<split>{/,.json} in a temporary folder, then move it into place (JSON last)."""
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    gt = os.path.join(root, "gtFine")
    name = f"cityscapes_panoptic_{split}"
    if os.path.exists(os.path.join(gt, name + ".json")):
        return False
    if not glob.glob(os.path.join(gt, split, "*", "*_instanceIds.png")):
        raise FileNotFoundError(
            f"No '{os.path.join(gt, split, '<city>', '*_instanceIds.png')}'; unzip gtFine_trainvaltest.zip there."
        )
    tmp = os.path.join(gt, f".tmp-{name}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    convert2panoptic(cityscapesPath=gt, outputFolder=tmp, setNames=[split])
    shutil.rmtree(os.path.join(gt, name), ignore_errors=True)
    os.replace(os.path.join(tmp, name), os.path.join(gt, name))
    os.replace(os.path.join(tmp, name + ".json"), os.path.join(gt, name + ".json"))
    shutil.rmtree(tmp)
    return True


def main(argv=None):
    args = parse_args(argv)
    n = make_train_ids(args.cityscapes)
    print(f"[prepare_cityscapes] labelTrainIds: wrote {n} new file(s)")
    if args.skip_panoptic:
        return
    for split in tqdm(PANOPTIC_SPLITS, desc="cityscapes panoptic", unit="split"):
        done = make_panoptic(args.cityscapes, split)
        print(f"[prepare_cityscapes] panoptic {split}: {'written' if done else 'already complete, skipped'}")


if __name__ == "__main__":
    run(main)
