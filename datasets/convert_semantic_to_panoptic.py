#!/usr/bin/env python
"""Convert a semantic-segmentation dataset (images + label PNGs) into a registered COCO-panoptic dataset.

Input: IMAGES/<stem>.<ext> and LABELS/<stem>.png, label value = line number (from 0) of the class in --classes
(one name per line, each once), --ignore-label (default 255) = void.
Output (OUTPUT/, registered by `import universal_seg.data` when OUTPUT is $DETECTRON2_DATASETS/custom/NAME; the
images and label PNGs stay where they are and are referenced by absolute path):
  panoptic/<stem>.png, panoptic_{train,val}.json   COCO panoptic, category id = label value + 1
  instances_{train,val}.json                       with --connected-components only: one COCO instance (RLE) per
                                                   component of a thing class
  dataset.json                                     NAME_panoptic_<split>[_with_sem_seg], NAME_sem_seg_<split>
                                                   (and NAME_instance_<split> with --connected-components)
Every stuff class present in an image becomes one segment. A thing class (--things) becomes one segment per image
by default (a semantic label does not separate touching objects), or with --connected-components one segment
per 8-connected component. Held out: --val stems or every --val-every-th image.

Bad input: one line each naming the file and the fix, then exit 1 without writing dataset.json. Two images with the
same name (stem) and an image without a label (or the reverse) stop the run before anything is written; the other
problems (an unreadable, empty or truncated image or label, a label of another size than its image, a label value
outside [0, K) and the ignore label) are reported for every file. Restartable: files are written atomically,
dataset.json removed first and written last.
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from _atomic import id2rgb, write_png  # noqa: E402
from _convert import (  # noqa: E402
    ConversionError,
    Problems,
    instance_annotation,
    pick_splits,
    read_class_names,
    read_image_checked,
    remove_manifest,
    segments_of,
    write_outputs,
)

TAG = "convert_semantic_to_panoptic"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", help="image folder")
    p.add_argument("labels", help="label PNG folder (same stems as the images)")
    p.add_argument("output", help="output dataset folder, e.g. datasets/custom/roads")
    p.add_argument("--classes", required=True, help="class names, one per line, in label-value order")
    p.add_argument("--things", default="", help="comma-separated thing classes (default: none, all stuff)")
    p.add_argument("--connected-components", action="store_true", help="one thing segment per component")
    p.add_argument("--ignore-label", type=int, default=255, help="void label value (default 255)")
    p.add_argument("--name", help="dataset name prefix (default: the output folder's name)")
    p.add_argument("--val", default="", help="comma-separated image stems held out as the val split")
    p.add_argument("--val-every", type=int, default=0, help="hold out every N-th image (name order)")
    return p.parse_args(argv)


def read_label_checked(path, hw, num_classes, ignore):
    """int [H, W] label values of ``path``; ConversionError naming the file for every problem."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise ConversionError(f"label '{path}' is missing or empty; re-create it.")
    try:
        with Image.open(path) as img:
            label = np.asarray(img).astype(np.int64)
    except Exception as err:  # noqa: BLE001 - any decoding failure is reported
        raise ConversionError(f"label '{path}' cannot be decoded ({type(err).__name__}); re-create it.") from None
    if label.ndim != 2:
        raise ConversionError(f"label '{path}' has several channels; save class values as a one-channel PNG.")
    if label.shape != tuple(hw):
        raise ConversionError(
            f"label '{path}' is {label.shape[0]}x{label.shape[1]} but its image is {hw[0]}x{hw[1]}; re-create it "
            "at the image's size."
        )
    bad = sorted(int(v) for v in np.unique(label) if not (0 <= v < num_classes or v == ignore))
    if bad:
        raise ConversionError(
            f"label '{path}' has values {bad[:10]} outside [0, {num_classes}) and the ignore label {ignore}; add "
            "classes to --classes or map those values to the ignore label."
        )
    return label


def panoptic_of_semantic(label, isthing, ignore, connected_components):
    """(segment ids int32 [H, W], {segment id: category id}, [(bool [H, W] instance, category id)])."""
    from scipy import ndimage

    ids = np.zeros(label.shape, np.int32)
    segment_class, instances = {}, []
    for value in sorted(int(v) for v in np.unique(label) if v != ignore):
        mask = label == value
        if isthing[value] and connected_components:
            components, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
            parts = [components == k for k in range(1, n + 1)]
        else:
            parts = [mask]
        for part in parts:
            sid = len(segment_class) + 1
            ids[part] = sid
            segment_class[sid] = value + 1
            if isthing[value] and connected_components:
                instances.append((part, value + 1))
    return ids, segment_class, instances


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.classes):
        sys.exit(
            f"[{TAG}] error: --classes '{args.classes}' does not exist; give a text file with one class name per line."
        )
    names = read_class_names(args.classes, TAG)
    things = [t for t in args.things.split(",") if t]
    unknown = sorted(set(things) - set(names))
    if unknown or not names:
        sys.exit(f"[{TAG}] error: --things names {unknown} not in '{args.classes}' (or it lists no class); fix it.")
    categories = [
        {"id": i + 1, "name": n, "isthing": int(n in things), "supercategory": ""} for i, n in enumerate(names)
    ]
    isthing = [c["isthing"] for c in categories]
    problems = Problems()
    images = {}
    for f in sorted(os.listdir(args.images)):
        if not f.lower().endswith(IMAGE_EXTS):
            continue
        stem = os.path.splitext(f)[0]
        if stem in images:  # an image is paired with its label by stem: LABELS/<stem>.png
            problems.error(
                f"'{images[stem]}' and '{f}' in '{args.images}' have the same name '{stem}' (both would pair with "
                f"label '{stem}.png'); rename or remove one of them."
            )
            continue
        images[stem] = f
    labels = {os.path.splitext(f)[0] for f in os.listdir(args.labels) if f.endswith(".png")}
    for stem in sorted(set(images) ^ labels):
        where = args.images if stem in images else args.labels
        problems.error(f"'{stem}' in '{where}' has no counterpart in the other folder; pair every image with a label.")
    stems = sorted(set(images) & labels)
    if not stems and not problems.errors:
        problems.error(f"'{args.images}' and '{args.labels}' share no file stem; check the two folders.")
    if problems.errors:  # the folders do not pair up: stop before anything is read or written
        return problems.report(TAG)
    try:
        split = pick_splits(stems, args.val.split(",") if args.val else [], args.val_every)
    except ConversionError as err:
        sys.exit(f"[{TAG}] error: {err}")
    out = os.path.abspath(args.output)
    remove_manifest(out)
    records, pan_annotations, instances, split_of = [], [], [], {}
    for image_id, stem in enumerate(tqdm(stems, desc=TAG, unit="image"), 1):
        try:
            image = read_image_checked(os.path.join(args.images, images[stem]))
            label = read_label_checked(
                os.path.join(args.labels, stem + ".png"), image.shape[:2], len(names), args.ignore_label
            )
        except ConversionError as err:
            problems.error(str(err))
            continue
        ids, segment_class, things_of = panoptic_of_semantic(
            label, isthing, args.ignore_label, args.connected_components
        )
        write_png(os.path.join(out, "panoptic", stem + ".png"), id2rgb(ids))
        h, w = label.shape
        records.append({"id": image_id, "file_name": images[stem], "height": h, "width": w})
        pan_annotations.append(
            {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments_of(ids, segment_class)}
        )
        for mask, category_id in things_of:
            instances.append(instance_annotation(mask, category_id, image_id, len(instances) + 1))
        split_of[images[stem]] = split[stem]
    status = problems.report(TAG)
    if status:
        return status
    manifest = write_outputs(
        out,
        args.name or os.path.basename(out.rstrip("/")),
        categories,
        records,
        pan_annotations,
        instances if args.connected_components and things else None,
        split_of,
        ignore_label=args.ignore_label,
        image_dir=os.path.abspath(args.images),
        semantic_dir=os.path.abspath(args.labels),
    )
    print(f"[{TAG}] wrote {out}: {len(records)} images, splits {sorted(manifest['splits'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
