"""Instance / panoptic post-processing of an exported mask-classification model's outputs, in numpy.

An ONNX file written by ``tools/export_model.py --format onnx`` (see :class:`universal_seg.export.OnnxExportWrapper`)
returns, per batch, ``pred_logits`` [B, Q, K+1] and ``mask_logits`` [B, Q, H, W] (mask logits at the input size),
plus the semantic scores and map. These functions turn ONE image's ``pred_logits[i]`` and ``mask_logits[i]`` into
the panoptic and instance results that the eager model gives (``universal_seg.modeling.postprocess``), with numpy
only, so a deployment needs ONNX Runtime and numpy and no PyTorch:

    import numpy as np, onnxruntime as ort
    from universal_seg.export_postprocess import panoptic_postprocess, instance_postprocess

    session = ort.InferenceSession("model.onnx")
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {"image": image[None].astype(np.float32)})))  # image [3, H, W]
    panoptic, segments = panoptic_postprocess(out["pred_logits"][0], out["mask_logits"][0], thing_ids=...)
    instances = instance_postprocess(out["pred_logits"][0], out["mask_logits"][0], topk=100)

The rules are those of the eager post-processing (thresholds from MODEL.MASK_FORMER.TEST: OBJECT_MASK_THRESHOLD,
OVERLAP_THRESHOLD, DETECTIONS_PER_IMAGE; thing ids from the dataset's metadata).
"""

from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

__all__ = ["softmax", "sigmoid", "semantic_map", "panoptic_postprocess", "instance_postprocess", "masks_to_boxes"]


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis`` (max subtracted first), in x's float dtype."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) in x's float dtype (exp overflows to inf for very negative x, giving 0)."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def semantic_map(sem_seg: np.ndarray) -> np.ndarray:
    """Scores [K, H, W] (or [B, K, H, W]) -> class ids int64 [H, W] ([B, H, W]): argmax over the classes (the first
    of equal maxima), what the exported ``sem_seg_map`` holds."""
    return np.argmax(sem_seg, axis=-3)


def _check(pred_logits: np.ndarray, mask_logits: np.ndarray) -> None:
    if pred_logits.ndim != 2 or mask_logits.ndim != 3 or pred_logits.shape[0] != mask_logits.shape[0]:
        raise ValueError(
            f"expected one image's pred_logits [Q, K+1] and mask_logits [Q, H, W], got {pred_logits.shape} and "
            f"{mask_logits.shape}; index the batch first (outputs['pred_logits'][i])."
        )
    if pred_logits.shape[1] < 2:
        raise ValueError(f"pred_logits must have K+1 >= 2 columns (K classes and no-object), got {pred_logits.shape}.")


def assign_panoptic_segments(
    stats: Iterable[Tuple[int, int, int, int]], thing_ids, overlap_threshold: float
) -> Tuple[List[int], List[Dict[str, object]]]:
    """Mask2Former's panoptic segment rules, shared by this numpy path and the torch one
    (:func:`universal_seg.modeling.postprocess.panoptic_inference`).

    stats: per kept query k (in order), (pixels it wins, pixels of its own mask, pixels of its segment, category).
    A query with an empty win / mask / segment, or winning less than ``overlap_threshold`` of its mask, is dropped;
    stuff queries of one category share one segment. Returns (segment id per kept query plus a trailing 0 for
    "no segment", ids 1..S with 0 = dropped; segments_info: S dicts {"id", "category_id", "isthing"} in id order).
    """
    segment_of_query: List[int] = []
    segments_info: List[Dict[str, object]] = []
    stuff_ids: Dict[int, int] = {}
    for won, original, segment, category in stats:
        segment_of_query.append(0)
        if won == 0 or original == 0 or segment == 0 or won / original < overlap_threshold:
            continue
        isthing = category in thing_ids
        if not isthing and category in stuff_ids:
            segment_of_query[-1] = stuff_ids[category]
            continue
        segment_id = len(segments_info) + 1
        if not isthing:
            stuff_ids[category] = segment_id
        segment_of_query[-1] = segment_id
        segments_info.append({"id": segment_id, "category_id": category, "isthing": isthing})
    segment_of_query.append(0)
    return segment_of_query, segments_info


def panoptic_postprocess(
    pred_logits: np.ndarray,
    mask_logits: np.ndarray,
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
    thing_ids: Iterable[int] = (),
) -> Tuple[np.ndarray, List[Dict[str, object]]]:
    """Non-overlapping segments from the confident queries (the eager ``panoptic_inference``).

    A query is kept when its top class is not no-object (index K) and its top probability exceeds
    ``object_mask_threshold``. Each pixel goes to the kept query with the largest score * sigmoid(mask) (ties to
    the lower query index); a query's segment is its pixels where also sigmoid(mask) >= 0.5. A segment is dropped
    when it is empty, when its own mask (sigmoid >= 0.5) is empty, or when the pixels it won cover less than
    ``overlap_threshold`` of its own mask. Stuff segments of one class share one id; ids are 1..S in query order.

    Args:
        pred_logits: [Q, K+1] class logits of one image.
        mask_logits: [Q, H, W] mask logits of that image at output size.
        thing_ids: contiguous ids of the thing classes (the rest are stuff).
    Returns:
        panoptic_seg int32 [H, W] (0 = void) and segments_info: S dicts {"id", "category_id", "isthing"}.
    """
    _check(pred_logits, mask_logits)
    thing_ids = {int(c) for c in thing_ids}
    num_classes = pred_logits.shape[1] - 1
    probs = softmax(pred_logits.astype(np.float32))
    labels = probs.argmax(-1)
    scores = probs.max(-1)
    kept = np.nonzero((labels != num_classes) & (scores > object_mask_threshold))[0]
    height, width = mask_logits.shape[-2:]
    segments_info: List[Dict[str, object]] = []
    n = kept.size
    if n == 0:
        return np.zeros((height, width), dtype=np.int32), segments_info

    mask_probs = sigmoid(mask_logits[kept].reshape(n, -1).astype(np.float32))  # [N, P]
    owner = np.argmax(mask_probs * scores[kept][:, None], axis=0)  # [P], first of equal maxima
    own = mask_probs >= 0.5  # [N, P]
    owner_on = own[owner, np.arange(owner.size)]
    segment_owner = np.where(owner_on, owner, n)  # n = no segment
    won_area = np.bincount(owner, minlength=n)
    own_area = own.sum(1)
    segment_area = np.bincount(segment_owner, minlength=n + 1)[:n]

    stats = zip(won_area.tolist(), own_area.tolist(), segment_area.tolist(), labels[kept].tolist())
    segment_of_query, segments_info = assign_panoptic_segments(stats, thing_ids, overlap_threshold)
    return np.asarray(segment_of_query, dtype=np.int32)[segment_owner].reshape(height, width), segments_info


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Boolean masks [N, H, W] -> float32 XYXY boxes [N, 4] = [x0, y0, x1 + 1, y1 + 1] of each mask's pixels, all
    zeros for an empty mask (detectron2's ``BitMasks.get_bounding_boxes`` convention)."""
    n = masks.shape[0]
    boxes = np.zeros((n, 4), dtype=np.float32)
    for i in range(n):
        ys = np.nonzero(masks[i].any(1))[0]
        xs = np.nonzero(masks[i].any(0))[0]
        if ys.size:
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def instance_postprocess(
    pred_logits: np.ndarray,
    mask_logits: np.ndarray,
    topk: int = 100,
    panoptic_on: bool = False,
    thing_ids: Optional[Iterable[int]] = None,
) -> Dict[str, np.ndarray]:
    """The ``topk`` most probable (query, class) pairs as instances (the eager ``instance_inference``).

    Args:
        pred_logits: [Q, K+1] class logits of one image.
        mask_logits: [Q, H, W] mask logits at output size.
        topk: number of (query, class) pairs kept (at most Q * K), by decreasing class probability.
        panoptic_on: keep only pairs of thing classes (``thing_ids`` required), as the eager model does when it
            also outputs panoptic segmentation.
    Returns:
        {"pred_masks": bool [N, H, W] (mask logit > 0), "pred_boxes": float32 [N, 4] tight XYXY boxes of the masks,
        "scores": float32 [N] = class probability * mean sigmoid(mask) inside the mask, "pred_classes": int64 [N]}.
    """
    _check(pred_logits, mask_logits)
    if panoptic_on and thing_ids is None:
        raise ValueError("instance_postprocess: panoptic_on=True needs thing_ids (the contiguous thing class ids).")
    num_queries, num_classes = pred_logits.shape[0], pred_logits.shape[1] - 1
    class_probs = softmax(pred_logits.astype(np.float32))[:, :-1].reshape(-1)  # [Q * K]
    k = min(int(topk), num_queries * num_classes)
    top = np.argsort(-class_probs, kind="stable")[:k]  # decreasing probability, ties to the lower index
    top_scores, labels, queries = class_probs[top], top % num_classes, top // num_classes
    if panoptic_on:
        things = {int(c) for c in thing_ids}
        pairs = np.array([int(c) in things for c in labels], dtype=bool)
        top_scores, labels, queries = top_scores[pairs], labels[pairs], queries[pairs]
    flat = mask_logits.reshape(num_queries, -1).astype(np.float32)
    positive = flat > 0
    area = positive.sum(1).astype(np.float32)
    inside = np.where(positive, sigmoid(flat), 0.0).sum(1, dtype=np.float32)
    mask_scores = inside / (area + 1e-6)
    masks = mask_logits[queries] > 0
    return {
        "pred_masks": masks,
        "pred_boxes": masks_to_boxes(masks),
        "scores": (top_scores * mask_scores[queries]).astype(np.float32),
        "pred_classes": labels.astype(np.int64),
    }
