"""Panoptic quality (PQ, SQ, RQ) with panopticapi's rules, matched per image in parallel processes.

panopticapi's ``pq_compute`` already splits the images over ``cpu_count()`` processes; per image it decodes both
PNGs through PIL into uint32 arrays, takes ``np.unique`` of gt_id * 2^24 + pred_id plus a second ``np.unique`` of
the prediction, and walks Python dicts of segment pairs. :func:`pq_compute` keeps the rules and the result layout;
per image it decodes with OpenCV (the same pixels), takes the one ``np.unique`` of the joint ids, derives the
predicted areas from it, and does matching, false positives and false negatives as array expressions over the small
[G + 1, P + 1] intersection matrix. Images are matched in ``workers`` processes (default: the CPUs this process may
use, its affinity mask), a few chunks per worker, their per-category sums added in a fixed order. Prediction PNGs
may be files in ``pred_folder`` or in memory (an annotation's "png_string" bytes), so the in-training evaluator does
not write them to disk and read them back. PNG decoding is most of what is left (``benchmarks/evaluation.py``).

The rules, as panopticapi applies them (``tests/test_fast_evaluation.py`` checks all / things / stuff and every
class against panopticapi on a generated set):
  * a GT and a predicted segment of the same category, the GT not crowd, match when
    IoU = |g & p| / (|p| + area_json(g) - |g & p| - |void & p|) > 0.5 (GT areas come from the JSON);
  * unmatched non-crowd GT segments are false negatives; GT pixels of ids not listed in segments_info are ignored;
  * an unmatched predicted segment is a false positive unless more than half of it lies on void or on the (last
    listed) crowd segment of its category.
"""

import io
import json
import multiprocessing
import os

import cv2
import numpy as np
from panopticapi.evaluation import PQStat
from PIL import Image

_OFFSET = 256 * 256 * 256  # panopticapi's OFFSET: joint label = gt id * OFFSET + pred id


def available_cpus() -> int:
    """The number of CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _read_ids(source) -> np.ndarray:
    """Segment ids uint32 [H, W] (R + 256 G + 256^2 B) of a panoptic PNG: a path or PNG bytes. OpenCV decodes
    8-bit PNGs (faster than PIL, the same pixels); others go through PIL, as panopticapi reads them."""
    if isinstance(source, bytes):
        array = cv2.imdecode(np.frombuffer(source, np.uint8), cv2.IMREAD_UNCHANGED)
    else:
        array = cv2.imread(source, cv2.IMREAD_UNCHANGED)
    if array is None or array.dtype != np.uint8 or array.ndim == 2:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            array = np.asarray(image)
        if array.ndim == 2:  # a single-channel PNG holds the ids themselves (panopticapi's rgb2id leaves it as is)
            return array.astype(np.uint32)
        rgb = array[..., :3].astype(np.uint32)
        return rgb[..., 0] + (rgb[..., 1] << 8) + (rgb[..., 2] << 16)
    code = cv2.COLOR_BGR2RGBA if array.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
    rgba = np.ascontiguousarray(cv2.cvtColor(array, code))  # R, G, B, A read as one little-endian uint32
    return rgba.view("<u4")[..., 0] & np.uint32(0xFFFFFF)


def _positions(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each of ``values``: 1 + its index in ``keys`` (distinct ids), or 0 when it is not one of them."""
    if not len(keys):
        return np.zeros(len(values), np.int64)
    order = np.argsort(keys)
    pos = np.minimum(np.searchsorted(keys[order], values), len(keys) - 1)
    return np.where(keys[order][pos] == values, order[pos] + 1, 0)


def _add(stats: dict, cat, iou_sum=0.0, tp=0, fp=0, fn=0) -> None:
    """Adds to ``stats[cat]`` = [iou_sum, tp, fp, fn] (started at zeros)."""
    entry = stats.setdefault(int(cat), [0.0, 0, 0, 0])
    entry[0] += iou_sum
    entry[1] += tp
    entry[2] += fp
    entry[3] += fn


def _prediction_columns(image_id, pred_segs: list, pair_pred: np.ndarray, counts: np.ndarray, categories: dict):
    """The column of each (gt, pred) pair's prediction (0 = void, 1.. = ``pred_segs`` in order) and the areas of
    the columns, int64 [P + 1]. Raises, like panopticapi, when the PNG and segments_info disagree or a category
    is unknown, and on repeated or zero segment ids."""
    pred_ids = np.array([s["id"] for s in pred_segs], np.int64)
    if len(set(pred_ids.tolist())) != len(pred_ids) or 0 in pred_ids:
        raise ValueError(
            f"Image {image_id}: the prediction's segments_info lists a segment id twice or id 0 (void); give each "
            "segment one distinct non-zero id."
        )
    col = _positions(pred_ids, pair_pred)
    bad = (col == 0) & (pair_pred != 0)
    if bad.any():
        raise KeyError(
            f"In the image with ID {image_id} segment with ID {int(pair_pred[bad][0])} is presented in PNG and not "
            "presented in JSON."
        )
    pred_area = np.bincount(col, weights=counts, minlength=len(pred_ids) + 1).astype(np.int64)
    missing = pred_ids[pred_area[1:] == 0].tolist()
    if missing:
        raise KeyError(
            f"In the image with ID {image_id} the following segment IDs {missing} are presented in JSON and not "
            "presented in PNG."
        )
    for s in pred_segs:
        if s["category_id"] not in categories:
            raise KeyError(
                f"In the image with ID {image_id} segment with ID {s['id']} has unknown category_id {s['category_id']}."
            )
    return col, pred_area


def pq_image(gt_ann: dict, pred_ann: dict, gt_folder: str, pred_folder, categories: dict) -> dict:
    """Per-category [iou_sum, tp, fp, fn] of one image: {category_id: [float, int, int, int]}.

    ``pred_ann`` holds "png_string" (PNG bytes) or names a file of ``pred_folder``. Raises KeyError, like
    panopticapi, when the prediction PNG and its segments_info disagree or a category is unknown; ValueError for a
    prediction of another size than the ground truth or with a repeated or zero segment id.
    """
    image_id = gt_ann["image_id"]
    gt = _read_ids(os.path.join(gt_folder, gt_ann["file_name"]))
    png = pred_ann.get("png_string")
    pred = _read_ids(png if png is not None else os.path.join(pred_folder, pred_ann["file_name"]))
    if gt.shape != pred.shape:
        raise ValueError(
            f"Image {image_id}: the prediction PNG is {pred.shape[0]}x{pred.shape[1]} but the ground truth is "
            f"{gt.shape[0]}x{gt.shape[1]}; predict at the ground truth's size."
        )
    gt_segs, pred_segs = gt_ann["segments_info"], pred_ann["segments_info"]

    # the (gt id, pred id) pairs present and their pixel counts: one np.unique of gt * 2^24 + pred, as panopticapi
    labels, counts = np.unique(gt.astype(np.uint64) * np.uint64(_OFFSET) + pred, return_counts=True)
    pair_gt, pair_pred = (labels // _OFFSET).astype(np.int64), (labels % _OFFSET).astype(np.int64)

    # predictions: column 0 = void, 1.. = listed segments; an id in the PNG that is not listed is an error
    col, pred_area = _prediction_columns(image_id, pred_segs, pair_pred, counts, categories)

    # ground truth: row 0 = void, 1.. = listed segments (ids not listed are ignored, as in panopticapi)
    gt_by_id = {s["id"]: s for s in gt_segs}  # a repeated id: the last entry, like panopticapi's dict
    gt_info = [s for i, s in gt_by_id.items() if i != 0]
    gt_ids = np.array([s["id"] for s in gt_info], np.int64)
    row = _positions(gt_ids, pair_gt)
    row[(row == 0) & (pair_gt != 0)] = -1
    keep = row >= 0
    inter = np.zeros((len(gt_ids) + 1, len(pred_area)), np.int64)  # [G + 1, P + 1] pixel counts
    inter[row[keep], col[keep]] = counts[keep]

    gt_cat = np.array([s["category_id"] for s in gt_info], np.int64)
    gt_crowd = np.array([s["iscrowd"] == 1 for s in gt_info], bool)
    gt_area = np.array([s["area"] for s in gt_info])
    pred_cat = np.array([s["category_id"] for s in pred_segs], np.int64)
    pairs = inter[1:, 1:]  # [G, P] listed GT x listed predictions
    void = inter[0, 1:]  # [P]
    union = pred_area[1:][None, :] + gt_area[:, None] - pairs - void[None, :]
    candidate = (pairs > 0) & (~gt_crowd)[:, None] & (gt_cat[:, None] == pred_cat[None, :])
    iou = np.divide(pairs, union, out=np.zeros(pairs.shape), where=candidate)
    matched = candidate & (iou > 0.5)  # IoU > 0.5 makes the match unique

    stats: dict = {}
    g_m, p_m = np.nonzero(matched)
    for g, p in zip(g_m.tolist(), p_m.tolist()):
        _add(stats, gt_cat[g], iou_sum=float(iou[g, p]), tp=1)
    gt_matched, pred_matched = matched.any(1), matched.any(0)
    for g in np.flatnonzero(~gt_matched & ~gt_crowd).tolist():
        _add(stats, gt_cat[g], fn=1)
    crowd_row = {}  # category -> row of its last crowd segment (panopticapi keeps the last one)
    for row, s in enumerate(gt_info):
        if s["iscrowd"] == 1:
            crowd_row[s["category_id"]] = row
    for p in np.flatnonzero(~pred_matched).tolist():
        ignored = int(void[p])
        row = crowd_row.get(int(pred_cat[p]))
        if row is not None:
            ignored += int(pairs[row, p])
        if ignored / pred_area[p + 1] > 0.5:
            continue
        _add(stats, pred_cat[p], fp=1)
    return stats


def _pq_chunk(args):
    chunk, gt_folder, pred_folder, categories = args
    total: dict = {}
    for gt_ann, pred_ann in chunk:
        for cat, values in pq_image(gt_ann, pred_ann, gt_folder, pred_folder, categories).items():
            _add(total, cat, *values)
    return total


def pq_stat(pairs, gt_folder, pred_folder, categories, workers=None) -> PQStat:
    """panopticapi's PQStat (per-category iou, tp, fp, fn) of ``pairs`` [(gt_ann, pred_ann)], matched in
    ``workers`` processes (default: :func:`available_cpus`; 1: in this process)."""
    workers = min(workers or available_cpus(), max(1, len(pairs)))
    n_chunks = 1 if workers == 1 else min(len(pairs), 4 * workers)  # a few chunks per worker balance the load
    chunks = [pairs[i::n_chunks] for i in range(n_chunks)] if pairs else []
    tasks = [(c, gt_folder, pred_folder, categories) for c in chunks]
    if workers == 1:
        partial = [_pq_chunk(t) for t in tasks]
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            partial = pool.map(_pq_chunk, tasks)
    stat = PQStat()
    for part in partial:
        for cat, (iou_sum, tp, fp, fn) in part.items():
            entry = stat[cat]
            entry.iou += iou_sum
            entry.tp += tp
            entry.fp += fp
            entry.fn += fn
    return stat


def pq_results(stat: PQStat, categories: dict) -> dict:
    """panopticapi's result layout: {"All" | "Things" | "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {...}}."""
    results = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        results[name], per_class = stat.pq_average(categories, isthing=isthing)
        if name == "All":
            results["per_class"] = per_class
    return results


def pq_compute(gt_json, pred_json, gt_folder, pred_folder, workers=None) -> dict:
    """PQ of COCO-panoptic predictions (``pred_json`` + PNGs in ``pred_folder``) against ``gt_json`` +
    ``gt_folder``: the same result as ``panopticapi.evaluation.pq_compute``. ``gt_json`` / ``pred_json`` may be
    paths or the loaded dicts."""
    gt = _load(gt_json)
    pred = _load(pred_json)
    categories = {c["id"]: c for c in gt["categories"]}
    by_image = {a["image_id"]: a for a in pred["annotations"]}
    pairs = []
    for gt_ann in gt["annotations"]:
        if gt_ann["image_id"] not in by_image:
            raise ValueError(f"No prediction for the image with id {gt_ann['image_id']}; predict every image.")
        pairs.append((gt_ann, by_image[gt_ann["image_id"]]))
    return pq_results(pq_stat(pairs, gt_folder, pred_folder, categories, workers), categories)


def _load(source):
    if isinstance(source, dict):
        return source
    with open(source) as f:
        return json.load(f)
