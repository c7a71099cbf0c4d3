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

from ..export_postprocess import assign_panoptic_segments
from ..ops.linear import matmul, matmul_uses_onednn

__all__ = [
    "semantic_inference",
    "confident_semantic_inference",
    "panoptic_inference",
    "instance_inference",
    "masks_to_boxes",
    "sem_seg_postprocess",
]


_BLOCK_ELEMENTS = 1 << 18  # CPU: elements of one [rows, block] slice of mask logits (1 MiB in fp32, stays in cache)
_SEMANTIC_BLOCK_ELEMENTS_ONEDNN = 1 << 21  # CPU fp32 semantic product through oneDNN: [Q, block] sigmoid (8 MiB)
_BLOCK_ELEMENTS_ACCELERATOR = 1 << 24  # CUDA and other devices: 64 MiB in fp32, a few large kernels per image


def _block_elements(device: torch.device) -> int:
    """Elements of one [rows, block] slice in the blocked loops over pixels, by device (the one place that decides).

    On the CPU the slice should stay in cache; elsewhere blocks only bound the temporaries (no [Q, H, W] float
    copy), and large ones keep the number of kernel launches small.
    """
    return _BLOCK_ELEMENTS if device.type == "cpu" else _BLOCK_ELEMENTS_ACCELERATOR


def _column_blocks(rows: int, cols: int, device: torch.device, block_elements: int | None = None):
    """Column slices of a [rows, cols] matrix on ``device``, each slice about ``block_elements`` elements (default
    _block_elements(device))."""
    step = max(1, (block_elements or _block_elements(device)) // max(rows, 1))
    return (slice(start, start + step) for start in range(0, cols, step))


def _positive_area_and_sigmoid_sum(logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per row of logits [Q, P]: the number of entries x > 0 and the sum of sigmoid(x) over them, both float32 [Q].

    Computed in blocks (in cache on the CPU, see _block_elements), on r = max(x, 0): sign(r) is 1 exactly where
    x > 0, and sigmoid(r) - 0.5 is 0 exactly where x <= 0, so the sum over x > 0 of sigmoid(x) is
    sum(sigmoid(r) - 0.5) + 0.5 * area (float arithmetic only; reductions of bool tensors are several times slower
    on the CPU).
    """
    area = logits.new_zeros(logits.shape[0], dtype=torch.float32)
    shifted = torch.zeros_like(area)
    for cols in _column_blocks(*logits.shape, logits.device):
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
    if torch.is_grad_enabled() and (mask_cls.requires_grad or mask_pred.requires_grad):
        return torch.mm(probs_t, masks.sigmoid()).view(-1, H, W)  # differentiable (mm's out= is not)
    out = mask_pred.new_empty((probs_t.shape[0], H * W))
    # blocks of pixels: the sigmoid of a [Q, block] slice stays in cache for the product, instead of a [Q, H, W]
    # temporary written to and read back from memory (the same sums, several times faster on the CPU)
    if matmul_uses_onednn(probs_t, masks):
        # fp32 on the CPU: the product through oneDNN (ops.matmul; MKL's sgemm runs its AVX2 code on AMD CPUs), in
        # larger blocks (each call costs more than an mm); its [K, block] result is copied into place
        for cols in _column_blocks(Q, H * W, mask_pred.device, _SEMANTIC_BLOCK_ELEMENTS_ONEDNN):
            out[:, cols] = matmul(probs_t, masks[:, cols].sigmoid())
        return out.view(-1, H, W)
    for cols in _column_blocks(Q, H * W, mask_pred.device):
        torch.mm(probs_t, masks[:, cols].sigmoid(), out=out[:, cols])
    return out.view(-1, H, W)


def confident_semantic_inference(
    mask_cls: torch.Tensor, mask_pred: torch.Tensor, object_threshold: float
) -> torch.Tensor:
    """:func:`semantic_inference` over the confident queries only (MODEL.MASK_FORMER.TEST.SEMANTIC_OBJECT_THRESHOLD).

    A query is kept when p(object) = 1 - p(no-object) > ``object_threshold``; the query with the largest p(object)
    is always kept (all of them on a tie), so the scores are never all zero. Scores: sum over kept queries q of
    p_q(class) * sigmoid(mask_q).
    Against the sum over all queries, this drops the floor that unmatched queries with broad masks add to every
    class (their small class probabilities times masks near 1).

    Args:
        mask_cls: [Q, K+1] class logits.
        mask_pred: [Q, H, W] mask logits.
        object_threshold: in [0, 1); 0 keeps every query with p(object) > 0.
    Returns:
        [K, H, W] semantic scores (no-object dropped).
    """
    p_object = 1 - F.softmax(mask_cls, dim=-1)[:, -1]  # [Q]
    keep = (p_object > object_threshold) | (p_object == p_object.max())  # [Q]
    # a dropped query gets the logits of certain no-object (class probabilities exactly 0), so it adds nothing to
    # the sum: the same result as summing over the kept queries, without a data-dependent shape (traceable, ONNX)
    certain_no_object = torch.full_like(mask_cls, float("-inf"))
    certain_no_object[:, -1] = 0
    return semantic_inference(torch.where(keep[:, None], mask_cls, certain_no_object), mask_pred)


def _count(index: torch.Tensor, bins: int) -> torch.Tensor:
    """Occurrences of each value 0..bins-1 in the int64 tensor ``index`` [P] (values in [0, bins)): int64 [bins].

    bincount on the CPU; a scatter-add elsewhere (CUDA's bincount reads the maximum back to the host).
    """
    if index.device.type == "cpu":
        return torch.bincount(index, minlength=bins)
    ones = torch.ones((), dtype=torch.int64, device=index.device).expand(index.shape)
    return torch.zeros(bins, dtype=torch.int64, device=index.device).scatter_add_(0, index, ones)


def _argmax_rows(values: torch.Tensor) -> torch.Tensor:
    """torch.argmax(values, dim=0) of a [N, B] tensor: int64 [B], the first index among equal maxima, a NaN first.

    On the CPU, argmax over the outer dimension is a slow strided loop; there (for N <= 256) it is computed from
    vectorised reductions instead: the column maxima, then the largest (N - 1 - row) among the rows equal to them,
    in bytes. Columns with a NaN fall back to argmax.
    """
    rows = values.shape[0]
    if values.device.type != "cpu" or rows > 256:
        return torch.argmax(values, dim=0)
    best = values.amax(0)  # [B]
    if bool(best.isnan().any()):
        return torch.argmax(values, dim=0)
    reverse = torch.arange(rows - 1, -1, -1, dtype=torch.uint8)[:, None]  # [N, 1]: N - 1 - row
    hits = (values == best).view(torch.uint8).mul_(reverse)  # [N, B]
    return (rows - 1) - hits.amax(0).long()


def _owners(
    mask_pred: torch.Tensor, kept: torch.Tensor, kept_scores: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pixel, the kept query with the largest score * sigmoid(mask), and whether that query's own mask is on.

    Args:
        mask_pred: [Q, H, W] mask logits.
        kept: int64 [N] indices of the kept queries (N >= 1).
        kept_scores: [N] their class scores.
    Returns:
        owner: int64 [P] (P = H * W), index into ``kept`` (argmax over the kept queries; ties to the first);
        owner_on: bool [P], sigmoid(mask of the owner) >= 0.5 at the pixel;
        own_area: int64 [N], pixels with sigmoid(mask) >= 0.5 per kept query.
    In blocks of pixels: the float temporaries are [N, block], not [N, P].

    The threshold stays sigmoid >= 0.5, not logit >= 0: in float32 sigmoid(x) rounds to exactly 0.5 for tiny
    negative x (down to about -1.5 * 2**-23). On the CPU the sigmoid is taken over all kept masks at once ([N, P],
    as the reference did): PyTorch's vectorised loop and its scalar remainder loop differ in the last bit, and a
    split into blocks would move the remainders (and could break an argmax tie differently). Elsewhere it is
    taken per block.
    """
    n, pixels = kept.numel(), mask_pred.shape[-2] * mask_pred.shape[-1]
    device = mask_pred.device
    owner = torch.empty(pixels, dtype=torch.int64, device=device)
    owner_on = torch.empty(pixels, dtype=torch.bool, device=device)
    own_area = torch.zeros(n, dtype=torch.int64, device=device)
    if device.type == "cpu":
        all_probs, masks = mask_pred.index_select(0, kept).sigmoid_().view(n, pixels), None  # [N, P]
    else:
        all_probs, masks = None, mask_pred.reshape(mask_pred.shape[0], pixels)  # [Q, P]
    scores = kept_scores[:, None]
    for cols in _column_blocks(n, pixels, device):
        probs = all_probs[:, cols] if all_probs is not None else masks[:, cols].index_select(0, kept).sigmoid_()
        own = probs >= 0.5  # [N, block]
        own_area += own.view(torch.uint8).sum(1, dtype=torch.int32)  # (bytes into int32: vectorised on the CPU)
        # score * sigmoid as in the reference product (same dtype promotion); in place on a per-block copy
        if all_probs is None and torch.result_type(probs, scores) == probs.dtype:
            weighted = probs.mul_(scores)
        else:
            weighted = probs * scores
        block_owner = _argmax_rows(weighted)  # [block]
        owner[cols] = block_owner
        owner_on[cols] = own.gather(0, block_owner[None]).squeeze(0)
    return owner, owner_on, own_area


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
    kept; each pixel goes to the kept query with the largest score * sigmoid(mask) (ties to the lower query
    index); a query's segment is its pixels where also sigmoid(mask) >= 0.5. A segment is dropped when it is empty
    or when the pixels it won cover less than ``overlap_threshold`` of its own mask (sigmoid >= 0.5). Stuff
    segments of the same class share one id. Ids follow the query order.

    The per-query areas of all kept queries are computed together on the device (won: count of the owner map;
    own mask; segment: count of the owner where its own mask is on), read back in one transfer, and the panoptic
    map is painted in one gather through a table kept query -> segment id (0 when dropped). Reads back to the
    host: the number of kept queries, then the areas.

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
    kept = keep.nonzero().squeeze(1)  # int64 [N] (reads N back to the host)

    height, width = mask_pred.shape[-2:]
    device = mask_pred.device
    segments_info: List[Dict[str, object]] = []
    n = kept.numel()
    if n == 0:
        return torch.zeros((height, width), dtype=torch.int32, device=device), segments_info

    owner, owner_on, own_area = _owners(mask_pred, kept, scores.index_select(0, kept))
    segment_owner = torch.where(owner_on, owner, n)  # [H * W]: kept query whose segment holds the pixel, n = none
    won_area = _count(owner, n)
    segment_area = _count(segment_owner, n + 1)[:n]
    stats = torch.stack([won_area, own_area, segment_area, labels.index_select(0, kept)]).tolist()  # one transfer

    segment_of_query, segments_info = assign_panoptic_segments(zip(*stats), thing_ids, overlap_threshold)
    table = torch.tensor(segment_of_query, dtype=torch.int32).to(device, non_blocking=True)  # (no wait on CUDA)
    panoptic_seg = table[segment_owner].view(height, width)
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
    return torch.where(nonempty[:, None], found, boxes)  # no boolean indexing: no read-back to the host


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
        is_thing_class = torch.tensor([c in things for c in range(num_classes)], dtype=torch.bool).to(
            labels.device, non_blocking=True
        )  # [K] lookup table, built on the host and sent without waiting
        pairs = is_thing_class[labels].nonzero().squeeze(1)  # kept pairs, in order (the one read-back: N)
        top_scores, labels, query_idx = top_scores[pairs], labels[pairs], query_idx[pairs]
    area, inside = _positive_area_and_sigmoid_sum(mask_pred.flatten(1))  # [Q] each
    mask_scores = inside / (area + 1e-6)

    result = Instances(tuple(mask_pred.shape[-2:]))
    result.pred_masks = (mask_pred > 0)[query_idx]  # [N, H, W] bool (bool first: 4x less to gather)
    result.pred_boxes = Boxes(masks_to_boxes(result.pred_masks))
    result.scores = top_scores * mask_scores[query_idx]
    result.pred_classes = labels
    return result
