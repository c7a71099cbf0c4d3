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
post-processing see one batch of tiles; the merges stream (:class:`PanopticMerger`, :class:`InstanceMerger`): a
tile's panoptic ids and instance masks are kept only until the last tile overlapping it is merged; instance parts
keep their masks cropped to their boxes and bit-packed until their seam component is settled, and then only groups
that can still reach the top-k are kept. What grows with the image is the outputs ("sem_seg" [K, H, W] float with
its [1, H, W] count, "panoptic_seg" [H, W] int32, "instances" pred_masks [N, H, W] bool), the tiles of about one row,
and the packed masks of components that span many tiles (one byte per 8 pixels of their parts' boxes).
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


def _find_root(parent: list[int], i: int) -> int:
    """The root of ``i`` in the union-find forest ``parent`` (paths halved on the way)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


class _Groups:
    """Union-find over parts (tile index, local index); two groups holding parts of the same tile never merge."""

    def __init__(self, tiles_of: list[int]):
        self.parent = list(range(len(tiles_of)))
        self.tiles = [{t} for t in tiles_of]

    def find(self, i: int) -> int:
        return _find_root(self.parent, i)

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


_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)


def pack_mask(mask: torch.Tensor) -> tuple[tuple[int, int], torch.Tensor]:
    """bool [h, w] -> ((h, w), uint8 [ceil(h * w / 8)]): 8 pixels per byte, row-major, the first in the low bit."""
    flat = mask.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 8)])
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=mask.device)
    return tuple(mask.shape), (flat.view(-1, 8) * weights).sum(1, dtype=torch.uint8)


def unpack_mask(shape: tuple[int, int], packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_mask`: bool [h, w]."""
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=packed.device)
    return (packed[:, None] & weights).ne(0).view(-1)[: shape[0] * shape[1]].view(shape)


def last_neighbours(tiles: list[Tile]) -> list[int]:
    """Per tile, the largest index of a tile whose output box intersects it (itself included): once that tile is
    merged, nothing later needs this tile's results for a seam."""
    if not tiles:
        return []
    boxes = torch.tensor([t.out for t in tiles], dtype=torch.int64)  # [T, 4]
    index = torch.arange(len(tiles))
    last = []
    for y0, x0, y1, x1 in boxes.tolist():
        hits = (
            (boxes[:, 0] < y1) & (boxes[:, 2] > y0) & (boxes[:, 1] < x1) & (boxes[:, 3] > x0)
        )  # [T] (boxes overlap with positive area)
        last.append(int(index[hits].max()))
    return last


class PanopticMerger:
    """Streaming :func:`merge_panoptic`: per-tile panoptic results are added in tile order, each tile's core is
    painted into one int32 [H, W] map of part numbers at once, and a tile's segment ids are kept only until the
    last tile overlapping it has been added (``retained`` is bounded by the tiles of about one row, not by the
    image). Seam pairs are recorded as they appear and resolved at the end exactly as the all-at-once merge does
    (stuff of one class first, then thing pairs by decreasing IoU, ties in tile order).
    """

    def __init__(self, tiles: list[Tile], out_size: tuple[int, int], merge_iou: float):
        self.tiles, self.out_size, self.merge_iou = tiles, out_size, merge_iou
        self.last = last_neighbours(tiles)
        self.parts: list[tuple[int, int, int, bool]] = []  # (tile, local id, category, isthing)
        self.index: dict[tuple[int, int], int] = {}
        self.pairs: list[tuple[float, int, int, int, int]] = []  # (iou, tile a, tile b, part a, part b)
        self.retained: dict[int, torch.Tensor] = {}  # tile -> int32 [h_t, w_t] local ids
        self.painted: torch.Tensor | None = None  # int32 [H, W]: part number + 1, 0 = void
        self.added = 0

    def add(self, seg: torch.Tensor, infos: list[dict]) -> None:
        """The next tile's result: seg int32 [h_t, w_t] local segment ids (0 = void), infos its segments_info."""
        b, tile = self.added, self.tiles[self.added]
        table = torch.zeros(max([int(i["id"]) for i in infos], default=0) + 1, dtype=torch.int32)
        for info in infos:
            self.index[(b, int(info["id"]))] = len(self.parts)
            table[int(info["id"])] = len(self.parts) + 1
            self.parts.append((b, int(info["id"]), int(info["category_id"]), bool(info["isthing"])))
        for a, seg_a in self.retained.items():
            region = _intersection(self.tiles[a].out, tile.out)
            if region is not None:
                self._pairs(a, b, seg_a[_local(region, self.tiles[a].out)], seg[_local(region, tile.out)])
        if self.painted is None:
            self.painted = torch.zeros(self.out_size, dtype=torch.int32, device=seg.device)
        c = tile.core
        self.painted[c[0] : c[2], c[1] : c[3]] = table.to(seg.device)[seg[_local(c, tile.out)].long()]
        self.retained[b] = seg
        self.added += 1
        for a in [a for a in self.retained if self.last[a] < self.added]:
            del self.retained[a]

    def _pairs(self, a: int, b: int, seg_a: torch.Tensor, seg_b: torch.Tensor) -> None:
        """Thing parts of tiles a < b with the same category and their IoU inside the common region."""
        seg_a, seg_b = seg_a.reshape(-1).long(), seg_b.reshape(-1).long()
        n_b = int(seg_b.max()) + 1 if seg_b.numel() else 1
        joint = torch.bincount(seg_a * n_b + seg_b).tolist()
        area_a = torch.bincount(seg_a).tolist()
        area_b = torch.bincount(seg_b, minlength=n_b).tolist()
        for code, inter in enumerate(joint):
            ia, ib = divmod(code, n_b)
            if inter == 0 or ia == 0 or ib == 0 or (a, ia) not in self.index or (b, ib) not in self.index:
                continue
            i, j = self.index[(a, ia)], self.index[(b, ib)]
            if self.parts[i][3] and self.parts[j][3] and self.parts[i][2] == self.parts[j][2]:
                self.pairs.append((inter / (area_a[ia] + area_b[ib] - inter), a, b, i, j))

    def result(self) -> tuple[torch.Tensor, list[dict]]:
        """(int32 [H, W], segments_info) with ids 1..S in order of first appearance; consumes the merger."""
        if self.added != len(self.tiles):
            raise RuntimeError(f"PanopticMerger: {self.added} of {len(self.tiles)} tiles were added.")
        groups = _Groups([p[0] for p in self.parts])
        stuff_first: dict[int, int] = {}
        for i, (_, _, category, isthing) in enumerate(self.parts):
            if not isthing:
                groups.union(stuff_first.setdefault(category, i), i, allow_same_tile=True)
        # (tile a, tile b) in order, then the pairs' own order: the order of the all-at-once loop over tile pairs
        _merge_candidates(
            [(iou, i, j) for iou, _, _, i, j in sorted(self.pairs, key=lambda p: p[1:3])], groups, self.merge_iou
        )
        painted, self.painted = self.painted, None
        if painted is None:
            painted = torch.zeros(self.out_size, dtype=torch.int32)
        present = [p - 1 for p in torch.unique(painted).tolist() if p > 0]
        roots = sorted({groups.find(p) for p in present})  # parts are numbered row-major: order of first appearance
        new_id = {root: n for n, root in enumerate(roots, start=1)}
        table = torch.zeros(len(self.parts) + 1, dtype=torch.int32)
        for p in present:
            table[p + 1] = new_id[groups.find(p)]
        table = table.to(painted.device)
        rows = max(1, _PIXEL_BLOCK * 4 // max(painted.shape[1], 1))
        for y in range(0, painted.shape[0], rows):  # relabelled in place, in bands (no int64 copy of the map)
            painted[y : y + rows] = table[painted[y : y + rows].long()]
        infos = [{"id": new_id[r], "category_id": self.parts[r][2], "isthing": self.parts[r][3]} for r in roots]
        return painted, infos


def merge_panoptic(
    tiles: list[Tile], results: list[tuple[torch.Tensor, list[dict]]], out_size: tuple[int, int], merge_iou: float
) -> tuple[torch.Tensor, list[dict]]:
    """Per-tile panoptic results (int32 [h_t, w_t] segment ids, segments_info), in tile order -> one
    (int32 [H, W], segments_info) with ids 1..S consecutive in order of first appearance (row-major over tiles),
    0 = void. (All at once through :class:`PanopticMerger`.)"""
    merger = PanopticMerger(tiles, out_size, merge_iou)
    for seg, infos in results:
        merger.add(seg, infos)
    return merger.result()


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


class InstanceMerger:
    """Streaming :func:`merge_instances`: per-tile Instances are added in tile order.

    A tile's full masks are kept only until the last tile overlapping it has been added (for the IoU of its parts
    with their neighbours' inside the common region); each part keeps its mask cropped to its box, 8 pixels per
    byte (:func:`pack_mask`). Seam pairs (same class, IoU >= merge_iou) join parts into components; a component is
    *settled* once every tile that could still pair with one of its parts has been added. It is then resolved
    exactly as the all-at-once merge resolves it (pairs by decreasing IoU, ties in tile order, never two parts of
    one tile), and of its groups only those that can still be among the ``topk`` best by (score, first part) are
    kept, with their parts' crops: the final top-k can only be drawn from them, so the result is that of the
    all-at-once merge while the memory holds the open components (parts of about one row of tiles) and at most
    ``topk`` settled groups.
    """

    def __init__(self, tiles: list[Tile], out_size: tuple[int, int], merge_iou: float, topk: int):
        self.tiles, self.out_size, self.merge_iou, self.topk = tiles, out_size, merge_iou, topk
        self.last = last_neighbours(tiles)
        self.part_tile: list[int] = []
        self.part_score: list[float] = []
        self.part_class: list[int] = []
        self.first: list[int] = []  # first part number of each added tile
        self.crops: dict[int, tuple] = {}  # part -> (global box, its mask in the box packed by pack_mask)
        self.retained: dict[int, Instances] = {}  # tile -> its Instances (full-tile masks)
        self.parent: list[int] = []  # components of the seam-pair graph (plain union-find)
        self.members: dict[int, list[int]] = {}  # open component root -> its parts
        self.pairs: dict[int, list[tuple]] = {}  # open component root -> (a, b, ia, ib, iou, part i, part j)
        self.open_last: dict[int, int] = {}  # open component root -> largest last neighbour of its parts' tiles
        self.kept: list[tuple[float, int, list[int]]] = []  # settled groups: (score, root part, parts)
        self.device = torch.device("cpu")
        self.added = 0

    def _join(self, i: int, j: int) -> int:
        ri, rj = _find_root(self.parent, i), _find_root(self.parent, j)
        if ri != rj:
            self.parent[rj] = ri
            self.members[ri] += self.members.pop(rj)
            self.pairs[ri] += self.pairs.pop(rj)
            self.open_last[ri] = max(self.open_last[ri], self.open_last.pop(rj))
        return ri

    def add(self, inst: Instances) -> None:
        """The next tile's Instances (pred_masks bool [n, h_t, w_t], scores [n], pred_classes [n])."""
        b, tile = self.added, self.tiles[self.added]
        self.device = inst.pred_masks.device
        self.first.append(len(self.part_tile))
        boxes = masks_to_boxes(inst.pred_masks).long().tolist() if len(inst) else []  # [n] x (x0, y0, x1, y1)
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            i = len(self.part_tile)
            self.part_tile.append(b)
            self.part_score.append(float(inst.scores[k]))
            self.part_class.append(int(inst.pred_classes[k]))
            box = (tile.out[0] + y0, tile.out[1] + x0, tile.out[0] + y1, tile.out[1] + x1)
            self.crops[i] = (box, pack_mask(inst.pred_masks[k, y0:y1, x0:x1]))
            self.parent.append(i)
            self.members[i], self.pairs[i], self.open_last[i] = [i], [], self.last[b]
        for a, inst_a in self.retained.items():
            region = _intersection(self.tiles[a].out, tile.out)
            if region is None or len(inst_a) == 0 or len(inst) == 0:
                continue
            ma = inst_a.pred_masks[(slice(None), *_local(region, self.tiles[a].out))].flatten(1)
            mb = inst.pred_masks[(slice(None), *_local(region, tile.out))].flatten(1)
            iou = _mask_iou_pairs(ma, mb)
            same = inst_a.pred_classes[:, None] == inst.pred_classes[None, :]
            for ia, ib in ((iou >= self.merge_iou) & same).nonzero().tolist():
                i, j = self.first[a] + ia, self.first[b] + ib
                self.pairs[self._join(i, j)].append((a, b, ia, ib, float(iou[ia, ib]), i, j))
        self.retained[b] = inst
        self.added += 1
        for a in [a for a in self.retained if self.last[a] < self.added]:
            del self.retained[a]
        for root in [r for r, last in self.open_last.items() if last < self.added]:
            self._settle(root)

    def _settle(self, root: int) -> None:
        """Resolves a component no later tile can reach into groups; keeps those that can reach the top-k."""
        parts = sorted(self.members.pop(root))
        pairs = sorted(self.pairs.pop(root), key=lambda p: p[:4])  # the all-at-once loop's order
        del self.open_last[root]
        local = {p: n for n, p in enumerate(parts)}
        groups = _Groups([self.part_tile[p] for p in parts])
        _merge_candidates([(iou, local[i], local[j]) for _, _, _, _, iou, i, j in pairs], groups, self.merge_iou)
        by_root: dict[int, list[int]] = {}
        for p in parts:
            by_root.setdefault(parts[groups.find(local[p])], []).append(p)
        for group_root, group in by_root.items():
            self.kept.append((max(self.part_score[p] for p in group), group_root, group))
        self.kept.sort(key=lambda g: (-g[0], g[1]))
        for _, _, group in self.kept[self.topk :]:
            for p in group:
                del self.crops[p]
        del self.kept[self.topk :]

    def result(self) -> Instances:
        """Instances of ``out_size``: the ``topk`` best groups by score, the union of their parts' masks."""
        if self.added != len(self.tiles):
            raise RuntimeError(f"InstanceMerger: {self.added} of {len(self.tiles)} tiles were added.")
        masks = torch.zeros((len(self.kept), *self.out_size), dtype=torch.bool, device=self.device)
        classes = torch.zeros(len(self.kept), dtype=torch.int64, device=self.device)
        for n, (_, _, group) in enumerate(self.kept):
            for p in group:
                (y0, x0, y1, x1), crop = self.crops.pop(p)
                masks[n, y0:y1, x0:x1] |= unpack_mask(*crop)
            classes[n] = self.part_class[group[-1]]
        merged = Instances(self.out_size)
        merged.pred_masks = masks
        merged.pred_boxes = Boxes(masks_to_boxes(masks))
        merged.scores = torch.tensor([s for s, _, _ in self.kept], dtype=torch.float32, device=self.device)
        merged.pred_classes = classes
        self.kept = []
        return merged


def merge_instances(
    tiles: list[Tile], results: list[Instances], out_size: tuple[int, int], merge_iou: float, topk: int
) -> Instances:
    """Per-tile Instances (pred_masks bool [n, h_t, w_t], scores, pred_classes), in tile order -> one Instances of
    ``out_size``: groups of parts merged across seams, the union of their masks, the highest part score; the
    ``topk`` best by score, ordered by decreasing score; pred_boxes the tight boxes of the merged masks. (All at once
    through :class:`InstanceMerger`.)"""
    merger = InstanceMerger(tiles, out_size, merge_iou, topk)
    for inst in results:
        merger.add(inst)
    return merger.result()


def tiled_inference(model, image: torch.Tensor, out_size: tuple[int, int], tiling: TilingConfig) -> dict:
    """The model's outputs for one image [3, H, W] (model input: resized, uint8, the model's channel order) at
    ``out_size`` (height, width), computed tile by tile (batches of tiling.batch_size) and merged."""
    height, width = image.shape[-2:]
    tiles = make_tiles(height, width, out_size[0], out_size[1], tiling)
    from ..modeling.meta_arch import PerPixelSegmentor

    sem = SemanticAccumulator(out_size, log_probs=isinstance(model, PerPixelSegmentor))
    pan = PanopticMerger(tiles, out_size, tiling.merge_iou)
    ins = InstanceMerger(tiles, out_size, tiling.merge_iou, getattr(model, "test_topk_per_image", 100))
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
                pan.add(*out.pop("panoptic_seg"))
            if "instances" in out:
                ins.add(out.pop("instances"))
    result = {}
    if sem.total is not None:
        result["sem_seg"] = sem.result()
    if pan.added:
        result["panoptic_seg"] = pan.result()
    if ins.added:
        result["instances"] = ins.result()
    return result
