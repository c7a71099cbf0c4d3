"""Tiled inference (TEST.TILING): a large image runs through the network in overlapping tiles, in batches, and the
per-tile results are merged at output resolution.

- semantic: the per-class scores are averaged over the tiles covering a pixel. For mask classification these are
  Mask2Former's semantic scores (sum over queries of p(class) * sigmoid(mask)); for per-pixel heads the logits,
  recovered as log-probabilities (log softmax(z) = z - logsumexp(z) differs from z by a per-pixel constant, which the
  final softmax cancels, so softmax(mean log p) == softmax(mean z)).
- panoptic: every pixel takes the segment of the tile whose *core* holds it (the cores partition the image at the
  middle of each overlap); segments of neighbouring tiles with the same thing class and an IoU of at least
  MERGE_IOU inside the tiles' common region are one segment, and stuff segments of one class are one segment over
  the whole image (as Mask2Former's panoptic inference does inside one image).
- instance: instances of neighbouring tiles with the same class and an IoU of at least MERGE_IOU inside the tiles'
  common region are one instance: the union of the parts' masks, the highest part score; top-k by score.

Parts of the same tile are never merged (not even through a third tile). Memory: the network and the per-tile
post-processing see one batch of tiles; the merged outputs ("sem_seg" [K, H, W] float, "panoptic_seg" [H, W] int32,
"instances" pred_masks [N, H, W] bool) and the per-tile panoptic ids / instance masks are at output resolution.
"""

from dataclasses import dataclass

import torch
from detectron2.structures import Boxes, Instances

from ..modeling.heads.inference import class_probabilities, window_starts
from ..modeling.postprocess import masks_to_boxes

_PIXEL_BLOCK = 1 << 16  # pixels per block in the IoU products ([N, block] float temporaries)


@dataclass(frozen=True)
class TilingConfig:
    """TEST.TILING: tile (h, w) in network-input pixels, overlap in pixels, tiles per forward, merge IoU."""

    tile_size: tuple[int, int]
    overlap: int
    batch_size: int
    merge_iou: float

    @classmethod
    def from_cfg(cls, cfg) -> "TilingConfig | None":
        """The validated TEST.TILING of ``cfg``, or None when TEST.TILING.ENABLED is False (ValueError naming the key
        for an invalid value)."""
        t = cfg.TEST.TILING
        if not t.ENABLED:
            return None
        size = tuple(int(v) for v in t.TILE_SIZE)
        if len(size) != 2 or min(size) < 32:
            raise ValueError(f"TEST.TILING.TILE_SIZE must be (h, w) with both at least 32, got {list(t.TILE_SIZE)}.")
        if not 0 <= t.OVERLAP < min(size):
            raise ValueError(
                f"TEST.TILING.OVERLAP must be in [0, {min(size)}) for TILE_SIZE {list(size)}, got {t.OVERLAP}."
            )
        if t.BATCH_SIZE < 1:
            raise ValueError(f"TEST.TILING.BATCH_SIZE must be at least 1, got {t.BATCH_SIZE}.")
        if not 0.0 < t.MERGE_IOU <= 1.0:
            raise ValueError(f"TEST.TILING.MERGE_IOU must be in (0, 1], got {t.MERGE_IOU}.")
        return cls(size, int(t.OVERLAP), int(t.BATCH_SIZE), float(t.MERGE_IOU))


@dataclass(frozen=True)
class Tile:
    """One tile: ``box`` (y0, x0, y1, x1) in network-input pixels, ``out`` the same box at output resolution, and
    ``core`` the part of ``out`` this tile owns (the cores of all tiles partition the output image)."""

    box: tuple[int, int, int, int]
    out: tuple[int, int, int, int]
    core: tuple[int, int, int, int]


def _scaled(v: int, n_in: int, n_out: int) -> int:
    """Input coordinate ``v`` of an axis of n_in pixels at output resolution (n_out pixels)."""
    return (v * n_out + n_in // 2) // n_in


def _axis(size: int, out_size: int, tile: int, overlap: int) -> list[tuple[int, int, int, int, int, int]]:
    """Per tile along one axis: (start, end) in input pixels, (start, end) at output resolution and the core
    (start, end) at output resolution (boundaries at the middle of each overlap)."""
    starts = window_starts(size, tile, tile - overlap)
    ends = [min(s + tile, size) for s in starts]
    cuts = [0] + [(s + e) // 2 for s, e in zip(starts[1:], ends[:-1])] + [size]
    return [
        (
            s,
            e,
            _scaled(s, size, out_size),
            _scaled(e, size, out_size),
            _scaled(c0, size, out_size),
            _scaled(c1, size, out_size),
        )
        for s, e, c0, c1 in zip(starts, ends, cuts[:-1], cuts[1:])
    ]


def make_tiles(height: int, width: int, out_height: int, out_width: int, tiling: TilingConfig) -> list[Tile]:
    """Tiles of a (height, width) input whose outputs are (out_height, out_width), row-major. All tiles have the
    tile size (the last ones along an axis are shifted back to end at the border), clipped to smaller images."""
    rows = _axis(height, out_height, tiling.tile_size[0], tiling.overlap)
    cols = _axis(width, out_width, tiling.tile_size[1], tiling.overlap)
    return [
        Tile((y0, x0, y1, x1), (oy0, ox0, oy1, ox1), (cy0, cx0, cy1, cx1))
        for y0, y1, oy0, oy1, cy0, cy1 in rows
        for x0, x1, ox0, ox1, cx0, cx1 in cols
    ]


def _intersection(a: tuple, b: tuple) -> tuple | None:
    y0, x0, y1, x1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (y0, x0, y1, x1) if y0 < y1 and x0 < x1 else None


def _local(region: tuple, origin: tuple) -> tuple[slice, slice]:
    """Slices of ``region`` (absolute y0, x0, y1, x1) in the coordinates of a tile whose output box is ``origin``."""
    return slice(region[0] - origin[0], region[2] - origin[0]), slice(region[1] - origin[1], region[3] - origin[1])


class _Groups:
    """Union-find over parts (tile index, local index); two groups holding parts of the same tile never merge."""

    def __init__(self, tiles_of: list[int]):
        self.parent = list(range(len(tiles_of)))
        self.tiles = [{t} for t in tiles_of]

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int, allow_same_tile: bool = False) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri == rj or (not allow_same_tile and self.tiles[ri] & self.tiles[rj]):
            return
        self.parent[rj] = ri
        self.tiles[ri] |= self.tiles[rj]


def _merge_candidates(pairs: list[tuple[float, int, int]], groups: _Groups, merge_iou: float) -> None:
    """Merges the (iou, part, part) pairs with iou >= merge_iou, highest IoU first."""
    for iou, i, j in sorted(pairs, key=lambda p: -p[0]):
        if iou >= merge_iou:
            groups.union(i, j)


class SemanticAccumulator:
    """Running average of tiles' semantic scores [K, h_t, w_t] over an output image of ``out_size``.

    ``log_probs``: the scores are class probabilities of a per-pixel head; their logs are averaged and the result
    is softmaxed again (see the module docstring). Holds float32 [K, H, W] and a [1, H, W] count.
    """

    def __init__(self, out_size: tuple[int, int], log_probs: bool):
        self.out_size, self.log_probs = out_size, log_probs
        self.total: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def add(self, tile: Tile, scores: torch.Tensor) -> None:
        if self.log_probs:
            scores = scores.float().clamp_min(torch.finfo(torch.float32).tiny).log()
        if self.total is None:
            self.total = scores.new_zeros((scores.shape[0], *self.out_size), dtype=torch.float32)
            self.count = scores.new_zeros((1, *self.out_size), dtype=torch.float32)
        y0, x0, y1, x1 = tile.out
        self.total[:, y0:y1, x0:x1] += scores
        self.count[:, y0:y1, x0:x1] += 1

    def result(self) -> torch.Tensor:
        """[K, H, W]: the mean (softmaxed again for per-pixel heads); consumes the accumulator."""
        total, self.total = self.total.div_(self.count), None
        return class_probabilities(total) if self.log_probs else total


def merge_semantic(tiles: list[Tile], scores: list[torch.Tensor], out_size: tuple[int, int], log_probs: bool):
    """Average of the tiles' scores [K, h_t, w_t] over the output image -> [K, H, W] (see SemanticAccumulator)."""
    acc = SemanticAccumulator(out_size, log_probs)
    for tile, s in zip(tiles, scores):
        acc.add(tile, s)
    return acc.result()


def merge_panoptic(
    tiles: list[Tile], results: list[tuple[torch.Tensor, list[dict]]], out_size: tuple[int, int], merge_iou: float
) -> tuple[torch.Tensor, list[dict]]:
    """Per-tile panoptic results (int32 [h_t, w_t] segment ids, segments_info) -> one (int32 [H, W], segments_info)
    with ids 1..S consecutive in order of first appearance (row-major over tiles), 0 = void."""
    parts, first_part = [], []  # parts: (tile index, local id, category, isthing)
    for t, (_, infos) in enumerate(results):
        first_part.append(len(parts))
        parts.extend((t, int(info["id"]), int(info["category_id"]), bool(info["isthing"])) for info in infos)
    index = {(t, local): i for i, (t, local, _, _) in enumerate(parts)}
    groups = _Groups([p[0] for p in parts])
    stuff_first: dict[int, int] = {}
    for i, (_, _, category, isthing) in enumerate(parts):
        if not isthing:
            groups.union(stuff_first.setdefault(category, i), i, allow_same_tile=True)
    pairs = []
    for a in range(len(tiles)):
        for b in range(a + 1, len(tiles)):
            region = _intersection(tiles[a].out, tiles[b].out)
            if region is None:
                continue
            seg_a = results[a][0][_local(region, tiles[a].out)].reshape(-1).long()
            seg_b = results[b][0][_local(region, tiles[b].out)].reshape(-1).long()
            n_b = int(seg_b.max()) + 1 if seg_b.numel() else 1
            joint = torch.bincount(seg_a * n_b + seg_b).tolist()
            area_a = torch.bincount(seg_a).tolist()
            area_b = torch.bincount(seg_b, minlength=n_b).tolist()
            for code, inter in enumerate(joint):
                ia, ib = divmod(code, n_b)
                if inter == 0 or ia == 0 or ib == 0 or (a, ia) not in index or (b, ib) not in index:
                    continue
                i, j = index[(a, ia)], index[(b, ib)]
                if parts[i][3] and parts[j][3] and parts[i][2] == parts[j][2]:
                    pairs.append((inter / (area_a[ia] + area_b[ib] - inter), i, j))
    _merge_candidates(pairs, groups, merge_iou)

    device = results[0][0].device if results else torch.device("cpu")
    painted = torch.zeros(out_size, dtype=torch.int64, device=device)  # group root + 1, 0 = void
    for t, (tile, (seg, infos)) in enumerate(zip(tiles, results)):
        table = torch.zeros(max([int(i["id"]) for i in infos], default=0) + 1, dtype=torch.int64)
        for info in infos:
            table[int(info["id"])] = groups.find(index[(t, int(info["id"]))]) + 1
        c = tile.core
        local = seg[_local(c, tile.out)].long()
        painted[c[0] : c[2], c[1] : c[3]] = table.to(device)[local]
    present = torch.unique(painted).tolist()
    roots = [r - 1 for r in present if r > 0]
    order = sorted(roots)  # parts are numbered row-major over tiles, so this is order of first appearance
    final = torch.zeros(len(parts) + 1, dtype=torch.int32)
    segments_info = []
    for new_id, root in enumerate(order, start=1):
        final[root + 1] = new_id
        segments_info.append({"id": new_id, "category_id": parts[root][2], "isthing": parts[root][3]})
    return final.to(device)[painted], segments_info


def _mask_iou_pairs(masks_a: torch.Tensor, masks_b: torch.Tensor) -> torch.Tensor:
    """IoU matrix [Na, Nb] of bool masks [Na, P] and [Nb, P], in blocks of pixels."""
    inter = masks_a.new_zeros((masks_a.shape[0], masks_b.shape[0]), dtype=torch.float32)
    for start in range(0, masks_a.shape[1], _PIXEL_BLOCK):
        block_a = masks_a[:, start : start + _PIXEL_BLOCK].float()
        block_b = masks_b[:, start : start + _PIXEL_BLOCK].float()
        inter += block_a @ block_b.t()
    area_a = masks_a.sum(1, dtype=torch.float32)[:, None]
    area_b = masks_b.sum(1, dtype=torch.float32)[None, :]
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))


def merge_instances(
    tiles: list[Tile], results: list[Instances], out_size: tuple[int, int], merge_iou: float, topk: int
) -> Instances:
    """Per-tile Instances (pred_masks bool [n, h_t, w_t], scores, pred_classes) -> one Instances of ``out_size``:
    groups of parts merged across seams, the union of their masks, the highest part score; the ``topk`` best by
    score, ordered by decreasing score; pred_boxes the tight boxes of the merged masks."""
    parts = [(t, k) for t, inst in enumerate(results) for k in range(len(inst))]
    first = [0]
    for inst in results:
        first.append(first[-1] + len(inst))
    groups = _Groups([t for t, _ in parts])
    pairs = []
    for a in range(len(tiles)):
        for b in range(a + 1, len(tiles)):
            region = _intersection(tiles[a].out, tiles[b].out)
            if region is None or len(results[a]) == 0 or len(results[b]) == 0:
                continue
            ma = results[a].pred_masks[(slice(None), *_local(region, tiles[a].out))].flatten(1)
            mb = results[b].pred_masks[(slice(None), *_local(region, tiles[b].out))].flatten(1)
            iou = _mask_iou_pairs(ma, mb)
            same = results[a].pred_classes[:, None] == results[b].pred_classes[None, :]
            for ia, ib in ((iou >= merge_iou) & same).nonzero().tolist():
                pairs.append((float(iou[ia, ib]), first[a] + ia, first[b] + ib))
    _merge_candidates(pairs, groups, merge_iou)

    members: dict[int, list[int]] = {}
    for i in range(len(parts)):
        members.setdefault(groups.find(i), []).append(i)
    device = results[0].pred_masks.device if results else torch.device("cpu")
    scored = []
    for root, group in members.items():
        score = max(float(results[parts[i][0]].scores[parts[i][1]]) for i in group)
        scored.append((score, root))
    scored.sort(key=lambda s: (-s[0], s[1]))
    scored = scored[:topk]
    masks = torch.zeros((len(scored), *out_size), dtype=torch.bool, device=device)
    classes = torch.zeros(len(scored), dtype=torch.int64, device=device)
    for n, (_, root) in enumerate(scored):
        for i in members[root]:
            t, k = parts[i]
            y0, x0, y1, x1 = tiles[t].out
            masks[n, y0:y1, x0:x1] |= results[t].pred_masks[k]
            classes[n] = results[t].pred_classes[k]
    merged = Instances(out_size)
    merged.pred_masks = masks
    merged.pred_boxes = Boxes(masks_to_boxes(masks))
    merged.scores = torch.tensor([s for s, _ in scored], dtype=torch.float32, device=device)
    merged.pred_classes = classes
    return merged


def tiled_inference(model, image: torch.Tensor, out_size: tuple[int, int], tiling: TilingConfig) -> dict:
    """The model's outputs for one image [3, H, W] (model input: resized, uint8, the model's channel order) at
    ``out_size`` (height, width), computed tile by tile (batches of tiling.batch_size) and merged."""
    height, width = image.shape[-2:]
    tiles = make_tiles(height, width, out_size[0], out_size[1], tiling)
    from ..modeling.meta_arch import PerPixelSegmentor

    sem = SemanticAccumulator(out_size, log_probs=isinstance(model, PerPixelSegmentor))
    pan, ins = [], []
    for start in range(0, len(tiles), tiling.batch_size):
        batch = tiles[start : start + tiling.batch_size]
        inputs = [
            {
                "image": image[:, t.box[0] : t.box[2], t.box[1] : t.box[3]],
                "height": t.out[2] - t.out[0],
                "width": t.out[3] - t.out[1],
            }
            for t in batch
        ]
        for tile, out in zip(batch, model(inputs)):
            if "sem_seg" in out:
                sem.add(tile, out.pop("sem_seg"))
            if "panoptic_seg" in out:
                pan.append(out["panoptic_seg"])
            if "instances" in out:
                ins.append(out["instances"])
    result = {}
    if sem.total is not None:
        result["sem_seg"] = sem.result()
    if pan:
        result["panoptic_seg"] = merge_panoptic(tiles, pan, out_size, tiling.merge_iou)
    if ins:
        result["instances"] = merge_instances(tiles, ins, out_size, tiling.merge_iou, model.test_topk_per_image)
    return result
