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
    "MaskLogitBands",
    "banded_rows_exact",
    "banded_inference",
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


def _block_step(rows: int, device: torch.device, block_elements: Optional[int] = None) -> int:
    """Columns per block of a [rows, cols] matrix on ``device``: about ``block_elements`` elements per block
    (default _block_elements(device))."""
    return max(1, (block_elements or _block_elements(device)) // max(rows, 1))


def _column_blocks(rows: int, cols: int, device: torch.device, block_elements: int | None = None):
    """Column slices of a [rows, cols] matrix on ``device``, :func:`_block_step` columns each."""
    step = _block_step(rows, device, block_elements)
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
        _add_positive_area_and_shifted_sum(logits[:, cols], area, shifted)
    return area, shifted + 0.5 * area


def _add_positive_area_and_shifted_sum(block: torch.Tensor, area: torch.Tensor, shifted: torch.Tensor) -> None:
    """One block [Q, b] of :func:`_positive_area_and_sigmoid_sum`: adds the count of entries > 0 to ``area`` and
    the sum of sigmoid(max(x, 0)) - 0.5 to ``shifted`` (float32 [Q] each, in place)."""
    r = block.float().clamp_min(0)
    area += r.sign().sum(1)
    shifted += r.sigmoid_().sub_(0.5).sum(1)


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
    return semantic_inference(_confident(mask_cls, object_threshold), mask_pred)


def _confident(mask_cls: torch.Tensor, object_threshold: float) -> torch.Tensor:
    """The class logits [Q, K+1] of :func:`confident_semantic_inference`: those of the dropped queries replaced."""
    p_object = 1 - F.softmax(mask_cls, dim=-1)[:, -1]  # [Q]
    keep = (p_object > object_threshold) | (p_object == p_object.max())  # [Q]
    # a dropped query gets the logits of certain no-object (class probabilities exactly 0), so it adds nothing to
    # the sum: the same result as summing over the kept queries, without a data-dependent shape (traceable, ONNX)
    certain_no_object = torch.full_like(mask_cls, float("-inf"))
    certain_no_object[:, -1] = 0
    return torch.where(keep[:, None], mask_cls, certain_no_object)


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
    scores, labels, kept = _panoptic_kept(mask_cls, num_classes, object_mask_threshold)  # (reads N back)
    height, width = mask_pred.shape[-2:]
    if kept.numel() == 0:
        return torch.zeros((height, width), dtype=torch.int32, device=mask_pred.device), []
    owner, owner_on, own_area = _owners(mask_pred, kept, scores.index_select(0, kept))
    kept_labels = labels.index_select(0, kept)
    return _panoptic_finish(owner, owner_on, own_area, kept_labels, height, width, thing_ids, overlap_threshold)


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
    top_scores, labels, query_idx = _instance_pairs(mask_cls, num_classes, test_topk_per_image, panoptic_on, thing_ids)
    area, inside = _positive_area_and_sigmoid_sum(mask_pred.flatten(1))  # [Q] each
    mask_scores = inside / (area + 1e-6)

    result = Instances(tuple(mask_pred.shape[-2:]))
    result.pred_masks = (mask_pred > 0)[query_idx]  # [N, H, W] bool (bool first: 4x less to gather)
    result.pred_boxes = Boxes(masks_to_boxes(result.pred_masks))
    result.scores = top_scores * mask_scores[query_idx]
    result.pred_classes = labels
    return result


# --------------------------------------------------------------------------------- banded (low-resolution input)
_BAND_ELEMENTS = 1 << 23  # CPU: elements of one band of upsampled mask logits [Q, rows, W] (32 MiB in fp32)


def banded_rows_exact(low_size: Tuple[int, int], padded_size: Tuple[int, int]) -> bool:
    """Whether upsampling [Q, h, w] -> [Q, H_pad, W_pad] in bands of rows (:class:`MaskLogitBands`) gives bit for
    bit the rows of the whole bilinear upsample: when H_pad = s * h with s a power of two (1, 2, 4, ...).

    Then PyTorch's source row of output row y, (y + 0.5) / s - 0.5 (align_corners=False, clamped at 0), is exact in
    float, so a band upsampled from source rows lo..hi-1 gets, for its output row y - s * lo, the source row and
    weights of row y shifted by exactly lo; with one source row of halo on each side the edge clamping of the band
    never applies to a kept row. The columns are always the whole width (the same weights in every band).
    """
    (h, _), (height, _) = low_size, padded_size
    scale = height // h if h > 0 else 0
    return h > 0 and scale * h == height and scale & (scale - 1) == 0


def _channels_last_kernel(source: torch.Tensor, out_size: Tuple[int, int]) -> bool:
    """Whether PyTorch's CPU bilinear upsample of ``source`` [1, C, h, w] to ``out_size`` runs its channels-last
    kernel rather than the generic one (aten's _use_vectorized_kernel_cond_2d): the two round differently."""
    channels_last = source.is_contiguous(memory_format=torch.channels_last) and source.shape[1] > 3
    return channels_last or out_size[0] + out_size[1] <= 128


class MaskLogitBands:
    """Bands of rows of the mask logits of one image, upsampled from the decoder's low-resolution logits.

    Stands for ``F.interpolate(low_res[None], size=padded_size, mode="bilinear", align_corners=False)[0]`` cropped
    to ``crop_size`` ([Q, H, W] = [Q, crop_size]) without building it: :meth:`rows` upsamples only the source rows
    a band needs (plus one of halo on each side). Requires :func:`banded_rows_exact` (then every band is bit for bit
    the same rows of the whole upsample). Each band runs the same CPU kernel as the whole upsample would (PyTorch
    picks its channels-last kernel for channels-last inputs of more than 3 channels and for outputs with
    H + W <= 128, the generic one otherwise): a band is made at least 129 - W_pad rows high when the whole upsample
    is generic, and its input channels-last when the whole one's is.

    On the CPU, outside autocast and autograd, the bands are written into two buffers kept for all bands (the
    upsample through aten's ``upsample_bilinear2d.out``, the same kernel): a fresh tensor of that size would be
    mapped anew by the allocator for every band and pay its first-touch page faults again. Hence a result of
    :meth:`rows` is valid until the next call.

    Args:
        low_res: [Q, h, w] mask logits (any float dtype; the upsample follows F.interpolate's, autocast included).
        padded_size: (H_pad, W_pad), the size of the whole upsample (H_pad = s * h, s a power of two).
        crop_size: (H, W) <= padded_size, the rows and columns kept (the image without its padding).
    """

    def __init__(self, low_res: torch.Tensor, padded_size: Tuple[int, int], crop_size: Tuple[int, int]):
        if not banded_rows_exact(tuple(low_res.shape[-2:]), tuple(padded_size)):
            raise ValueError(f"MaskLogitBands: {tuple(low_res.shape[-2:])} -> {tuple(padded_size)} is not exact")
        self.low_res, self.padded_size = low_res, (int(padded_size[0]), int(padded_size[1]))
        self.scale = self.padded_size[0] // low_res.shape[-2]
        self.shape = (low_res.shape[0], int(crop_size[0]), int(crop_size[1]))  # [Q, H, W]
        self.device = low_res.device
        self.channels_last = _channels_last_kernel(low_res[None], self.padded_size)
        # whether the cropped whole map, flattened to [Q, H * W] (a copy or a view), is contiguous: a single-block
        # elementwise kernel then runs over one run of memory (it rounds its remainder elements differently)
        self.flat_contiguous = self.shape[2] < self.padded_size[1] or self.shape[1] == self.padded_size[0]
        one = F.interpolate(low_res[None, :1, :1, :1], size=(1, 1), mode="bilinear", align_corners=False)
        self.dtype = one.dtype  # of the upsampled logits (autocast may change it)
        self._buffers: Dict[str, torch.Tensor] = {}  # "up", "crop": flat storage reused by every band (CPU)

    def _buffer(self, slot: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """The first ``numel`` elements of the reused flat buffer ``slot`` (grown when too small)."""
        buffer = self._buffers.get(slot)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype:
            buffer = self._buffers[slot] = torch.empty(numel, dtype=dtype, device=self.device)
        return buffer[:numel]

    def _reuses_buffers(self, source: torch.Tensor) -> bool:
        return (
            self.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and source.requires_grad)
        )

    def _upsample(self, source: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """``F.interpolate(source, size, mode="bilinear", align_corners=False)`` of [1, Q', rows, w], into the "up"
        buffer where :meth:`_reuses_buffers` (a channels-last view for a channels-last source, as F.interpolate's)."""
        if not self._reuses_buffers(source):
            return F.interpolate(source, size=size, mode="bilinear", align_corners=False)
        n, c, (h, w) = source.shape[0], source.shape[1], size
        flat = self._buffer("up", n * c * h * w, source.dtype)
        channels_last = source.is_contiguous(memory_format=torch.channels_last) and not source.is_contiguous()
        out = flat.view(n, h, w, c).permute(0, 3, 1, 2) if channels_last else flat.view(n, c, h, w)
        return torch.ops.aten.upsample_bilinear2d.out(source, [h, w], False, None, None, out=out)

    def rows(self, r0: int, r1: int, queries: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Upsampled rows r0..r1-1 of the (cropped) logits, flattened: [Q', (r1 - r0) * W], Q' = len(queries) (int64
        indices) or Q. Rows of the whole padded width are a view of the band's upsample, others a copy into a
        buffer of row stride (r1 - r0) * W + 1: either way a strided view (contiguous only for a band of the
        whole uncropped map), as a column slice of the whole [Q, H * W] map is, so elementwise kernels split
        column blocks of it the same way. On the CPU the result lives in buffers that the next call overwrites
        (see the class docstring): consume or copy it first."""
        s, h = self.scale, self.low_res.shape[-2]
        width, padded_width = self.shape[2], self.padded_size[1]
        # the source rows of the first and the last kept row, as aten computes them (exact here)
        lo = int(max(0.0, (r0 + 0.5) / s - 0.5))
        hi = min(h - 1, int(max(0.0, (r1 - 0.5) / s - 0.5)) + 1) + 1
        while not self.channels_last and (hi - lo) * s + padded_width <= 128:  # (the whole one has H_pad + W_pad > 128)
            lo, hi = (lo, hi + 1) if hi < h else (lo - 1, hi)
        source = self.low_res[None, :, lo:hi]  # [1, Q, rows, w]
        select_after = None
        if queries is not None:
            picked = source.index_select(1, queries)
            if self.channels_last:
                picked = picked.contiguous(memory_format=torch.channels_last)
            if _channels_last_kernel(picked, ((hi - lo) * s, padded_width)) == self.channels_last:
                source = picked
            else:  # (a channels-last whole upsample, 3 queries or fewer): upsample all, then pick
                select_after = queries
        up = self._upsample(source, ((hi - lo) * s, padded_width))[0]
        if select_after is not None:
            up = up.index_select(0, select_after)
        kept = up[:, r0 - lo * s : r1 - lo * s, :width]  # [Q', r1 - r0, W]
        if width == padded_width:  # rows of whole width: a view (strided unless the band is the whole map)
            return kept.reshape(up.shape[0], -1)
        length = (r1 - r0) * width
        if self._reuses_buffers(up):
            out = self._buffer("crop", up.shape[0] * (length + 1), up.dtype).view(up.shape[0], length + 1)[:, :length]
        else:
            out = up.new_empty((up.shape[0], length + 1))[:, :length]
        out.view(up.shape[0], r1 - r0, width).copy_(kept)
        return out


class _ColumnBlocks:
    """The column blocks of :func:`_column_blocks` over [rows, pixels], taken from successive bands (bands of
    consecutive pixels: a block across two bands is put together from the end of one and the start of the next)."""

    def __init__(self, pixels: int, step: int):
        self.pixels, self.step, self.next = pixels, step, 0
        self.carry: Optional[torch.Tensor] = None  # [rows, c]: pixels next..next+c-1, from the previous band

    def take(self, band: torch.Tensor, start: int, end: int):
        """(cols, [rows, len(cols)] block) for each block that ends inside band = pixels start..end-1 (start = the
        previous band's end). A block is a view with a row stride larger than its width, as in the full functions
        (where the whole map is one block, its caller decides)."""
        while self.next < self.pixels and min(self.next + self.step, self.pixels) <= end:
            cols = slice(self.next, min(self.next + self.step, self.pixels))
            if self.carry is None:
                block = band[:, cols.start - start : cols.stop - start]
            else:  # into a [rows, width + 1] buffer: a strided view, like the others
                c, size = self.carry.shape[1], cols.stop - cols.start
                block = band.new_empty((band.shape[0], size + 1))[:, :size]
                block[:, :c], block[:, c:] = self.carry, band[:, : size - c]
                self.carry = None
            yield cols, block
            self.next = cols.stop
        if self.next < min(end, self.pixels):  # the start of a block that ends in a later band
            self.carry = (
                band[:, self.next - start :].clone() if self.carry is None else torch.cat([self.carry, band], 1)
            )


def _panoptic_kept(mask_cls: torch.Tensor, num_classes: int, object_mask_threshold: float):
    """Scores, labels [Q] and int64 indices [N] of the queries panoptic inference keeps (reads N back)."""
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    return scores, labels, keep.nonzero().squeeze(1)


def _instance_pairs(mask_cls, num_classes, test_topk_per_image, panoptic_on, thing_ids):
    """The top-k (query, class) pairs of instance inference: scores, labels, query indices [N]."""
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
    return top_scores, labels, query_idx


def banded_inference(
    mask_cls: torch.Tensor,
    bands: MaskLogitBands,
    num_classes: int,
    *,
    semantic: bool = False,
    semantic_object_threshold: float = 0.0,
    panoptic: bool = False,
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
    thing_ids: Iterable[int] = (),
    instance: bool = False,
    test_topk_per_image: int = 100,
    instance_things_only: bool = False,
) -> Dict[str, object]:
    """Semantic, panoptic and instance inference of one image in one pass over bands of upsampled rows.

    The same results as the full computation, ``mask_pred`` = the whole upsampled and cropped logits [Q, H, W]
    then :func:`semantic_inference` (or :func:`confident_semantic_inference` when ``semantic_object_threshold`` >
    0), :func:`panoptic_inference` and :func:`instance_inference` with the same arguments, but the float logits
    exist only one band [Q, rows, W] at a time (see _BAND_ELEMENTS), each band is consumed by every enabled task
    and dropped (bands do not overlap). Only the first resize, to the padded size and cropped, is done here: an
    output size other than the crop (detectron2's second, arbitrary-scale resize) is left to the caller, which
    takes the whole upsample then (see UniversalSegmentor.inference). Exactness on the CPU (the logits themselves
    are bit for bit those of the whole upsample, see :class:`MaskLogitBands`):

    * semantic scores and the instance mask scores: each pixel block is the full functions' block (the same
      columns of the flattened map, a view of the same shape and kind; a block across two bands is put together
      from both, see _ColumnBlocks), so the sigmoids, sums and products run the same way: bit for bit equal;
    * instance masks (logit > 0) and boxes: pixel-wise, equal;
    * panoptic owner / areas: pixel-wise, from a sigmoid per band. PyTorch's CPU sigmoid computes the last
      (< 2 * vector width) elements of each call or thread chunk in a scalar loop that can differ from the
      vectorised one in the last bit, and which elements fall there differs between the full function's one
      [N, H, W] call and the calls per band: the panoptic map can differ only at such an element where two kept
      queries' score * sigmoid are within one ulp, or sigmoid within one ulp of 0.5 (not met in the tests).

    Args:
        mask_cls: [Q, K+1] class logits.
        bands: the image's mask logits [Q, H, W], by bands.
        num_classes: K.
        semantic / panoptic / instance: which results to compute; the other arguments as in the full functions
        (``instance_things_only`` is instance_inference's ``panoptic_on``).
    Returns:
        {"sem_seg": [K, H, W], "panoptic_seg": (int32 [H, W], segments_info), "instances": Instances} for the
        enabled tasks.
    """
    num_queries, height, width = bands.shape
    pixels, device = height * width, bands.device
    if not (semantic or panoptic or instance):
        return {}
    out: Dict[str, object] = {}
    sinks = []
    if semantic:
        cls_sem = mask_cls if semantic_object_threshold <= 0 else _confident(mask_cls, semantic_object_threshold)
        sinks.append(_SemanticSink(cls_sem, num_queries, pixels, bands.dtype, device, bands.flat_contiguous))
    if panoptic:
        scores, labels, kept = _panoptic_kept(mask_cls, num_classes, object_mask_threshold)
        if kept.numel() == 0:
            out["panoptic_seg"] = (torch.zeros((height, width), dtype=torch.int32, device=device), [])
        else:
            sinks.append(_PanopticSink(kept, scores.index_select(0, kept), pixels, device))
    if instance:
        top_scores, labels_i, query_idx = _instance_pairs(
            mask_cls, num_classes, test_topk_per_image, instance_things_only, thing_ids
        )
        sinks.append(_InstanceSink(query_idx, num_queries, height, width, device))
    if sinks:
        # only panoptic: the bands hold the kept queries alone (rows 0..N-1)
        queries = sinks[0].kept if len(sinks) == 1 and isinstance(sinks[0], _PanopticSink) else None
        if queries is not None:
            sinks[0].kept = torch.arange(queries.numel(), device=device)
        q_rows = num_queries if queries is None else queries.numel()
        band_rows = max(1, _BAND_ELEMENTS // max(q_rows * width, 1))
        for r0 in range(0, height, band_rows):  # bands of consecutive rows, each consumed by every task
            r1 = min(height, r0 + band_rows)
            band = bands.rows(r0, r1, queries)
            for sink in sinks:
                sink.consume(band, r0 * width, r1 * width)
    for s in sinks:
        if isinstance(s, _SemanticSink):
            out["sem_seg"] = s.out.view(-1, height, width)
        elif isinstance(s, _PanopticSink):
            out["panoptic_seg"] = _panoptic_finish(
                s.owner, s.owner_on, s.own_area, labels.index_select(0, kept), height, width, thing_ids,
                overlap_threshold,
            )  # fmt: skip
        else:
            mask_scores = s.inside() / (s.area + 1e-6)
            result = Instances((height, width))
            result.pred_masks = s.masks
            result.pred_boxes = Boxes(masks_to_boxes(s.masks))
            result.scores = top_scores * mask_scores[query_idx]
            result.pred_classes = labels_i
            out["instances"] = result
    return {key: out[key] for key in ("sem_seg", "panoptic_seg", "instances") if key in out}


class _SemanticSink:
    """The blocked product of :func:`semantic_inference`, block by block from bands."""

    def __init__(self, mask_cls, num_queries, pixels, dtype, device, whole_contiguous):
        self.whole_contiguous = whole_contiguous
        self.probs_t = F.softmax(mask_cls, dim=-1)[:, :-1].t().contiguous()  # [K, Q]
        self.out = torch.empty((self.probs_t.shape[0], pixels), dtype=dtype, device=device)
        sample = torch.empty((num_queries, 1), dtype=dtype, device=device)  # (what matmul_uses_onednn reads)
        self.onednn = matmul_uses_onednn(self.probs_t, sample)
        blocks = _SEMANTIC_BLOCK_ELEMENTS_ONEDNN if self.onednn else None
        self.step = _block_step(num_queries, device, blocks)
        self.blocks = _ColumnBlocks(pixels, self.step)

    def consume(self, band, start, end):
        for cols, block in self.blocks.take(band, start, end):
            if cols.stop - cols.start == self.blocks.pixels and self.whole_contiguous:
                block = block.contiguous()  # one block, the whole map: as the full function's when it is contiguous
            if self.onednn:
                self.out[:, cols] = matmul(self.probs_t, block.sigmoid())
            else:
                torch.mm(self.probs_t, block.sigmoid(), out=self.out[:, cols])


class _InstanceSink:
    """Positive areas and sigmoid sums (blocks of :func:`_positive_area_and_sigmoid_sum`) and the bool masks of
    the selected queries (pixel-wise) of :func:`instance_inference`, from bands."""

    def __init__(self, query_idx, num_queries, height, width, device):
        self.query_idx = query_idx
        self.area = torch.zeros(num_queries, dtype=torch.float32, device=device)
        self.shifted = torch.zeros_like(self.area)
        self.masks = torch.empty((query_idx.numel(), height, width), dtype=torch.bool, device=device)
        self.step = _block_step(num_queries, device)
        self.blocks = _ColumnBlocks(height * width, self.step)

    def consume(self, band, start, end):
        for _, block in self.blocks.take(band, start, end):
            _add_positive_area_and_shifted_sum(block, self.area, self.shifted)
        n, height, width = self.masks.shape
        self.masks.view(n, height * width)[:, start:end] = (band > 0)[self.query_idx]

    def inside(self):
        return self.shifted + 0.5 * self.area


class _PanopticSink:
    """The per-pixel owner of :func:`_owners`, band by band (pixel-wise: no blocks shared with the full function)."""

    def __init__(self, kept, kept_scores, pixels, device):
        self.kept, self.kept_scores = kept, kept_scores
        self.owner = torch.empty(pixels, dtype=torch.int64, device=device)
        self.owner_on = torch.empty(pixels, dtype=torch.bool, device=device)
        self.own_area = torch.zeros(kept.numel(), dtype=torch.int64, device=device)

    def consume(self, band, start, end):
        owner, owner_on, own_area = _owners(band[:, None], self.kept, self.kept_scores)
        self.owner[start:end], self.owner_on[start:end] = owner, owner_on
        self.own_area += own_area


def _panoptic_finish(owner, owner_on, own_area, kept_labels, height, width, thing_ids, overlap_threshold):
    """Areas, segment table and painted map of :func:`panoptic_inference` from the owners ([P] each, P = H * W)."""
    n = own_area.numel()
    segment_owner = torch.where(owner_on, owner, n)  # [H * W]: kept query whose segment holds the pixel, n = none
    won_area = _count(owner, n)
    segment_area = _count(segment_owner, n + 1)[:n]
    stats = torch.stack([won_area, own_area, segment_area, kept_labels]).tolist()  # one transfer
    segment_of_query, segments_info = assign_panoptic_segments(zip(*stats), set(thing_ids), overlap_threshold)
    table = torch.tensor(segment_of_query, dtype=torch.int32).to(owner.device, non_blocking=True)
    return table[segment_owner].view(height, width), segments_info
