"""Instance evaluation of a COCO results JSON (segm and bbox AP) with pycocotools."""

import contextlib
import io
import json

import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .errors import PredictionFileError

_STATS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def load_results(pred_json, coco_gt):
    """Read and validate a COCO results list: known image and category ids, RLE sizes equal to the image's."""
    with open(pred_json) as f:
        results = json.load(f)
    if not isinstance(results, list) or not results:
        raise PredictionFileError(f"'{pred_json}' must be a non-empty JSON list of COCO results.")
    images, cats = coco_gt.imgs, set(coco_gt.getCatIds())
    for r in results:
        if r.get("image_id") not in images:
            raise PredictionFileError(f"'{pred_json}' has image_id {r.get('image_id')} not in the ground truth.")
        if r.get("category_id") not in cats:
            raise PredictionFileError(
                f"'{pred_json}' has unknown category_id {r.get('category_id')}; use the "
                "dataset's category ids, not contiguous ids."
            )
        seg = r.get("segmentation")
        img = images[r["image_id"]]
        if isinstance(seg, dict) and list(seg.get("size", [])) != [img["height"], img["width"]]:
            raise PredictionFileError(
                f"'{pred_json}': a mask of image {r['image_id']} has size {seg.get('size')} "
                f"but the image is {[img['height'], img['width']]}."
            )
        if "bbox" not in r and isinstance(seg, dict):
            r["bbox"] = mask_util.toBbox(seg).tolist()
    return results


def evaluate_instance(gt_json, pred_json, iou_types=("segm", "bbox")):
    """COCO AP, AP50, AP75, APs, APm, APl (in %) per IoU type; returns {iou_type: {metric: value}}."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt_json)
    results = load_results(pred_json, coco_gt)
    out = {}
    for iou_type in iou_types:
        subset = [r for r in results if ("segmentation" if iou_type == "segm" else "bbox") in r]
        if not subset:
            raise PredictionFileError(f"'{pred_json}' has no '{iou_type}' results; drop that type or add them.")
        if iou_type == "bbox":
            subset = [{k: v for k, v in r.items() if k != "segmentation"} for r in subset]
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(subset)
            ev = COCOeval(coco_gt, coco_dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out[iou_type] = {k: float(100 * v) if v >= 0 else float("nan") for k, v in zip(_STATS, ev.stats[:6])}
    return out
