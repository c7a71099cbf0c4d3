#!/usr/bin/env python
"""Check a registered dataset before training: every problem a training or evaluation run would meet later.

    python tools/check_dataset.py NAME [NAME ...] [--register my_registrations.py]

Loads each dataset (DatasetCatalog.get, which validates the registration's files and categories) and reads every
image and annotation file, reporting:
  errors    missing, empty or unreadable images and label files; an image whose size differs from its record
            or its label / panoptic PNG; semantic label values outside [0, K) and the ignore label; panoptic
            segment ids in the PNG that the JSON does not list; category ids outside the metadata; instance
            masks or boxes outside the image; duplicate image file names
  warnings  images with nothing to learn (no segment, no instance, or only ignore pixels); JSON segments with no
            pixel in the PNG; self-intersecting polygons
and prints the class histogram (pixels for semantic labels, segments for panoptic, instances for COCO instances)
and the instance-size histogram (COCO's small < 32^2 <= medium < 96^2 <= large). Exit status 1 when there are
errors, 2 when a dataset cannot be loaded at all, else 0. ``--register FILE`` runs a Python file first (your
``register_*`` calls from universal_seg.data); datasets converted into $DETECTRON2_DATASETS/custom/ are
registered without it.
"""

import argparse
import collections
import difflib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

SIZE_BUCKETS = (("small", 32**2), ("medium", 96**2), ("large", float("inf")))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+", help="registered dataset names")
    from universal_seg.data import add_register_argument

    add_register_argument(p)
    p.add_argument("--max-errors", type=int, default=50, help="print at most this many error lines per dataset")
    return p.parse_args(argv)


def _size_bucket(area):
    return next(name for name, limit in SIZE_BUCKETS if area < limit)


def _read_array(path, what, report, record_file):
    """np.ndarray of an image file (palette indices kept), or None after reporting why."""
    if not path or not os.path.isfile(path):
        report.error(f"{what} '{path}' of '{record_file}' does not exist; re-run the conversion or fix the path.")
        return None
    if os.path.getsize(path) == 0:
        report.error(f"{what} '{path}' is an empty (0-byte) file; re-create it.")
        return None
    try:
        with Image.open(path) as img:
            return np.asarray(img)
    except Exception as err:  # noqa: BLE001 - any decoding failure is reported
        report.error(f"{what} '{path}' cannot be decoded ({type(err).__name__}: {err}); re-create it.")
        return None


class Report:
    def __init__(self, max_errors):
        self.errors, self.warnings = [], collections.Counter()
        self.warning_examples = {}
        self.max_errors = max_errors
        self.pixel_hist = collections.Counter()  # semantic label pixels per class
        self.class_hist = collections.Counter()  # panoptic segments / instances per class
        self.size_hist = collections.Counter()

    def error(self, message):
        self.errors.append(message)

    def warn(self, what, where):
        self.warnings[what] += 1
        self.warning_examples.setdefault(what, []).append(where)


def _check_image(record, report):
    from universal_seg.data.mappers.image_io import read_rgb_image

    path = record["file_name"]
    if not os.path.isfile(path):
        report.error(f"image '{path}' does not exist; put it there or remove its record.")
        return None
    if os.path.getsize(path) == 0:
        report.error(f"image '{path}' is an empty (0-byte) file; copy the image again or remove its record.")
        return None
    try:
        image = read_rgb_image(path)
    except Exception:  # noqa: BLE001 - whatever the reader raises for a broken file
        image = None
    if image is None:
        report.error(f"image '{path}' cannot be decoded (truncated or not an image); copy it again or remove it.")
        return None
    h, w = image.shape[:2]
    if "height" in record and (record["height"], record["width"]) != (h, w):
        report.error(
            f"image '{path}' is {h}x{w} but its annotation says {record['height']}x{record['width']}; "
            "re-annotate it or use the image that was annotated."
        )
    return h, w


def _check_semantic(record, hw, num_classes, ignore, classes, report):
    label = _read_array(record["sem_seg_file_name"], "label", report, record["file_name"])
    if label is None:
        return
    if label.ndim != 2:
        report.error(
            f"label '{record['sem_seg_file_name']}' has {label.shape[2]} channels; a semantic label is one channel "
            "of class values (save it as a grayscale or palette PNG)."
        )
        return
    if hw and label.shape != hw:
        report.error(
            f"label '{record['sem_seg_file_name']}' is {label.shape[0]}x{label.shape[1]} but its image is "
            f"{hw[0]}x{hw[1]}; re-create the label at the image's size."
        )
    values, counts = np.unique(label, return_counts=True)
    bad = [int(v) for v in values if not (0 <= v < num_classes or v == ignore)]
    if bad:
        report.error(
            f"label '{record['sem_seg_file_name']}' has values {bad[:10]} outside [0, {num_classes}) and the ignore "
            f"label {ignore}; map them to a class or to {ignore}."
        )
    valid = {int(v): int(c) for v, c in zip(values, counts) if 0 <= v < num_classes}
    if not valid:
        report.warn("images whose labels are all ignore", os.path.basename(record["file_name"]))
    for v, c in valid.items():
        report.pixel_hist[classes[v]] += c


def _check_panoptic(record, hw, num_classes, classes, report):
    from universal_seg.data.mappers.image_io import read_panoptic

    path = record["pan_seg_file_name"]
    if _read_array(path, "panoptic PNG", report, record["file_name"]) is None:
        return
    ids = read_panoptic(path)
    if hw and ids.shape != hw:
        report.error(
            f"panoptic PNG '{path}' is {ids.shape[0]}x{ids.shape[1]} but its image is {hw[0]}x{hw[1]}; re-create it."
        )
    present, areas = np.unique(ids, return_counts=True)
    area_of = dict(zip(present.tolist(), areas.tolist()))
    listed = {s["id"] for s in record["segments_info"]}
    unlisted = sorted(int(i) for i in present if i != 0 and i not in listed)
    if unlisted:
        report.error(
            f"panoptic PNG '{path}' has segment ids {unlisted[:10]} that its JSON entry does not list; add them to "
            "segments_info or paint those pixels 0 (void)."
        )
    if not record["segments_info"]:
        report.warn("images with no segment", os.path.basename(record["file_name"]))
    for s in record["segments_info"]:
        if not 0 <= s["category_id"] < num_classes:
            report.error(f"'{path}': segment {s['id']} has class {s['category_id']} outside the metadata's classes.")
            continue
        if s["id"] not in area_of:
            report.warn("JSON segments with no pixel in the PNG", f"{os.path.basename(path)}:{s['id']}")
            continue
        report.class_hist[classes[s["category_id"]]] += 1
        if s.get("isthing"):
            report.size_hist[_size_bucket(area_of[s["id"]])] += 1


def _check_instances(record, hw, thing_classes, report):
    from pycocotools import mask as mask_util

    anns = record.get("annotations", [])
    if not anns:
        report.warn("images with no instance", os.path.basename(record["file_name"]))
    h, w = hw if hw else (record.get("height"), record.get("width"))
    for i, ann in enumerate(anns):
        where = f"'{record['file_name']}' annotation {i}"
        c = ann["category_id"]
        if not 0 <= c < len(thing_classes):
            report.error(f"{where} has class {c} outside the metadata's {len(thing_classes)} thing classes.")
            continue
        x, y, bw, bh = ann["bbox"]
        if h is not None and (x < -1 or y < -1 or x + bw > w + 1 or y + bh > h + 1):
            report.error(f"{where}: box {ann['bbox']} lies outside the {h}x{w} image; fix the annotation.")
        seg = ann.get("segmentation")
        if isinstance(seg, list):
            points = np.concatenate([np.asarray(p, np.float64) for p in seg]) if seg else np.zeros(0)
            if len(points) and h is not None:
                xs, ys = points[0::2], points[1::2]
                if xs.min() < -1 or ys.min() < -1 or xs.max() > w + 1 or ys.max() > h + 1:
                    report.error(f"{where}: polygon points lie outside the {h}x{w} image; fix the annotation.")
            if any(len(p) < 6 for p in seg):
                report.error(f"{where}: a polygon has fewer than 3 points; delete or redraw it.")
                continue
            rles = mask_util.frPyObjects(seg, h, w) if h is not None else []
            area = float(mask_util.area(mask_util.merge(rles))) if rles else 0.0
        elif isinstance(seg, dict):
            if h is not None and list(seg["size"]) != [h, w]:
                report.error(f"{where}: its RLE mask is {seg['size']} but the image is {[h, w]}; re-encode it.")
            rle = mask_util.frPyObjects(seg, *seg["size"]) if isinstance(seg["counts"], list) else seg
            area = float(mask_util.area(rle))
        else:
            area = float(ann.get("area", bw * bh))
        if area == 0:
            report.warn("instances with an empty mask", where)
        report.class_hist[thing_classes[c]] += 1
        report.size_hist[_size_bucket(area)] += 1


def _check_raw_polygons(json_file, report):
    """Polygons detectron2's reader drops without an error (fewer than 3 points), from the JSON itself."""
    import json

    from universal_seg.data.datasets.geometry import polygon_crosses

    with open(json_file) as f:
        data = json.load(f)
    files = {img["id"]: img.get("file_name") for img in data.get("images", [])}
    for ann in data.get("annotations", []):
        seg = ann.get("segmentation")
        if not isinstance(seg, list):
            continue
        where = f"'{json_file}': annotation {ann.get('id')} of image '{files.get(ann.get('image_id'))}'"
        if any(len(p) < 6 or len(p) % 2 for p in seg):
            report.error(
                f"{where} has a polygon with fewer than 3 points (the loader would drop it); delete or redraw it."
            )
        elif any(polygon_crosses(np.reshape(p, (-1, 2))) for p in seg):
            report.warn("self-intersecting polygons (filled by pycocotools' rule; redraw them to be sure)", where)


def check(name, max_errors=50):
    """Report of dataset ``name`` (see the module docstring); raises what DatasetCatalog.get raises."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    records = DatasetCatalog.get(name)
    meta = MetadataCatalog.get(name)
    report = Report(max_errors)
    classes = list(meta.get("stuff_classes", None) or meta.get("thing_classes", None) or [])
    thing_classes = list(meta.get("thing_classes", None) or [])
    ignore = meta.get("ignore_label", 255)
    seen = {}
    if meta.get("evaluator_type", None) == "coco" and meta.get("json_file", None):
        _check_raw_polygons(meta.json_file, report)
    for record in records:
        base = os.path.basename(record["file_name"])
        if base in seen and seen[base] != record["file_name"]:
            report.error(f"images '{seen[base]}' and '{record['file_name']}' have the same file name; rename one.")
        seen[base] = record["file_name"]
        hw = _check_image(record, report)
        if "sem_seg_file_name" in record:
            _check_semantic(record, hw, len(classes), ignore, classes, report)
        if "pan_seg_file_name" in record:
            _check_panoptic(record, hw, len(classes), classes, report)
        elif "annotations" in record:
            _check_instances(record, hw, thing_classes, report)
    return records, report


def print_report(name, records, report):
    print(f"== {name}: {len(records)} images, {len(report.errors)} errors, {sum(report.warnings.values())} warnings")
    for message in report.errors[: report.max_errors]:
        print(f"error: {message}")
    if len(report.errors) > report.max_errors:
        print(f"error: ... and {len(report.errors) - report.max_errors} more")
    for what, count in sorted(report.warnings.items()):
        examples = ", ".join(report.warning_examples[what][:5])
        print(f"warning: {count} {what} (e.g. {examples})")
    for title, hist in (("pixels", report.pixel_hist), ("segments / instances", report.class_hist)):
        total = sum(hist.values())
        if total:
            print(f"class histogram ({title}):")
            for cls, count in hist.most_common():
                print(f"  {cls:<24} {count:>12}  {100.0 * count / total:6.2f}%")
    if report.size_hist:
        print("instance sizes: " + ", ".join(f"{k} {report.size_hist[k]}" for k, _ in SIZE_BUCKETS))


def main(argv=None):
    args = parse_args(argv)
    from universal_seg.data import run_registration_files  # (importing it registers the built-in datasets)

    try:
        run_registration_files(args.register)
    except ValueError as err:
        print(f"error: {err}")
        return 2
    status = 0
    from detectron2.data import DatasetCatalog

    for name in args.names:
        if name not in DatasetCatalog.list():
            close = difflib.get_close_matches(name, DatasetCatalog.list(), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            print(f"error: dataset '{name}' is not registered; {hint}register it (--register FILE) or check the name.")
            status = 2
            continue
        try:
            records, report = check(name, args.max_errors)
        except (OSError, ValueError, KeyError) as err:
            print(f"error: dataset '{name}' cannot be loaded: {err}")
            status = 2
            continue
        print_report(name, records, report)
        if report.errors:
            status = max(status, 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
