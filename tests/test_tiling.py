"""Tiled inference (universal_seg.inference.tiling): tile layout, and the merges of per-tile results against
independent truths: a known score field cut into tiles, and hand-drawn objects (a disk and a bar) cut by seams.
End-to-end tiling of real models is in tests/test_inference.py."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances

from universal_seg.config import add_universal_seg_config
from universal_seg.inference.tiling import (
    InstanceMerger,
    PanopticMerger,
    Tile,
    TilingConfig,
    _Groups,
    _intersection,
    _local,
    _mask_iou_pairs,
    _merge_candidates,
    make_tiles,
    masks_to_boxes,
    merge_instances,
    merge_panoptic,
    merge_semantic,
    pack_mask,
    unpack_mask,
)


def tiling(tile=(64, 64), overlap=16, merge_iou=0.5):
    return TilingConfig(tile_size=tile, overlap=overlap, batch_size=2, merge_iou=merge_iou)


@pytest.mark.parametrize(
    "size,out,tile,overlap",
    [((100, 150), (100, 150), (64, 64), 16), ((130, 97), (260, 194), (48, 40), 10), ((50, 60), (50, 60), (64, 64), 8)],
)
def test_tiles_cover_the_image_and_their_cores_partition_it(size, out, tile, overlap):
    tiles = make_tiles(*size, *out, tiling(tile, overlap))
    covered = torch.zeros(out, dtype=torch.int64)
    owned = torch.zeros(out, dtype=torch.int64)
    for t in tiles:
        y0, x0, y1, x1 = t.box
        assert (y1 - y0, x1 - x0) == (min(tile[0], size[0]), min(tile[1], size[1]))  # every tile has the tile size
        covered[t.out[0] : t.out[2], t.out[1] : t.out[3]] += 1
        c = t.core
        assert t.out[0] <= c[0] <= c[2] <= t.out[2] and t.out[1] <= c[1] <= c[3] <= t.out[3]
        owned[c[0] : c[2], c[1] : c[3]] += 1
    assert covered.min() >= 1
    assert torch.equal(owned, torch.ones_like(owned))
    rows = len({t.box[0] for t in tiles})
    expected_rows = max(math.ceil((size[0] - tile[0]) / (tile[0] - overlap)), 0) + 1
    assert rows == expected_rows


def test_invalid_tiling_keys_are_refused_naming_the_key():
    cfg = get_cfg()
    add_universal_seg_config(cfg)
    assert TilingConfig.from_cfg(cfg) is None
    cfg.TEST.TILING.ENABLED = True
    assert TilingConfig.from_cfg(cfg) == TilingConfig((512, 512), 128, 4, 0.5)
    cfg.TEST.TILING.OVERLAP = 512
    with pytest.raises(ValueError, match="TEST.TILING.OVERLAP"):
        TilingConfig.from_cfg(cfg)


def test_semantic_merge_of_crops_of_a_field_is_the_field():
    """Tiles that see exact crops of a score field average back to it; per-pixel probabilities (softmax of crops
    of a logit field, each tile's logits shifted by its own constant) merge to softmax(field)."""
    out = (90, 130)
    tiles = make_tiles(*out, *out, tiling((40, 50), 12))
    field = torch.randn(5, *out, generator=torch.Generator().manual_seed(0)) * 3
    crops = [field[:, t.out[0] : t.out[2], t.out[1] : t.out[3]] for t in tiles]
    torch.testing.assert_close(merge_semantic(tiles, crops, out, log_probs=False), field, rtol=0, atol=1e-5)
    probs = [(c + 7.0 * i).softmax(0) for i, c in enumerate(crops)]
    merged = merge_semantic(tiles, probs, out, log_probs=True)
    torch.testing.assert_close(merged, field.softmax(0), rtol=0, atol=1e-5)


def disk(out, center, radius):
    yy, xx = torch.meshgrid(torch.arange(out[0]), torch.arange(out[1]), indexing="ij")
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def tile_panoptic(truth_ids, truth_info, tile, shift):
    """The truth's crop for a tile, with its segment ids renumbered (local id = rank + shift) like a tile's own
    inference would number them."""
    crop = truth_ids[tile.out[0] : tile.out[2], tile.out[1] : tile.out[3]]
    present = [i for i in sorted(torch.unique(crop).tolist()) if i > 0]
    local = torch.zeros_like(crop)
    infos = []
    for rank, gid in enumerate(present):
        lid = rank + 1 + shift
        local[crop == gid] = lid
        info = next(x for x in truth_info if x["id"] == gid)
        infos.append({"id": lid, "category_id": info["category_id"], "isthing": info["isthing"]})
    return local.int(), infos


def test_panoptic_objects_cut_by_seams_come_out_whole():
    """A disk crossing two seams (category 3), a bar crossing one (category 3, touching nothing else), background
    stuff (category 0) everywhere else: each tile sees its crop, numbered its own way; merged, the ids equal the
    truth up to renumbering and there are exactly 3 segments."""
    out = (96, 160)
    tiles = make_tiles(*out, *out, tiling((64, 64), 24))
    assert len(tiles) > 4
    truth = torch.ones(out, dtype=torch.int32)  # 1 = background stuff
    truth[disk(out, (48, 60), 20)] = 2
    truth[80:90, 20:150] = 3
    info = [
        {"id": 1, "category_id": 0, "isthing": False},
        {"id": 2, "category_id": 3, "isthing": True},
        {"id": 3, "category_id": 3, "isthing": True},
    ]
    results = [tile_panoptic(truth, info, t, shift=3 * i) for i, t in enumerate(tiles)]
    seg, segments = merge_panoptic(tiles, results, out, merge_iou=0.5)
    assert len(segments) == 3
    assert sorted((s["category_id"], s["isthing"]) for s in segments) == [(0, False), (3, True), (3, True)]
    # the same partition of the pixels as the truth: a one-to-one map between ids
    pairs = torch.unique(torch.stack([seg.flatten(), truth.flatten()]), dim=1)
    assert pairs.shape[1] == 3 and len(set(pairs[0].tolist())) == 3


def instances_of(masks, classes, scores, size):
    inst = Instances(size)
    inst.pred_masks = masks
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def test_instance_cut_by_a_seam_is_one_instance_and_other_classes_stay_apart():
    """A disk of class 2 across the seam of two tiles, seen by both (score 0.9 and 0.6), plus in the left tile the
    same pixels labelled class 5 (a second (query, class) pair) and a small square of class 2 far from the seam:
    merged, the class-2 disk is one instance whose mask is the whole disk with score 0.9."""
    out = (64, 112)
    tiles = make_tiles(*out, *out, tiling((64, 64), 16))
    assert len(tiles) == 2
    obj = disk(out, (32, 56), 14)
    square = torch.zeros(out, dtype=torch.bool)
    square[5:12, 5:12] = True
    per_tile = []
    for t, (scores, extra) in zip(tiles, ((0.9, True), (0.6, False))):
        crop = (slice(t.out[0], t.out[2]), slice(t.out[1], t.out[3]))
        masks, classes, s = [obj[crop]], [2], [scores]
        if extra:
            masks += [obj[crop], square[crop]]
            classes += [5, 2]
            s += [0.3, 0.8]
        per_tile.append(instances_of(torch.stack(masks), classes, s, (t.out[2] - t.out[0], t.out[3] - t.out[1])))
    merged = merge_instances(tiles, per_tile, out, merge_iou=0.5, topk=10)
    assert len(merged) == 3
    assert merged.scores.tolist() == pytest.approx([0.9, 0.8, 0.3])
    assert merged.pred_classes.tolist() == [2, 2, 5]
    assert torch.equal(merged.pred_masks[0], obj)
    assert torch.equal(merged.pred_masks[1], square)
    assert merged.pred_boxes.tensor[0].tolist() == [42.0, 18.0, 71.0, 47.0]  # disk: x 42..70, y 18..46
    assert len(merge_instances(tiles, per_tile, out, merge_iou=0.5, topk=2)) == 2


# ------------------------------------------------------------------------------------------------------------------
# The streaming merges against the all-at-once merges they replaced (kept here as the slow reference: every tile's
# full results held to the end, all seam pairs resolved together, all groups ranked together).


def reference_merge_panoptic(
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


def reference_merge_instances(
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


def random_tile_results(seed, out, tiles):
    """Objects (discs and bars of 3 thing classes, stuff of 2 classes) seen by every tile with jitter: segments
    dropped, grown or shrunk by a pixel, numbered at random; instances with scores on a 0.1 grid (ties), the same
    pixels under a second class, and low-scoring junk rectangles."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.ones(out, dtype=torch.int64)  # 1, 2: stuff
    truth[:, out[1] // 2 :] = 2
    classes = {1: (0, False), 2: (1, False)}
    for n in range(3, 12):
        cy, cx = int(torch.randint(0, out[0], (1,), generator=g)), int(torch.randint(0, out[1], (1,), generator=g))
        if n % 3:
            truth[disk(out, (cy, cx), int(torch.randint(6, 30, (1,), generator=g)))] = n
        else:
            truth[max(cy - 4, 0) : cy + 4, max(cx - 60, 0) : cx + 60] = n
        classes[n] = (2 + n % 3, True)
    pan, ins = [], []
    for t in tiles:
        crop = truth[t.out[0] : t.out[2], t.out[1] : t.out[3]].clone()
        size = tuple(crop.shape)
        ids = [i for i in torch.unique(crop).tolist()]
        local = torch.zeros(size, dtype=torch.int32)
        infos, masks, inst_classes, scores = [], [], [], []
        perm = torch.randperm(len(ids) + 5, generator=g).tolist()
        for rank, gid in enumerate(ids):
            m = crop == gid
            r = float(torch.rand(1, generator=g))
            if r < 0.1:
                continue  # this tile misses the segment
            if r < 0.3:
                m = torch.nn.functional.max_pool2d(m[None, None].float(), 3, 1, 1)[0, 0].bool() & (local == 0)
            elif r < 0.45:
                m = -torch.nn.functional.max_pool2d(-m[None, None].float(), 3, 1, 1)[0, 0] > 0
            lid = perm[rank] + 1
            local[m & (local == 0)] = lid
            category, isthing = classes[gid]
            infos.append({"id": lid, "category_id": category, "isthing": isthing})
            if isthing:
                masks.append(m)
                inst_classes.append(category)
                scores.append(round(float(torch.rand(1, generator=g)) * 10) / 10)
                if r > 0.8:  # the same pixels under another class
                    masks.append(m)
                    inst_classes.append(category + 1)
                    scores.append(round(float(torch.rand(1, generator=g)) * 10) / 10)
        infos = [i for i in infos if bool((local == i["id"]).any())]
        for _ in range(3):  # junk
            m = torch.zeros(size, dtype=torch.bool)
            y, x = int(torch.randint(0, size[0], (1,), generator=g)), int(torch.randint(0, size[1], (1,), generator=g))
            m[y : y + 20, x : x + 30] = True
            masks.append(m)
            inst_classes.append(int(torch.randint(2, 5, (1,), generator=g)))
            scores.append(round(float(torch.rand(1, generator=g)) * 3) / 10)
        pan.append((local, infos))
        ins.append(instances_of(torch.stack(masks), inst_classes, scores, size))
    return pan, ins


@pytest.mark.parametrize("seed", range(6))
def test_streaming_merges_equal_the_all_at_once_merges(seed):
    out = (150, 230)
    tiles = make_tiles(*out, *out, tiling((64, 64), 20))
    assert len(tiles) == 15
    pan, ins = random_tile_results(seed, out, tiles)
    seg, infos = merge_panoptic(tiles, pan, out, merge_iou=0.5)
    ref_seg, ref_infos = reference_merge_panoptic(tiles, pan, out, merge_iou=0.5)
    assert torch.equal(seg, ref_seg) and seg.dtype == ref_seg.dtype == torch.int32
    assert infos == ref_infos
    assert len(infos) > 5
    for topk in (3, 8, 1000):
        merged = merge_instances(tiles, ins, out, merge_iou=0.5, topk=topk)
        ref = reference_merge_instances(tiles, ins, out, merge_iou=0.5, topk=topk)
        assert len(merged) == len(ref) == min(topk, len(ref))
        assert torch.equal(merged.pred_masks, ref.pred_masks)
        assert torch.equal(merged.scores, ref.scores)
        assert torch.equal(merged.pred_classes, ref.pred_classes)
        assert torch.equal(merged.pred_boxes.tensor, ref.pred_boxes.tensor)


def test_streaming_merges_hold_about_one_row_of_tiles():
    """On a 10 x 10 grid of tiles, no more than a row and a tile of per-tile results are ever held, and of the
    settled instance groups never more than top-k."""
    out = (10 * 48 + 16, 10 * 48 + 16)
    tiles = make_tiles(*out, *out, tiling((64, 64), 16))
    assert len(tiles) == 100
    pan, ins = random_tile_results(0, out, tiles)
    pm, im = PanopticMerger(tiles, out, 0.5), InstanceMerger(tiles, out, 0.5, topk=5)
    most_pan = most_ins = most_kept = 0
    for p, i in zip(pan, ins):
        pm.add(*p)
        im.add(i)
        most_pan, most_ins = max(most_pan, len(pm.retained)), max(most_ins, len(im.retained))
        most_kept = max(most_kept, len(im.kept))
    assert most_pan <= 12 and most_ins <= 12
    assert most_kept <= 5
    assert torch.equal(pm.result()[0], reference_merge_panoptic(tiles, pan, out, 0.5)[0])
    assert torch.equal(im.result().pred_masks, reference_merge_instances(tiles, ins, out, 0.5, 5).pred_masks)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 8), (64, 33), (0, 4)])
def test_packed_masks_equal_numpys_packbits_and_round_trip(shape):
    import numpy as np

    mask = torch.rand(shape, generator=torch.Generator().manual_seed(shape[0] * 100 + shape[1])) > 0.5
    packed_shape, packed = pack_mask(mask)
    assert packed_shape == shape and packed.dtype == torch.uint8
    assert packed.tolist() == np.packbits(mask.numpy().reshape(-1), bitorder="little").tolist()
    assert torch.equal(unpack_mask(packed_shape, packed), mask)
