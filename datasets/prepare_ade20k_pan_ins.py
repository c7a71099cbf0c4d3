#!/usr/bin/env python
"""Make ADE20K panoptic (COCO panoptic PNG + JSON) and instance (COCO JSON) annotations, as Mask2Former does.

Input (under ROOT/ADEChallengeData2016):
  images/{training,validation}/<stem>.jpg
  annotations/{training,validation}/<stem>.png            official SceneParsing labels, 0 = other, 1-150
  annotations_instance/{training,validation}/<stem>.png   the ADE20K instance-track release (annotations_instance.tar),
                                                          RGB: R = instance class 1-100 (0 = none), G = instance
                                                          id within the image (0 = no instance), B unused
Output (under ROOT/ADEChallengeData2016):
  ade20k_panoptic_{train,val}/<stem>.png, ade20k_panoptic_{train,val}.json
      COCO panoptic; category id = ADE label 1-150. Stuff segments come from the semantic labels (one per stuff
      class present); each instance (G id > 0) is one thing segment painted over them, its category the
      semantic id of instance class R (categories/ade20k.py ADE20K_INSTANCE_TO_SEMANTIC_ID). Pixels of thing
      classes outside every instance, and label 0, are void. Segment ids are 1, 2, ... per image.
  ade20k_instance_{train,val}.json
      COCO instances (RLE masks, iscrowd 0) of the 100 instance classes; category id = the class's ADE
      semantic label 1-150, as in the panoptic JSON (categories/ade20k.py ADE20K_INSTANCE_CATEGORIES).
Image ids are 1..N over the sorted image stems of a split, the same in both JSONs. The panoptic datasets also use
annotations_detectron2/ (run datasets/prepare_ade20k_sem_seg.py). Restartable: a split whose two JSONs exist is
skipped, existing panoptic PNGs are not rewritten; every file is written atomically (the JSONs last).
"""

import argparse
import glob
import os
import sys

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from _atomic import id2rgb, write_json, write_png  # noqa: E402
from _cli import run  # noqa: E402

SPLITS = {"train": "training", "val": "validation"}
ADE_URL = "ADEChallengeData2016.zip (sceneparsing.csail.mit.edu)"
INSTANCE_URL = "the ADE20K instance annotations (annotations_instance.tar, sceneparsing.csail.mit.edu)"


def tables():
    """(ADE20K_150_CATEGORIES, ADE20K_INSTANCE_CATEGORIES, ADE20K_INSTANCE_TO_SEMANTIC_ID), imported on first use
    (they import detectron2 and torch, which --help does not need)."""
    from universal_seg.data.datasets.categories import ade20k

    return ade20k.ADE20K_150_CATEGORIES, ade20k.ADE20K_INSTANCE_CATEGORIES, ade20k.ADE20K_INSTANCE_TO_SEMANTIC_ID


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="datasets root holding ADEChallengeData2016/ (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS), help="splits to convert")
    return p.parse_args(argv)


def require_dir(path, source):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Missing '{path}'; extract {source} into the datasets root.")


def bbox_of(mask):
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def instances_of(instance_rgb, stem):
    """[(instance class 1-100, mask)] for each G id > 0 of an instance PNG, in increasing G id order."""
    cls, ins = instance_rgb[..., 0], instance_rgb[..., 1]
    out = []
    for g in np.unique(ins):
        if g == 0:
            continue
        mask = ins == g
        classes = np.unique(cls[mask])
        if len(classes) != 1 or not 1 <= classes[0] <= 100:
            raise ValueError(
                f"Instance {g} of '{stem}' has instance classes {classes.tolist()} (expected one in "
                "1-100); re-extract annotations_instance from the official release."
            )
        out.append((int(classes[0]), mask))
    return out


def panoptic_of(semantic, instances):
    """ADE labels [H, W] (0-150) + instances -> (segment ids [H, W], segments_info with ADE category ids)."""
    categories, _, instance_to_semantic = tables()
    ids = np.zeros(semantic.shape, np.int64)
    segments = []

    def add(mask, category):
        ids[mask] = len(segments) + 1
        segments.append(
            {
                "id": len(segments) + 1,
                "category_id": int(category),
                "iscrowd": 0,
                "area": int(mask.sum()),
                "bbox": bbox_of(mask),
            }
        )

    for label in np.unique(semantic):
        if label != 0 and not categories[label - 1]["isthing"]:
            add(semantic == label, label)
    for cls, mask in instances:
        add(mask, instance_to_semantic[cls - 1])
    # a thing painted over a stuff segment may leave that segment empty: drop it and recompute areas
    kept = [s for s in segments if (ids == s["id"]).any()]
    for s in kept:
        mask = ids == s["id"]
        s.update(area=int(mask.sum()), bbox=bbox_of(mask))
    return ids, kept


def instance_annotations(instances, image_id, first_id):
    """COCO annotations; category id = the ``id`` of instance class k in ADE20K_INSTANCE_CATEGORIES (its ADE
    semantic label), so the JSON follows that table."""
    instance_table = tables()[1]
    anns = []
    for k, (cls, mask) in enumerate(instances):
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append(
            {
                "id": first_id + k,
                "image_id": image_id,
                "category_id": instance_table[cls - 1]["id"],
                "segmentation": rle,
                "area": int(mask.sum()),
                "bbox": bbox_of(mask),
                "iscrowd": 0,
            }
        )
    return anns


def convert_split(ade, split):
    folder = SPLITS[split]
    pan_json = os.path.join(ade, f"ade20k_panoptic_{split}.json")
    ins_json = os.path.join(ade, f"ade20k_instance_{split}.json")
    if os.path.exists(pan_json) and os.path.exists(ins_json):
        return False
    image_dir, sem_dir, ins_dir = (
        os.path.join(ade, d, folder) for d in ("images", "annotations", "annotations_instance")
    )
    require_dir(image_dir, ADE_URL)
    require_dir(sem_dir, ADE_URL)
    require_dir(ins_dir, INSTANCE_URL)
    images, pan_anns, ins_anns = [], [], []
    files = sorted(glob.glob(os.path.join(image_dir, "*.jpg")))
    for image_id, path in enumerate(tqdm(files, desc=f"ade20k panoptic+instance ({split})", unit="img"), start=1):
        stem = os.path.splitext(os.path.basename(path))[0]
        semantic = np.asarray(Image.open(os.path.join(sem_dir, stem + ".png")))
        instances = instances_of(np.asarray(Image.open(os.path.join(ins_dir, stem + ".png")).convert("RGB")), stem)
        ids, segments = panoptic_of(semantic, instances)
        out_png = os.path.join(ade, f"ade20k_panoptic_{split}", stem + ".png")
        if not os.path.exists(out_png):
            write_png(out_png, id2rgb(ids))
        height, width = semantic.shape
        images.append({"id": image_id, "file_name": stem + ".jpg", "height": height, "width": width})
        pan_anns.append({"image_id": image_id, "file_name": stem + ".png", "segments_info": segments})
        ins_anns += instance_annotations(instances, image_id, len(ins_anns) + 1)
    semantic_table, instance_table, _ = tables()
    categories = [
        {"id": c["id"], "name": c["name"], "color": list(c["color"]), "isthing": c["isthing"]} for c in semantic_table
    ]
    ins_categories = [{"id": c["id"], "name": c["name"]} for c in instance_table]
    write_json(ins_json, {"images": images, "annotations": ins_anns, "categories": ins_categories})
    write_json(pan_json, {"images": images, "annotations": pan_anns, "categories": categories})
    return True


def main(argv=None):
    args = parse_args(argv)
    for split in args.splits:
        done = convert_split(os.path.join(args.root, "ADEChallengeData2016"), split)
        print(f"[prepare_ade20k_pan_ins] {split}: {'written' if done else 'already complete, skipped'}")


if __name__ == "__main__":
    run(main)
