"""Instance evaluation of a COCO results JSON (segm and bbox AP): pycocotools' numbers, computed by
faster-coco-eval (:mod:`universal_seg.evaluation.coco`)."""

import logging
import math
import os

import pycocotools.mask as mask_util

from ..coco import evaluate_coco, fast_coco_api
from .errors import PredictionFileError, load_json, rle_length

_STATS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
logger = logging.getLogger(__name__)


def _check_segmentation(seg, img, where):
    """A result's mask: an RLE {"size": [h, w], "counts": str | list} covering exactly h * w pixels at the image's
    size, or polygons (lists of at least 3 x, y pairs)."""
    size = [img["height"], img["width"]]
    if isinstance(seg, dict):
        if list(seg.get("size", [])) != size:
            raise PredictionFileError(f"{where}: the mask has size {seg.get('size')} but the image is {size}.")
        counts = seg.get("counts")
        if isinstance(counts, str):
            length = rle_length(counts)
        elif isinstance(counts, list) and all(isinstance(c, int) and c >= 0 for c in counts):
            length = sum(counts)
        else:
            length = None
        if length != size[0] * size[1]:
            raise PredictionFileError(
                f"{where}: the mask is not a valid RLE of a {size[0]}x{size[1]} image (its runs cover "
                f"{length if length is not None else 'an unreadable number of'} pixels); encode masks with "
                "pycocotools.mask.encode."
            )
    elif isinstance(seg, list):
        if not seg or not all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(isinstance(v, (int, float)) for v in p)
            for p in seg
        ):
            raise PredictionFileError(f"{where}: polygons must be lists of at least 3 (x, y) pairs.")
    else:
        raise PredictionFileError(f"{where}: 'segmentation' must be an RLE dict or a list of polygons.")


def _unknown_image_id(pred_json, image_id, images) -> PredictionFileError:
    """The error for a result whose image_id is not a ground-truth image id, naming the fix when the id is a file
    name (tools/predict.py without --dataset names images by file stem)."""
    if isinstance(image_id, str) and image_id.strip().lstrip("-").isdigit() and int(image_id) in images:
        return PredictionFileError(
            f"'{pred_json}' has image_id {image_id!r}, a string: image ids must be integers (write {int(image_id)}, "
            f"not {image_id!r})."
        )
    stems = {os.path.splitext(os.path.basename(str(img.get("file_name", ""))))[0]: i for i, img in images.items()}
    if str(image_id) in stems:
        return PredictionFileError(
            f"'{pred_json}' has image_id {image_id!r}, the file name of ground-truth image {stems[str(image_id)]!r} "
            "but not its id: the predictions were written without a dataset; rerun tools/predict.py with "
            "--dataset NAME to write the dataset's image ids."
        )
    if isinstance(image_id, str) and not any(isinstance(i, str) for i in images):
        return PredictionFileError(
            f"'{pred_json}' has image_id {image_id!r}, a string, but the ground truth's image ids are numbers: "
            "tools/predict.py without --dataset names images by file; rerun it with --dataset NAME to write the "
            "dataset's image ids."
        )
    return PredictionFileError(
        f"'{pred_json}' has image_id {image_id!r} not in the ground truth; check that the predictions belong to "
        "this dataset."
    )


def _is_in(value, known) -> bool:
    try:
        return value in known
    except TypeError:  # an unhashable JSON value (a list or an object) is no id
        return False


def load_results(pred_json, coco_gt):
    """Read and validate a COCO results list: known image and category ids, a finite score, valid RLE or polygon
    masks of the image's size, boxes of 4 finite numbers."""
    results = load_json(pred_json, "prediction file")
    if not isinstance(results, list):
        raise PredictionFileError(f"'{pred_json}' must be a JSON list of COCO results (an object or value is not).")
    images, cats = coco_gt.imgs, set(coco_gt.getCatIds())
    for i, r in enumerate(results):
        where = f"'{pred_json}' result {i}"
        if not isinstance(r, dict):
            raise PredictionFileError(f"{where} is not a JSON object.")
        if not _is_in(r.get("image_id"), images):
            raise _unknown_image_id(pred_json, r.get("image_id"), images)
        category = r.get("category_id")
        if isinstance(category, str):
            raise PredictionFileError(
                f"'{pred_json}' has category_id {category!r}, a string: category ids must be integers (the "
                "dataset's category ids, written as JSON numbers)."
            )
        if isinstance(category, bool) or not _is_in(category, cats):
            raise PredictionFileError(
                f"'{pred_json}' has unknown category_id {category!r}; use the "
                "dataset's category ids, not contiguous ids."
            )
        score = r.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise PredictionFileError(f"{where} needs a finite number 'score' (has {score!r}).")
        seg = r.get("segmentation")
        img = images[r["image_id"]]
        if seg is not None:
            _check_segmentation(seg, img, where)
        box = r.get("bbox")
        finite = isinstance(box, list) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
        if box is not None and not (finite and len(box) == 4):
            raise PredictionFileError(f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h].")
        if seg is None and box is None:
            raise PredictionFileError(f"{where} has neither 'segmentation' nor 'bbox'.")
        if "bbox" not in r and isinstance(seg, dict):
            r["bbox"] = mask_util.toBbox(seg).tolist()
    return results


def check_coco_ground_truth(gt, gt_json) -> None:
    """PredictionFileError unless ``gt`` is a COCO instance JSON: lists of images (id, height, width), categories
    (id) and annotations (id, image_id, category_id, segmentation or bbox); a COCO panoptic JSON is named as such."""
    keys = ("images", "annotations", "categories")
    if not isinstance(gt, dict) or not all(isinstance(gt.get(k), list) for k in keys):
        raise PredictionFileError(f"ground truth '{gt_json}' must be a COCO JSON with images, annotations, categories.")
    if any(isinstance(a, dict) and "segments_info" in a for a in gt["annotations"]):
        raise PredictionFileError(
            f"ground truth '{gt_json}' is a COCO panoptic JSON (annotations with segments_info); give the instance "
            "JSON (e.g. instances_val.json) to `instance`, or evaluate it with `evaluate.py panoptic`."
        )
    needs = (
        ("images", ("id", "height", "width")),
        ("categories", ("id",)),
        ("annotations", ("id", "image_id", "category_id")),
    )
    for key, fields in needs:
        for i, entry in enumerate(gt[key]):
            missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if missing or (key == "annotations" and not ({"segmentation", "bbox"} & entry.keys())):
                what = ", ".join(missing) if missing else "segmentation or bbox"
                raise PredictionFileError(
                    f"ground truth '{gt_json}': {key}[{i}] has no {what}; COCO {key} need {', '.join(fields)}"
                    f"{' and a segmentation or bbox' if key == 'annotations' else ''}."
                )


def evaluate_instance(gt_json, pred_json, iou_types=("segm", "bbox")):
    """COCO AP, AP50, AP75, APs, APm, APl (in %) per IoU type; returns {iou_type: {metric: value}}.

    An empty results list (a model that found nothing) scores what COCO's definition gives: 0 where the ground
    truth has objects, NaN where it has none (e.g. APs without small objects), with a warning. (detectron2's
    COCOEvaluator reports NaN for every metric instead; pycocotools cannot load an empty list.)"""
    gt = load_json(gt_json, "ground-truth file")
    check_coco_ground_truth(gt, gt_json)
    coco_gt = fast_coco_api(gt)
    results = load_results(pred_json, coco_gt)
    if not results:
        logger.warning(f"'{pred_json}' holds no results (no instance was predicted): every AP is 0 or NaN.")
    out = {}
    for iou_type in iou_types:
        subset = [r for r in results if ("segmentation" if iou_type == "segm" else "bbox") in r]
        if results and not subset:
            raise PredictionFileError(f"'{pred_json}' has no '{iou_type}' results; drop that type or add them.")
        ev = evaluate_coco(coco_gt, subset, iou_type)  # segm: the mask area decides the area range, as in training
        out[iou_type] = {k: float(100 * v) if v >= 0 else float("nan") for k, v in zip(_STATS, ev.stats[:6])}
    return out
