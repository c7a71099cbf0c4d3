"""Generated evaluation sets (ground truth + predictions) that hit every path of COCO AP and PQ, for the
equality tests against pycocotools / panopticapi and for ``benchmarks/evaluation.py``.

Instance set: per image ``instances`` ground-truth objects (ellipses and rectangles from a few pixels to larger
than 96^2, overlapping; RLE, polygon and crowd uncompressed-RLE annotations), detections that are shifted /
grown / shrunk copies of most objects (some with the wrong class, some duplicated), misses, false positives, tied
scores, an image without detections, a category with detections but no ground truth and one never detected.

Panoptic set: per image ``segments`` thing and stuff segments painted over each other (so areas and overlaps
vary), void pixels, a crowd segment in some images, and predictions that shift, drop, relabel and add segments
(and a few without any segment).
"""

import json
import os

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image


def _shape(rng, h, w, yy, xx, small=False):
    """A random ellipse or axis-aligned rectangle: bool [h, w]; area log-uniform from a few pixels to ~1/2 image."""
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    hi = np.log(max(h, w) * (0.15 if small else 0.6))
    ay, ax = np.exp(rng.uniform(np.log(1.5), hi, size=2))
    if rng.random() < 0.6:
        return ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 <= 1.0
    return (np.abs(yy - cy) <= ay) & (np.abs(xx - cx) <= ax)


def _perturb(rng, mask):
    """The mask shifted by up to 3 px and grown or shrunk by one pixel (roll + logical ops, numpy only)."""
    dy, dx = rng.integers(-3, 4, size=2)
    out = np.roll(mask, (int(dy), int(dx)), axis=(0, 1))
    step = rng.integers(-1, 2)
    if step:
        shifted = [np.roll(out, s, axis=a) for a in (0, 1) for s in (-1, 1)]
        out = np.logical_or.reduce([out, *shifted]) if step > 0 else np.logical_and.reduce([out, *shifted])
    return out


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _uncompressed_rle(mask):
    """COCO's crowd format: {"size": [h, w], "counts": [run lengths, column-major, starting with zeros]}."""
    flat = mask.astype(np.uint8).ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]
    return {"size": list(mask.shape), "counts": runs}


def instance_set(num_images, instances=20, seed=0, size_range=(96, 160), num_categories=6):
    """(COCO ground-truth dict, list of COCO results with "segmentation" RLE and "bbox") for ``num_images``
    images of random size in ``size_range`` with ``instances`` ground-truth objects each. Category ids are
    1, 3, 5, ... (not contiguous); the last category has detections but no ground truth."""
    rng = np.random.default_rng(seed)
    cat_ids = [2 * i + 1 for i in range(num_categories)]
    gt_cats = cat_ids[:-1]
    images, anns, results = [], [], []
    for image_id in range(1, num_images + 1):
        h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
        images.append({"id": image_id, "height": h, "width": w, "file_name": f"{image_id:06d}.jpg"})
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
        no_detections = image_id % 37 == 0
        for _ in range(instances):
            mask = _shape(rng, h, w, yy, xx)
            if not mask.any():
                continue
            cat = int(rng.choice(gt_cats[:-1])) if len(gt_cats) > 1 else gt_cats[0]  # gt_cats[-1]: never detected
            if rng.random() < 0.02:
                cat = gt_cats[-1]
            crowd = rng.random() < 0.06
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            ann = {
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": cat,
                "iscrowd": int(crowd),
                "area": float(mask_util.area(rle)),
                "bbox": mask_util.toBbox(rle).tolist(),
            }
            x, y, bw, bh = ann["bbox"]
            if crowd:
                ann["segmentation"] = _uncompressed_rle(mask)
            elif rng.random() < 0.25:  # a polygon (the box outline), as COCO's own non-crowd annotations are
                ann["segmentation"] = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
            else:
                ann["segmentation"] = _rle(mask)
            anns.append(ann)
            if no_detections or cat == gt_cats[-1]:
                continue
            copies = 0 if rng.random() < 0.15 else (2 if rng.random() < 0.08 else 1)  # misses, duplicates
            for _ in range(copies):
                pred = _perturb(rng, mask)
                if not pred.any():
                    continue
                pred_cat = cat if rng.random() < 0.9 else int(rng.choice(cat_ids))
                results.append(_result(rng, image_id, pred_cat, pred))
        if no_detections:
            continue
        for _ in range(int(rng.integers(2, 7))):  # false positives, some of the category without ground truth
            pred = _shape(rng, h, w, yy, xx, small=rng.random() < 0.5)
            if pred.any():
                results.append(_result(rng, image_id, int(rng.choice(cat_ids)), pred))
    categories = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in cat_ids]
    return {"images": images, "annotations": anns, "categories": categories}, results


def _result(rng, image_id, category_id, mask):
    rle = _rle(mask)
    score = float(rng.random())
    if rng.random() < 0.2:  # tied scores: the sort order of equal scores must match
        score = round(score, 1)
    bbox = mask_util.toBbox({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).tolist()
    return {"image_id": image_id, "category_id": category_id, "score": score, "segmentation": rle, "bbox": bbox}


def _id2rgb(ids):
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)


def panoptic_set(folder, num_images, segments=20, seed=0, size=(64, 80)):
    """Writes a COCO-panoptic ground truth and prediction set under ``folder``; returns
    (gt_json, gt_folder, pred_json, pred_folder). Things: categories 1, 2, 4, 7; stuff: 10, 11, 15."""
    rng = np.random.default_rng(seed)
    things, stuff = [1, 2, 4, 7], [10, 11, 15]
    gt_folder, pred_folder = os.path.join(folder, "gt"), os.path.join(folder, "pred")
    os.makedirs(gt_folder, exist_ok=True)
    os.makedirs(pred_folder, exist_ok=True)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    images, gt_anns, pred_anns = [], [], []
    for image_id in range(1, num_images + 1):
        name = f"{image_id:06d}.png"
        images.append({"id": image_id, "height": h, "width": w, "file_name": name.replace(".png", ".jpg")})
        ids = np.unique(rng.integers(1, 1 << 24, size=4 * segments + 16))  # distinct random segment ids
        ids = rng.permutation(ids)[: 2 * segments + 8]
        gt = np.zeros((h, w), np.int64)
        cats, crowd = {}, set()
        n_stuff = int(rng.integers(2, 5))
        for k in range(segments):
            sid = int(ids[k])
            if k < n_stuff:  # stuff: big blobs first, things painted over them
                mask = _shape(rng, h, w, yy, xx) | (yy > rng.uniform(0, h)) if k == 0 else _shape(rng, h, w, yy, xx)
                cats[sid] = int(rng.choice(stuff))
            else:
                mask = _shape(rng, h, w, yy, xx, small=rng.random() < 0.5)
                cats[sid] = int(rng.choice(things))
                if rng.random() < 0.05:
                    crowd.add(sid)
            gt[mask] = sid
        gt[_shape(rng, h, w, yy, xx, small=True)] = 0  # void
        present, areas = np.unique(gt, return_counts=True)
        area = dict(zip(present.tolist(), areas.tolist()))
        segs = [
            {"id": s, "category_id": c, "iscrowd": int(s in crowd), "area": area[s], "bbox": [0, 0, 1, 1]}
            for s, c in cats.items()
            if s in area
        ]
        Image.fromarray(_id2rgb(gt)).save(os.path.join(gt_folder, name))
        gt_anns.append({"image_id": image_id, "file_name": name, "segments_info": segs})

        pred = np.zeros((h, w), np.int64)
        pred_cats = {}
        order = rng.permutation(len(segs))
        for j, i in enumerate(order):
            s = segs[i]
            if rng.random() < 0.15:  # missed
                continue
            mask = _perturb(rng, gt == s["id"]) if rng.random() < 0.7 else _shape(rng, h, w, yy, xx)
            pid = int(ids[segments + j])
            pred[mask] = pid
            pred_cats[pid] = s["category_id"] if rng.random() < 0.9 else int(rng.choice(things + stuff))
        for j in range(int(rng.integers(1, 5))):  # false positives
            pid = int(ids[2 * segments + j])
            pred[_shape(rng, h, w, yy, xx, small=True)] = pid
            pred_cats[pid] = int(rng.choice(things + stuff))
        if rng.random() < 0.5:
            pred[_shape(rng, h, w, yy, xx, small=True)] = 0  # void in the prediction
        if image_id % 41 == 0:
            pred[:] = 0  # a prediction without segments (all void)
        pred_present = set(np.unique(pred).tolist()) - {0}
        pred_segs = [{"id": p, "category_id": c} for p, c in pred_cats.items() if p in pred_present]
        Image.fromarray(_id2rgb(pred)).save(os.path.join(pred_folder, name))
        pred_anns.append({"image_id": image_id, "file_name": name, "segments_info": pred_segs})
    categories = [{"id": c, "name": f"thing{c}", "isthing": 1} for c in things]
    categories += [{"id": c, "name": f"stuff{c}", "isthing": 0} for c in stuff]
    gt_json, pred_json = os.path.join(folder, "gt.json"), os.path.join(folder, "pred.json")
    with open(gt_json, "w") as f:
        json.dump({"images": images, "annotations": gt_anns, "categories": categories}, f)
    with open(pred_json, "w") as f:
        json.dump({"annotations": pred_anns}, f)
    return gt_json, gt_folder, pred_json, pred_folder
