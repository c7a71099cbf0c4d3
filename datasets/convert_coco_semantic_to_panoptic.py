#!/usr/bin/env python
"""Combine COCO instance annotations (things) with semantic label PNGs (stuff) into a registered COCO-panoptic
dataset, e.g. detection-style instance polygons plus a stuff labelling of the same images.

Input:
  --instances FILE     COCO instance JSON (polygons, RLE or uncompressed RLE); its categories are the things
  --images DIR         the images its "file_name"s name
  --semantic DIR       <image stem>.png per image, label value = line number (from 0) in --semantic-classes
  --semantic-classes   one class name per line; a name equal to a thing category's name is that thing (its
                       semantic pixels count only through the instances), every other class is stuff
  --ignore-label       void value of the semantic PNGs (default 255)
Output (OUTPUT/, registered by `import universal_seg.data` when OUTPUT is $DETECTRON2_DATASETS/custom/NAME;
images referenced where they are):
  categories: the things (JSON order), then the stuff classes (file order); category id = position + 1 and
  semantic value = position
  panoptic/<stem>.png, panoptic_{train,val}.json   stuff segments (one per stuff class present) from the semantic
                                                   PNG, then every instance painted over them, largest first (a
                                                   smaller instance stays visible on a larger one); crowd
                                                   instances become iscrowd segments; pixels of thing classes in the
                                                   semantic PNG that no instance covers are void
  semantic/<stem>.png                              the combined label map (things and stuff), 255 void
  instances_{train,val}.json                       the input instances with the new category ids and image ids
  dataset.json                                     NAME_panoptic_<split>[_with_sem_seg], NAME_instance_<split>,
                                                   NAME_sem_seg_<split>
Held out: --val stems or every --val-every-th image.

Bad input: a missing, empty or truncated image or semantic PNG, a size that differs between the image, its JSON
record and its PNG, a semantic value outside the classes and the ignore label, an annotation whose category is
not in the JSON, duplicate image file names: one line each naming the file and the fix, then exit 1 without
writing dataset.json. Polygons with fewer than 3 points and instances hidden by smaller ones are skipped and
counted. Restartable: files are written atomically, dataset.json removed first and written last.
"""

import argparse
import copy
import json
import os
import sys

import numpy as np
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from _atomic import id2rgb, write_png  # noqa: E402
from _convert import (  # noqa: E402
    IGNORE,
    ConversionError,
    Problems,
    pick_splits,
    read_class_names,
    read_image_checked,
    remove_manifest,
    segments_of,
    write_outputs,
)
from convert_semantic_to_panoptic import read_label_checked  # noqa: E402

TAG = "convert_coco_semantic_to_panoptic"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", help="output dataset folder, e.g. datasets/custom/site")
    p.add_argument("--instances", required=True, help="COCO instance JSON (the things)")
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--semantic", required=True, help="semantic label PNG folder (<image stem>.png)")
    p.add_argument("--semantic-classes", required=True, help="names of the semantic label values, one per line")
    p.add_argument("--ignore-label", type=int, default=255, help="void value of the semantic PNGs (default 255)")
    p.add_argument("--name", help="dataset name prefix (default: the output folder's name)")
    p.add_argument("--val", default="", help="comma-separated image stems held out as the val split")
    p.add_argument("--val-every", type=int, default=0, help="hold out every N-th image (name order)")
    return p.parse_args(argv)


def instance_mask(ann, h, w):
    """bool [h, w] of a COCO annotation (polygons, RLE or uncompressed RLE), or None for a < 3-point polygon."""
    from pycocotools import mask as mask_util

    seg = ann["segmentation"]
    if isinstance(seg, list):
        if not seg or any(len(p) < 6 for p in seg):
            return None
        rle = mask_util.merge(mask_util.frPyObjects(seg, h, w))
    elif isinstance(seg["counts"], list):
        rle = mask_util.frPyObjects(seg, h, w)
    else:
        rle = seg
    return mask_util.decode(rle).astype(bool)


def main(argv=None):
    args = parse_args(argv)
    with open(args.instances) as f:
        coco = json.load(f)
    sem_names = read_class_names(args.semantic_classes, TAG)
    things = coco.get("categories", [])
    thing_names = [c["name"] for c in things]
    stuff_names = [n for n in sem_names if n not in thing_names]
    categories = [{"id": i + 1, "name": n, "isthing": 1, "supercategory": ""} for i, n in enumerate(thing_names)]
    categories += [
        {"id": len(thing_names) + i + 1, "name": n, "isthing": 0, "supercategory": ""}
        for i, n in enumerate(stuff_names)
    ]
    value_of_thing_id = {c["id"]: i for i, c in enumerate(things)}  # input thing category id -> new value
    # semantic input value -> new value (stuff) or -1 (a thing class: void unless an instance covers it)
    sem_map = np.full(max(len(sem_names), 1), -1, np.int64)
    for v, n in enumerate(sem_names):
        sem_map[v] = -1 if n in thing_names else len(thing_names) + stuff_names.index(n)
    problems = Problems()
    anns_of = {}
    for ann in coco.get("annotations", []):
        if ann["category_id"] not in value_of_thing_id:
            problems.error(
                f"'{args.instances}': annotation {ann.get('id')} has category id {ann['category_id']}, which is not "
                "in its 'categories'; add the category or fix the annotation."
            )
        anns_of.setdefault(ann["image_id"], []).append(ann)
    seen, records = {}, []
    for img in coco.get("images", []):
        base = os.path.basename(img["file_name"])
        if base in seen:
            problems.error(
                f"'{args.instances}': images {seen[base]} and {img['id']} are both named '{base}'; rename one."
            )
            continue
        seen[base] = img["id"]
        records.append(img)
    stems = [os.path.splitext(os.path.basename(r["file_name"]))[0] for r in records]
    try:
        split = pick_splits(stems, args.val.split(",") if args.val else [], args.val_every)
    except ConversionError as err:
        sys.exit(f"[{TAG}] error: {err}")
    out = os.path.abspath(args.output)
    remove_manifest(out)
    images, pan_annotations, instances, split_of = [], [], [], {}
    for img, stem in zip(tqdm(records, desc=TAG, unit="image"), stems):
        image_path = os.path.join(args.images, os.path.basename(img["file_name"]))
        try:
            hw = (img["height"], img["width"]) if "height" in img else None
            image = read_image_checked(image_path, hw)
            h, w = image.shape[:2]
            label = read_label_checked(
                os.path.join(args.semantic, stem + ".png"), (h, w), len(sem_names), args.ignore_label
            )
        except ConversionError as err:
            problems.error(str(err))
            continue
        valid = label != args.ignore_label
        semantic = np.full((h, w), IGNORE, np.int64)
        semantic[valid] = sem_map[label[valid]]
        semantic[semantic < 0] = IGNORE
        ids = np.zeros((h, w), np.int32)
        segment_class, crowd = {}, set()
        for value in sorted(int(v) for v in np.unique(semantic) if v != IGNORE):
            sid = len(segment_class) + 1
            ids[semantic == value] = sid
            segment_class[sid] = value + 1
        masks = []
        for ann in anns_of.get(img["id"], []):
            if ann["category_id"] not in value_of_thing_id:
                continue
            mask = instance_mask(ann, h, w)
            if mask is None:
                problems.skip("polygons with fewer than 3 points", f"{base_of(img)}:{ann.get('id')}")
                continue
            masks.append((int(mask.sum()), mask, ann))
        for _, mask, ann in sorted(masks, key=lambda m: -m[0]):  # largest first: smaller ones stay on top
            sid = len(segment_class) + 1
            value = value_of_thing_id[ann["category_id"]]
            ids[mask] = sid
            semantic[mask] = value
            segment_class[sid] = value + 1
            if ann.get("iscrowd", 0):
                crowd.add(sid)
            out_ann = copy.deepcopy(ann)
            out_ann.update(id=len(instances) + 1, image_id=len(images) + 1, category_id=value + 1)
            instances.append(out_ann)
        hidden = [sid for sid in segment_class if not (ids == sid).any()]
        for sid in hidden:
            problems.skip("instances hidden by smaller ones", f"{base_of(img)}:segment {sid}")
        segments = segments_of(ids, segment_class)
        for s in segments:
            s["iscrowd"] = int(s["id"] in crowd)
        write_png(os.path.join(out, "panoptic", stem + ".png"), id2rgb(ids))
        write_png(os.path.join(out, "semantic", stem + ".png"), semantic.astype(np.uint8))
        images.append({"id": len(images) + 1, "file_name": os.path.basename(img["file_name"]), "height": h, "width": w})
        pan_annotations.append({"image_id": images[-1]["id"], "file_name": stem + ".png", "segments_info": segments})
        split_of[images[-1]["file_name"]] = split[stem]
    status = problems.report(TAG)
    if status:
        return status
    manifest = write_outputs(
        out,
        args.name or os.path.basename(out.rstrip("/")),
        categories,
        images,
        pan_annotations,
        instances,
        split_of,
        image_dir=os.path.abspath(args.images),
    )
    print(f"[{TAG}] wrote {out}: {len(images)} images, {len(instances)} instances, splits {sorted(manifest['splits'])}")
    return 0


def base_of(img):
    return os.path.basename(img["file_name"])


if __name__ == "__main__":
    sys.exit(main())
