"""Inference for mask classification (Mask2Former): semantic / panoptic / instance results of ONE image.

Inputs are the final layer's class logits ``mask_cls`` [Q, K+1] (index K = no-object) and mask logits
``mask_pred`` [Q, H, W], already resized to the output resolution by the caller (see
:func:`sem_seg_postprocess`). Outputs follow detectron2's conventions.
"""
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F

from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import Boxes, Instances

__all__ = [
    "semantic_inference",
    "panoptic_inference",
    "instance_inference",
    "masks_to_boxes",
    "sem_seg_postprocess",
]


_BLOCK_ELEMENTS = 1 << 18  # elements of one [Q, block] slice of mask logits (1 MiB in fp32)


def _column_blocks(rows: int, cols: int):
    """Column slices of a [rows, cols] matrix, each slice about _BLOCK_ELEMENTS elements (so it stays in cache)."""
    step = max(1, _BLOCK_ELEMENTS // max(rows, 1))
    return (slice(start, start + step) for start in range(0, cols, step))


def _positive_area_and_sigmoid_sum(logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per row of logits [Q, P]: the number of entries x > 0 and the sum of sigmoid(x) over them, both float32 [Q].

    Computed in blocks that stay in cache, on r = max(x, 0): sign(r) is 1 exactly where x > 0, and sigmoid(r) - 0.5
    is 0 exactly where x <= 0, so the sum over x > 0 of sigmoid(x) is sum(sigmoid(r) - 0.5) + 0.5 * area (float
    arithmetic only; reductions of bool tensors are several times slower on the CPU).
    """
    area = logits.new_zeros(logits.shape[0], dtype=torch.float32)
    shifted = torch.zeros_like(area)
    for cols in _column_blocks(*logits.shape):
        r = logits[:, cols].float().clamp_min(0)
        area += r.sign().sum(1)
        shifted += r.sigmoid_().sub_(0.5).sum(1)
    return area, shifted + 0.5 * area


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """Per-class scores: sum over queries of p(class) * sigmoid(mask).

    Args:
        mask_cls: [Q, K+1] class logits.
        mask_pred: [Q, H, W] mask logits.
    Returns:
        [K, H, W] semantic scores (no-object dropped).
    """
    probs_t = F.softmax(mask_cls, dim=-1)[:, :-1].t().contiguous()  # [K, Q]
    Q, H, W = mask_pred.shape
    masks = mask_pred.reshape(Q, H * W)
    out = mask_pred.new_empty((probs_t.shape[0], H * W))
    # blocks of pixels: the sigmoid of a [Q, block] slice stays in cache for the product, instead of a [Q, H, W]
    # temporary written to and read back from memory (the same sums, several times faster on the CPU)
    for cols in _column_blocks(Q, H * W):
        torch.mm(probs_t, masks[:, cols].sigmoid(), out=out[:, cols])
    return out.view(-1, H, W)


def panoptic_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    num_classes: int,
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
    thing_ids: Iterable[int] = (),
) -> Tuple[torch.Tensor, List[Dict[str, object]]]:
    """Non-overlapping segments from the confident queries.

    Queries whose top class is not no-object and whose top probability exceeds ``object_mask_threshold`` are
    kept; each pixel goes to the kept query with the largest score * sigmoid(mask); a query's segment is its
    pixels where also sigmoid(mask) >= 0.5. A segment is dropped when it is empty or when the pixels it won
    cover less than ``overlap_threshold`` of its own mask (sigmoid >= 0.5). Stuff segments of the same class
    share one id.

    Args:
        mask_cls: [Q, K+1] class logits.
        mask_pred: [Q, H, W] mask logits.
        num_classes: K.
        thing_ids: contiguous ids of the thing classes.
    Returns:
        panoptic_seg: int32 [H, W], 0 = void, segment ids 1..S consecutive.
        segments_info: S dicts {"id", "category_id", "isthing"} in id order.
    """
    thing_ids = set(thing_ids)
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_pred[keep].sigmoid()

    height, width = mask_pred.shape[-2:]
    panoptic_seg = torch.zeros((height, width), dtype=torch.int32, device=mask_pred.device)
    segments_info: List[Dict[str, object]] = []
    if cur_masks.shape[0] == 0:
        return panoptic_seg, segments_info

    owner = (cur_scores[:, None, None] * cur_masks).argmax(0)  # [H, W] index into the kept queries
    stuff_ids: Dict[int, int] = {}
    for k in range(cur_masks.shape[0]):
        category = int(cur_classes[k])
        won = owner == k
        own_mask = cur_masks[k] >= 0.5
        segment = won & own_mask
        won_area, original_area = int(won.sum()), int(own_mask.sum())
        if won_area == 0 or original_area == 0 or int(segment.sum()) == 0:
            continue
        if won_area / original_area < overlap_threshold:
            continue
        isthing = category in thing_ids
        if not isthing and category in stuff_ids:
            panoptic_seg[segment] = stuff_ids[category]
            continue
        segment_id = len(segments_info) + 1
        if not isthing:
            stuff_ids[category] = segment_id
        panoptic_seg[segment] = segment_id
        segments_info.append({"id": segment_id, "category_id": category, "isthing": isthing})
    return panoptic_seg, segments_info


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of binary masks.

    Args:
        masks: [N, H, W] bool (or 0/1).
    Returns:
        [N, 4] float32 XYXY boxes [x0, y0, x1 + 1, y1 + 1] of the mask's pixels; all zeros for an empty mask
        (same convention as detectron2's ``BitMasks.get_bounding_boxes``).
    """
    masks = masks.bool()
    n, height, width = masks.shape
    boxes = torch.zeros((n, 4), dtype=torch.float32, device=masks.device)
    if n == 0:
        return boxes
    as_bytes = masks.view(torch.uint8)  # max-reductions of bytes are vectorised; any() of bools is far slower
    cols, rows = as_bytes.amax(dim=1), as_bytes.amax(dim=2)  # [N, W], [N, H] (1 where the column / row has a pixel)
    nonempty = cols.amax(dim=1) > 0
    x0 = cols.argmax(dim=1)
    x1 = width - cols.flip(1).argmax(dim=1)
    y0 = rows.argmax(dim=1)
    y1 = height - rows.flip(1).argmax(dim=1)
    found = torch.stack([x0, y0, x1, y1], dim=1).float()
    boxes[nonempty] = found[nonempty]
    return boxes


def instance_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    num_classes: int,
    test_topk_per_image: int = 100,
    panoptic_on: bool = False,
    thing_ids: Optional[Iterable[int]] = None,
) -> Instances:
    """Top-k (query, class) pairs as instances.

    Args:
        mask_cls: [Q, K+1] class logits.
        mask_pred: [Q, H, W] mask logits.
        num_classes: K.
        test_topk_per_image: number of (query, class) pairs kept (at most Q * K).
        panoptic_on: keep only thing classes (``thing_ids`` required), as when panoptic inference also runs.
    Returns:
        Instances of image size (H, W) with pred_masks bool [N, H, W] (mask logit > 0), pred_boxes Boxes [N, 4]
        (tight boxes of pred_masks), scores [N] = class prob * mean mask prob inside the mask, pred_classes
        long [N]; ordered by decreasing class probability.
    """
    if panoptic_on and thing_ids is None:
        raise ValueError("instance_inference: panoptic_on=True needs thing_ids (the contiguous thing class ids).")
    num_queries = mask_cls.shape[0]
    class_probs = F.softmax(mask_cls, dim=-1)[:, :-1]  # [Q, K]
    k = min(test_topk_per_image, num_queries * num_classes)
    top_scores, top_idx = class_probs.flatten().topk(k, sorted=True)
    labels = top_idx % num_classes
    query_idx = top_idx // num_classes
    if panoptic_on:
        things = set(int(c) for c in thing_ids)
        is_thing = torch.tensor([c in things for c in labels.tolist()], dtype=torch.bool, device=labels.device)
        top_scores, labels, query_idx = top_scores[is_thing], labels[is_thing], query_idx[is_thing]
    area, inside = _positive_area_and_sigmoid_sum(mask_pred.flatten(1))  # [Q] each
    mask_scores = inside / (area + 1e-6)

    result = Instances(tuple(mask_pred.shape[-2:]))
    result.pred_masks = (mask_pred > 0)[query_idx]  # [N, H, W] bool (bool first: 4x less to gather)
    result.pred_boxes = Boxes(masks_to_boxes(result.pred_masks))
    result.scores = top_scores * mask_scores[query_idx]
    result.pred_classes = labels
    return result
