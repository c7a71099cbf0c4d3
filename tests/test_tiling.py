"""Tiled inference (universal_seg.inference.tiling): tile layout, and the merges of per-tile results against
independent truths: a known score field cut into tiles, and hand-drawn objects (a disk and a bar) cut by seams.
End-to-end tiling of real models is in tests/test_inference.py."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Instances

from universal_seg.config import add_universal_seg_config
from universal_seg.inference.tiling import (
    TilingConfig,
    make_tiles,
    merge_instances,
    merge_panoptic,
    merge_semantic,
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
