#!/usr/bin/env python
"""Convert a folder of labelme annotations into a registered universal_seg dataset (COCO instance JSON, COCO
panoptic PNG + JSON and semantic label PNGs, split into train / val).

Input: INPUT/**/*.json, labelme files (any version >= 3) whose "imagePath" (relative to the JSON) names the image,
or whose "imageData" embeds it; --labels FILE lists the classes, one per line, as labelme's labels.txt:
  __ignore__      optional: shapes with this label are void (ignore: not trained on, not evaluated)
  _background_    optional: pixels no shape covers are this class ("background", a stuff class); without it
                  they are void
  car, ...        the classes, in this order (semantic label value = line number among the classes, from 0;
                  COCO / panoptic category id = that value + 1); things unless listed in --stuff; each name
                  once (a name listed twice, "background" included, is refused naming its lines)
Shapes: polygon (>= 3 points), rectangle (2 corners), circle (centre + a point on the circle) and mask (labelme 5
bitmap) are painted in file order (a later shape covers an earlier one, as labelme's own export). Shapes with the
same label and the same group_id form one instance; without a group_id every shape is its own instance. All shapes
of a stuff class form one segment per image. line, linestrip and point shapes have no area: skipped, counted.

Output (OUTPUT/, registered by `import universal_seg.data` when OUTPUT is $DETECTRON2_DATASETS/custom/NAME):
  images/<image file>                  the images, unchanged
  panoptic/<stem>.png, panoptic_{train,val}.json    COCO panoptic (segment id = R + 256 G + 256^2 B, 0 void)
  semantic/<stem>.png                  label values 0..K-1, 255 = void / __ignore__
  instances_{train,val}.json           COCO instances (RLE of each thing's visible pixels, iscrowd 0)
  dataset.json                         the manifest: NAME_panoptic_<split>[_with_sem_seg], NAME_instance_<split>,
                                       NAME_sem_seg_<split>
Held out (val): the images whose stems --val lists, or every --val-every-th image in name order; the rest is train.

Bad input: every file is examined and each problem printed as one line naming the file and the fix. A JSON file
that is not a labelme file, and two annotations of images with the same file name or the same stem (their label
PNGs would be one file), stop the run before anything is written; an unreadable, empty or truncated image, an image
whose size differs from the JSON's imageHeight / imageWidth or a label not in --labels make the script exit 1
without writing dataset.json. Polygons with fewer than 3 points or that cross themselves, and shapes without area,
are skipped and counted at the end. Restartable: every file is written atomically; dataset.json is removed first
and written last, so an interrupted run leaves an unregistered folder that the next run completes.
"""

import argparse
import base64
import glob
import io
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from _atomic import id2rgb, write_bytes, write_png  # noqa: E402
from _convert import (  # noqa: E402
    IGNORE,
    ConversionError,
    Problems,
    instance_annotation,
    pick_splits,
    read_class_lines,
    read_image_checked,
    refuse_duplicate_names,
    remove_manifest,
    segments_of,
    write_outputs,
)

TAG = "convert_labelme"
AREA_SHAPES = ("polygon", "rectangle", "circle", "mask")
NO_AREA_SHAPES = ("line", "linestrip", "point", "points")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="folder of labelme JSON files (searched recursively)")
    p.add_argument("output", help="output dataset folder, e.g. datasets/custom/street")
    p.add_argument("--labels", required=True, help="class list, one per line (labelme's labels.txt)")
    p.add_argument("--stuff", default="", help="comma-separated classes that are stuff (default: none)")
    p.add_argument("--name", help="dataset name prefix (default: the output folder's name)")
    p.add_argument("--val", default="", help="comma-separated image stems held out as the val split")
    p.add_argument("--val-every", type=int, default=0, help="hold out every N-th image (name order)")
    p.add_argument(
        "--self-intersecting",
        choices=("skip", "paint"),
        default="skip",
        help="polygons that cross themselves: skip them (counted; default) or paint them as drawn (PIL's fill, "
        "as labelme's own export does; counted)",
    )
    return p.parse_args(argv)


def read_classes(path, stuff):
    """(categories, {label: value}, background value or None) from a labels.txt (see the module docstring)."""
    numbered = [(number, n) for number, n in read_class_lines(path) if n != "__ignore__"]
    names = [n for _, n in numbered]
    if not names:
        raise ConversionError(f"'{path}' lists no classes; write one class name per line.")
    if len(names) > 254:
        raise ConversionError(f"'{path}' lists {len(names)} classes; semantic PNGs hold at most 254 (255 is void).")
    refuse_duplicate_names(path, [(number, "background" if n == "_background_" else n) for number, n in numbered])
    unknown = sorted(set(stuff) - set(names) - {"background"})
    if unknown:
        raise ConversionError(f"--stuff names {unknown}, which are not in '{path}'; use names from that file.")
    categories, value = [], {}
    for i, label in enumerate(names):
        name = "background" if label == "_background_" else label
        isthing = int(label != "_background_" and name not in stuff)
        categories.append({"id": i + 1, "name": name, "isthing": isthing, "supercategory": "labelme"})
        value[label] = i
    return categories, value, value.get("_background_")


def rasterise(shape, height, width, self_intersecting="skip", problems=None, where=""):
    """bool [H, W] of one area shape, or a str saying why it is skipped."""
    kind = shape.get("shape_type") or "polygon"
    points = [tuple(float(v) for v in pt) for pt in shape.get("points", [])]
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "polygon":
        if len(points) < 3:
            return "polygons with fewer than 3 points"
        from universal_seg.data.datasets.geometry import polygon_crosses

        if polygon_crosses(points):
            if self_intersecting == "skip":
                return "self-intersecting polygons (redraw them, or pass --self-intersecting paint)"
            problems.note("self-intersecting polygons painted as drawn (check them)", where)
        draw.polygon(points, outline=1, fill=1)
    elif kind == "rectangle":
        if len(points) != 2:
            return "rectangles without exactly 2 corners"
        (x0, y0), (x1, y1) = points
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=1, fill=1)
    elif kind == "circle":
        if len(points) != 2:
            return "circles without a centre and a point"
        (cx, cy), (px, py) = points
        r = float(np.hypot(px - cx, py - cy))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
    elif kind == "mask":
        if not shape.get("mask") or len(points) < 1:
            return "mask shapes without a bitmap"
        bitmap = np.asarray(Image.open(io.BytesIO(base64.b64decode(shape["mask"])))).astype(bool)
        x0, y0 = (int(round(v)) for v in points[0])
        out = np.zeros((height, width), bool)
        h, w = bitmap[: max(0, height - y0), : max(0, width - x0)].shape
        out[y0 : y0 + h, x0 : x0 + w] = bitmap[:h, :w]
        return out
    elif kind in NO_AREA_SHAPES:
        return f"{kind} shapes (no area)"
    else:
        return f"shapes of unknown type '{kind}'"
    return np.asarray(canvas, dtype=bool)


def convert_one(json_path, image_path, classes, background, isthing, problems, self_intersecting="skip"):
    """(semantic uint8 [H, W], panoptic ids int [H, W], {segment id: category id}, [(instance mask, category id)])
    of one labelme file; raises ConversionError for problems that stop the conversion."""
    with open(json_path) as f:
        ann = json.load(f)
    height, width = int(ann["imageHeight"]), int(ann["imageWidth"])
    read_image_checked(image_path, (height, width))
    semantic = np.full((height, width), IGNORE if background is None else background, np.uint8)
    instance = np.zeros((height, width), np.int32)
    instances = {}  # (label, group_id or shape index) -> (instance number, value)
    for i, shape in enumerate(ann.get("shapes", [])):
        label = shape["label"]
        if label != "__ignore__" and label not in classes:
            raise ConversionError(
                f"'{json_path}': shape {i} has label '{label}', which is not in --labels; add it to the labels "
                "file or correct the label in labelme."
            )
        where = f"{os.path.basename(json_path)}#{i}"
        mask = rasterise(shape, height, width, self_intersecting, problems, where)
        if isinstance(mask, str):
            problems.skip(mask, where)
            continue
        value = IGNORE if label == "__ignore__" else classes[label]
        semantic[mask] = value
        if value != IGNORE and isthing[value]:
            key = (label, shape["group_id"] if shape.get("group_id") is not None else f"shape{i}")
            number = instances.setdefault(key, (len(instances) + 1, value))[0]
            instance[mask] = number
        else:
            instance[mask] = 0
    panoptic, segment_class, things = np.zeros((height, width), np.int32), {}, []
    for value in sorted(int(v) for v in np.unique(semantic) if v != IGNORE and not isthing[v]):
        sid = len(segment_class) + 1
        panoptic[semantic == value] = sid
        segment_class[sid] = value + 1
    for key, (number, value) in instances.items():
        mask = instance == number
        if not mask.any():
            problems.skip("instances hidden by later shapes", f"{os.path.basename(json_path)}:{key[0]}")
            continue
        sid = len(segment_class) + 1
        panoptic[mask] = sid
        segment_class[sid] = value + 1
        things.append((mask, value + 1))
    return semantic, panoptic, segment_class, things


def find_inputs(input_dir, problems):
    """[(json path, image path, output image name, imageData)], one per labelme file, with duplicate image names
    and stems refused."""
    out, seen = [], {}
    for json_path in sorted(glob.glob(os.path.join(input_dir, "**", "*.json"), recursive=True)):
        try:
            with open(json_path) as f:
                ann = json.load(f)
            image_name = os.path.basename(ann["imagePath"].replace("\\", "/"))
            if not {"imageHeight", "imageWidth", "shapes"} <= set(ann):
                raise KeyError("imageHeight, imageWidth and shapes are required")
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError, AttributeError) as err:
            problems.error(f"'{json_path}' is not a labelme file ({type(err).__name__}: {err}); fix or remove it.")
            continue
        stem = os.path.splitext(image_name)[0]
        if stem in seen:  # the label PNGs are named by stem: panoptic/<stem>.png, semantic/<stem>.png
            other_json, other_name = seen[stem]
            if other_name == image_name:
                problems.error(
                    f"'{json_path}' and '{other_json}' both annotate an image named '{image_name}'; rename one "
                    "image (and its imagePath) so that every image name is unique."
                )
            else:
                problems.error(
                    f"'{json_path}' (image '{image_name}') and '{other_json}' (image '{other_name}') would both write "
                    f"the label files panoptic/{stem}.png and semantic/{stem}.png; rename one image (and its "
                    "imagePath) so that every image stem is unique."
                )
            continue
        seen[stem] = (json_path, image_name)
        image_path = os.path.join(os.path.dirname(json_path), ann["imagePath"].replace("\\", "/"))
        out.append((json_path, image_path, image_name, ann.get("imageData")))
    if not out and not problems.errors:
        problems.error(f"'{input_dir}' holds no labelme *.json files; point INPUT at the annotation folder.")
    return out


def main(argv=None):
    args = parse_args(argv)
    problems = Problems()
    out = os.path.abspath(args.output)
    name = args.name or os.path.basename(out.rstrip("/"))
    stuff = [s for s in args.stuff.split(",") if s]
    try:
        categories, classes, background = read_classes(args.labels, stuff)
    except (ConversionError, OSError) as err:
        sys.exit(f"[{TAG}] error: {err}")
    isthing = {value: categories[value]["isthing"] for value in classes.values()}
    inputs = find_inputs(args.input, problems)
    if problems.errors:  # files that are no labelme file or name clashes: stop before anything is written
        return problems.report(TAG)
    try:
        split = pick_splits(
            [os.path.splitext(n)[0] for _, _, n, _ in inputs], args.val.split(",") if args.val else [], args.val_every
        )
    except ConversionError as err:
        sys.exit(f"[{TAG}] error: {err}")
    remove_manifest(out)
    images, pan_annotations, instances, split_of = [], [], [], {}
    for image_id, (json_path, image_path, image_name, image_data) in enumerate(tqdm(inputs, desc=TAG, unit="image"), 1):
        stem = os.path.splitext(image_name)[0]
        target = os.path.join(out, "images", image_name)
        try:
            if os.path.isfile(image_path):
                with open(image_path, "rb") as f:
                    data = f.read()
            elif image_data:
                data = base64.b64decode(image_data)
                image_path = target
                write_bytes(target, data)
            else:
                raise ConversionError(
                    f"'{json_path}' names image '{image_path}', which does not exist, and embeds no imageData; put "
                    "the image next to the JSON or fix imagePath."
                )
            semantic, panoptic, segment_class, things = convert_one(
                json_path, image_path, classes, background, isthing, problems, args.self_intersecting
            )
        except ConversionError as err:
            problems.error(str(err))
            continue
        if image_path != target:
            write_bytes(target, data)
        write_png(os.path.join(out, "panoptic", stem + ".png"), id2rgb(panoptic))
        write_png(os.path.join(out, "semantic", stem + ".png"), semantic)
        height, width = semantic.shape
        images.append({"id": image_id, "file_name": image_name, "height": height, "width": width})
        pan_annotations.append(
            {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments_of(panoptic, segment_class)}
        )
        for mask, category_id in things:
            instances.append(instance_annotation(mask, category_id, image_id, len(instances) + 1))
        split_of[image_name] = split[stem]
    status = problems.report(TAG)
    if status:
        return status
    manifest = write_outputs(
        out, name, categories, images, pan_annotations, instances if any(isthing.values()) else None, split_of
    )
    counts = {s: sum(v == s for v in split_of.values()) for s in manifest["splits"]}
    print(f"[{TAG}] wrote {out}: {len(images)} images {counts}, {len(instances)} instances; datasets {name}_*")
    return 0


if __name__ == "__main__":
    sys.exit(main())
