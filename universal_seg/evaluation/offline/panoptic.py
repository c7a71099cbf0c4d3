"""Panoptic evaluation (PQ, SQ, RQ for all/things/stuff) with panopticapi's rules (computed by
:func:`universal_seg.evaluation.panoptic_quality.pq_compute`, in parallel processes), and PQ of semantic predictions.

``pq-from-semantic`` definition: in each semantic prediction every class present becomes ONE segment (all its
pixels, stuff-style, whatever the class), and PQ is computed against the panoptic ground truth with panopticapi.
Stuff PQ is thus directly comparable; thing PQ is penalised whenever an image has several instances of a class.
"""

import json
import os
import tempfile

import numpy as np
from PIL import Image

from ..panoptic_quality import pq_compute
from .errors import PredictionFileError, check_ids, load_json, read_png


def _annotations_by_image(data, where):
    """{image_id: annotation} of a panoptic JSON's "annotations"; PredictionFileError on a malformed or repeated
    entry."""
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list):
        raise PredictionFileError(f"{where} must be a JSON object with an 'annotations' list.")
    out = {}
    for a in anns:
        if not isinstance(a, dict) or not {"image_id", "file_name", "segments_info"} <= a.keys():
            raise PredictionFileError(f"{where}: every annotation needs image_id, file_name and segments_info.")
        if a["image_id"] in out:
            raise PredictionFileError(f"{where} has two annotations for image {a['image_id']}; keep one per image.")
        ids = [s.get("id") for s in a["segments_info"]]
        if len(set(ids)) != len(ids):
            raise PredictionFileError(f"{where}: image {a['image_id']} lists a segment id twice.")
        out[a["image_id"]] = a
    return out


def validate_panoptic(gt, pred, pred_folder, pred_json="the prediction JSON"):
    """Check image ids (no repeats), category ids, and each prediction PNG: present, RGB, the image's size, and
    holding exactly the segment ids its segments_info lists (besides 0 = void)."""
    gt_anns = _annotations_by_image(gt, "the ground-truth JSON")
    pred_anns = _annotations_by_image(pred, f"'{pred_json}'")
    check_ids(pred_anns, gt_anns, "image id")
    cats, sizes = {c["id"] for c in gt["categories"]}, {i["id"]: (i["height"], i["width"]) for i in gt["images"]}
    for image_id, ann in pred_anns.items():
        unknown = {s["category_id"] for s in ann["segments_info"]} - cats
        strings = sorted(c for c in unknown if isinstance(c, str))
        if strings:
            raise PredictionFileError(
                f"Prediction of image {image_id} gives category ids as strings {strings[:5]}; category ids must be "
                "integers (the dataset's category ids, written as JSON numbers)."
            )
        if unknown:
            raise PredictionFileError(f"Prediction of image {image_id} uses unknown category ids {sorted(unknown)}.")
        png = os.path.join(pred_folder, ann["file_name"])
        if not os.path.exists(png):
            raise PredictionFileError(f"Prediction PNG '{png}' of image {image_id} is missing.")
        array, mode = read_png(png, "Prediction PNG")
        if mode != "RGB":
            raise PredictionFileError(
                f"Prediction PNG '{png}' is {mode}, not RGB: panoptic PNGs hold id = R + 256 G + 256^2 B; write them "
                "with panopticapi.utils.id2rgb."
            )
        if image_id in sizes and array.shape[:2] != sizes[image_id]:
            raise PredictionFileError(
                f"Prediction PNG '{png}' is {array.shape[:2]} but image {image_id} is {sizes[image_id]}."
            )
        ids = array.astype(np.int64) @ np.array([1, 256, 256 * 256])
        in_png, listed = set(np.unique(ids).tolist()) - {0}, {s["id"] for s in ann["segments_info"]}
        if in_png != listed:
            extra, absent = sorted(in_png - listed), sorted(listed - in_png)
            raise PredictionFileError(
                f"Prediction PNG '{png}' of image {image_id} does not match its segments_info: ids in the PNG but "
                f"not listed {extra[:5]}, listed but not in the PNG {absent[:5]}."
            )


def check_panoptic_ground_truth(gt, gt_json) -> None:
    """PredictionFileError unless ``gt`` is a COCO panoptic JSON: images (id, height, width), categories (id,
    isthing) and annotations with segments_info."""
    if not isinstance(gt, dict) or not all(isinstance(gt.get(k), list) for k in ("images", "annotations")):
        raise PredictionFileError(
            f"ground truth '{gt_json}' must be a COCO panoptic JSON with images, annotations and categories (a "
            "prediction JSON? check the order of --gt-json and --pred-json)."
        )
    if not isinstance(gt.get("categories"), list):
        raise PredictionFileError(
            f"ground truth '{gt_json}' has no 'categories' list: it is not a panoptic ground truth (a prediction "
            "JSON? check the order of --gt-json and --pred-json)."
        )
    if any(isinstance(a, dict) and "segments_info" not in a for a in gt["annotations"]):
        raise PredictionFileError(
            f"ground truth '{gt_json}' has annotations without segments_info: it is not a COCO panoptic JSON (an "
            "instance JSON belongs to `evaluate.py instance`)."
        )
    for key, fields in (("images", ("id", "height", "width")), ("categories", ("id", "isthing"))):
        for i, entry in enumerate(gt[key]):
            missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if missing:
                raise PredictionFileError(
                    f"ground truth '{gt_json}': {key}[{i}] has no {', '.join(missing)}; COCO panoptic {key} need "
                    f"{', '.join(fields)}."
                )


def summarize(results):
    """panopticapi's result -> {"PQ", "SQ", "RQ", "PQ_th", ..., "PQ_st", ...} in %."""
    out = {}
    for key, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for metric in ("pq", "sq", "rq"):
            out[metric.upper() + suffix] = 100 * results[key][metric]
    return out


def evaluate_panoptic(gt_json, gt_folder, pred_json, pred_folder, workers=None):
    """PQ/SQ/RQ (all, things, stuff) of COCO-panoptic predictions (PNG + JSON): panopticapi's numbers, matched in
    ``workers`` processes (default: the CPUs this process may use)."""
    gt = load_json(gt_json, "ground-truth file")
    check_panoptic_ground_truth(gt, gt_json)
    pred = load_json(pred_json, "prediction file")
    validate_panoptic(gt, pred, pred_folder, pred_json)
    return summarize(pq_compute(gt, pred, gt_folder, pred_folder, workers=workers))


def semantic_to_panoptic(label, label_to_category, ignore_label):
    """Label map [H, W] -> (segment ids [H, W], segments_info): one segment per class present, id = label + 1."""
    ids = np.zeros(label.shape, np.int64)
    segments = []
    for value in np.unique(label):
        if value == ignore_label:
            continue
        if int(value) not in label_to_category:
            raise PredictionFileError(f"Semantic prediction has label {int(value)}, which maps to no category.")
        ids[label == value] = value + 1
        segments.append({"id": int(value) + 1, "category_id": label_to_category[int(value)], "iscrowd": 0})
    return ids, segments


def evaluate_pq_from_semantic(gt_json, gt_folder, pred_folder, label_to_category=None, ignore_label=255, workers=None):
    """PQ of semantic label PNGs ``pred_folder/<stem>.png`` (stem of the GT PNG) against a panoptic ground truth.

    ``label_to_category`` maps label values to GT category ids; default: label i -> i-th GT category.
    """
    gt = load_json(gt_json, "ground-truth file")
    check_panoptic_ground_truth(gt, gt_json)
    label_to_category = label_to_category or {i: c["id"] for i, c in enumerate(gt["categories"])}
    with tempfile.TemporaryDirectory() as tmp:
        annotations = []
        for ann in gt["annotations"]:
            path = os.path.join(pred_folder, os.path.splitext(ann["file_name"])[0] + ".png")
            if not os.path.exists(path):
                raise PredictionFileError(f"Semantic prediction '{path}' for image {ann['image_id']} is missing.")
            label, mode = read_png(path, "Semantic prediction")
            if label.ndim != 2:
                raise PredictionFileError(f"Semantic prediction '{path}' is {mode}; write single-channel label PNGs.")
            ids, segments = semantic_to_panoptic(label, label_to_category, ignore_label)
            rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
            Image.fromarray(rgb).save(os.path.join(tmp, ann["file_name"]))
            annotations.append({"image_id": ann["image_id"], "file_name": ann["file_name"], "segments_info": segments})
        pred_json = os.path.join(tmp, "pred.json")
        with open(pred_json, "w") as f:
            json.dump({"annotations": annotations}, f)
        return evaluate_panoptic(gt_json, gt_folder, pred_json, tmp, workers=workers)
