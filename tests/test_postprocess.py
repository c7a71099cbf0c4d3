"""Post-processing on hand-built inputs with known expected outputs."""

import math

import pytest
import torch
from detectron2.structures import BitMasks, Instances

from universal_seg.modeling.postprocess import (
    instance_inference,
    masks_to_boxes,
    panoptic_inference,
    sem_seg_postprocess,
    semantic_inference,
)

IN, OUT = 10.0, -10.0  # mask logits: sigmoid ~ 1 / ~ 0


def class_logits(probs):
    """[Q, K+1] logits whose softmax is exactly the given rows of probabilities (each row sums to 1)."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


def one_hot_row(num_classes, label, score):
    """K+1 probabilities: `score` on `label`, the rest spread evenly."""
    rest = (1 - score) / num_classes
    return [score if c == label else rest for c in range(num_classes + 1)]


def rect_mask(hw, rows, cols, inside=IN, outside=OUT):
    mask = torch.full(hw, outside)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = inside
    return mask


# ----------------------------------------------------------------------------------------------- semantic
def test_semantic_inference_matches_hand_einsum():
    mask_cls = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])  # Q = 2, K = 2
    mask_pred = torch.tensor([[[0.0, 1.0], [-1.0, 2.0]], [[3.0, -2.0], [0.5, 0.0]]])  # [2, 2, 2]
    out = semantic_inference(mask_cls, mask_pred)
    assert out.shape == (2, 2, 2)
    for c in range(2):
        for y in range(2):
            for x in range(2):
                expected = 0.0
                for q in range(2):
                    row = [math.exp(v) for v in mask_cls[q].tolist()]
                    expected += row[c] / sum(row) / (1 + math.exp(-mask_pred[q, y, x].item()))
                assert out[c, y, x].item() == pytest.approx(expected, rel=1e-6)


def _semantic_written_out(mask_cls, mask_pred):
    """sum_q softmax(mask_cls)[q, k] * sigmoid(mask_pred[q]) in float64, no-object dropped: [K, H, W]."""
    probs = mask_cls.double().softmax(-1)[:, :-1]
    return torch.einsum("qk,qhw->khw", probs, mask_pred.double().sigmoid())


def test_semantic_inference_blocked_onednn_product_equals_written_out(monkeypatch):
    """fp32 on the CPU (the oneDNN product, in blocks: several, the last one partial) and float64 (torch.mm)."""
    import universal_seg.modeling.postprocess as postprocess

    torch.manual_seed(0)
    mask_cls, mask_pred = torch.randn(9, 6), torch.randn(9, 37, 41) * 4
    monkeypatch.setattr(postprocess, "_SEMANTIC_BLOCK_ELEMENTS_ONEDNN", 9 * 500)  # 500 pixels a block: 4 blocks
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        out = semantic_inference(mask_cls.to(dtype), mask_pred.to(dtype))
        assert out.dtype == dtype and out.shape == (5, 37, 41)
        torch.testing.assert_close(out.double(), _semantic_written_out(mask_cls, mask_pred), rtol=tol, atol=tol)


def test_semantic_and_instance_inference_under_bf16_autocast():
    """Under CPU bf16 autocast (benchmarks/m2f_inference.py --amp) the semantic scores come in bf16 within bf16
    rounding of the written-out product of the same bf16 inputs, and instance masks are exactly logit > 0."""
    torch.manual_seed(0)
    mask_cls, mask_pred = torch.randn(9, 6).bfloat16(), (torch.randn(9, 37, 41) * 4).bfloat16()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        sem = semantic_inference(mask_cls, mask_pred)
        inst = instance_inference(mask_cls, mask_pred, num_classes=5, test_topk_per_image=12)
    assert sem.dtype == torch.bfloat16 and sem.shape == (5, 37, 41)
    expected = _semantic_written_out(mask_cls, mask_pred)
    assert float((sem.double() - expected).abs().max() / expected.abs().max()) < 1e-2
    probs = mask_cls.double().softmax(-1)[:, :-1].flatten()
    top = probs.topk(12).indices
    query = top // 5
    assert torch.equal(inst.pred_masks, mask_pred[query] > 0)
    torch.testing.assert_close(
        inst.scores.double()[:3],
        probs[top[:3]]
        * (
            (mask_pred[query[:3]].double().sigmoid() * (mask_pred[query[:3]] > 0)).flatten(1).sum(1)
            / (mask_pred[query[:3]] > 0).flatten(1).sum(1)
        ),
        rtol=2e-2,
        atol=1e-3,
    )


def test_sem_seg_postprocess_crops_padding_then_resizes():
    result = torch.full((2, 4, 4), 5.0)
    result[:, :2, :3] = torch.tensor([1.0, 2.0])[:, None, None]  # the valid 2x3 region
    out = sem_seg_postprocess(result, (2, 3), 4, 6)
    assert out.shape == (2, 4, 6)
    assert torch.allclose(out[0], torch.ones(4, 6)) and torch.allclose(out[1], torch.full((4, 6), 2.0))


# ----------------------------------------------------------------------------------------------- panoptic
K = 3  # classes 0, 1 things; 2 stuff; index 3 = no-object
THINGS = {0, 1}
HW = (10, 10)


def run_panoptic(rows, masks):
    return panoptic_inference(class_logits(rows), torch.stack(masks), K, 0.8, 0.8, THINGS)


def test_overlap_goes_to_the_larger_score_times_probability():
    """Query 0 has the larger class score, but on row 4 its mask is weak (0.62 * 0.95 < 1 * 0.9): query 1
    wins row 4. Query 0 wins 40 pixels for a 50-pixel mask: 0.8, not < 0.8, kept. Query 1 wins row 9 with
    sigmoid(-5) < 0.5, so row 9 is void."""
    q0 = rect_mask(HW, (0, 5), (0, 10))
    q0[4] = 0.5
    q1 = rect_mask(HW, (4, 9), (0, 10))
    q1[9] = -5.0
    seg, info = run_panoptic([one_hot_row(K, 0, 0.95), one_hot_row(K, 1, 0.9)], [q0, q1])
    expected = torch.zeros(HW, dtype=torch.int32)
    expected[0:4], expected[4:9] = 1, 2
    assert seg.dtype == torch.int32 and torch.equal(seg, expected)
    assert info == [{"id": 1, "category_id": 0, "isthing": True}, {"id": 2, "category_id": 1, "isthing": True}]


def test_segment_losing_more_than_20_percent_is_dropped_and_ids_stay_consecutive():
    """Query 0 wins only 30 of its 50 mask pixels (0.6 < 0.8): dropped; query 1 then gets id 1."""
    q0 = rect_mask(HW, (0, 5), (0, 10))
    q0[3:5] = 0.5
    q1 = rect_mask(HW, (3, 10), (0, 10))
    seg, info = run_panoptic([one_hot_row(K, 0, 0.95), one_hot_row(K, 1, 0.9)], [q0, q1])
    expected = torch.zeros(HW, dtype=torch.int32)
    expected[3:10] = 1
    assert torch.equal(seg, expected)
    assert info == [{"id": 1, "category_id": 1, "isthing": True}]


def test_score_threshold_and_no_object():
    """Score 0.79 dropped, 0.81 kept; a confident no-object query is ignored even with a mask."""
    masks = [rect_mask(HW, (0, 3), (0, 10)), rect_mask(HW, (3, 6), (0, 10)), rect_mask(HW, (6, 10), (0, 10))]
    rows = [one_hot_row(K, 0, 0.79), one_hot_row(K, 1, 0.81), one_hot_row(K, K, 0.99)]
    seg, info = run_panoptic(rows, masks)
    expected = torch.zeros(HW, dtype=torch.int32)
    expected[3:6] = 1
    assert torch.equal(seg, expected)
    assert info == [{"id": 1, "category_id": 1, "isthing": True}]


def test_stuff_of_one_class_merges_things_do_not():
    """Two stuff queries of class 2 -> one segment; two thing queries of class 0 -> two segments."""
    hw = (10, 12)
    masks = [
        rect_mask(hw, (0, 5), (0, 10)),
        rect_mask(hw, (0, 5), (10, 12)),
        rect_mask(hw, (5, 10), (0, 10)),
        rect_mask(hw, (5, 10), (10, 12)),
    ]
    rows = [one_hot_row(K, 2, 0.9), one_hot_row(K, 0, 0.9), one_hot_row(K, 2, 0.85), one_hot_row(K, 0, 0.95)]
    seg, info = panoptic_inference(class_logits(rows), torch.stack(masks), K, thing_ids=THINGS)
    expected = torch.zeros(hw, dtype=torch.int32)
    expected[:, 0:10] = 1
    expected[0:5, 10:12] = 2
    expected[5:10, 10:12] = 3
    assert torch.equal(seg, expected)
    assert info == [
        {"id": 1, "category_id": 2, "isthing": False},
        {"id": 2, "category_id": 0, "isthing": True},
        {"id": 3, "category_id": 0, "isthing": True},
    ]


def test_nothing_kept_gives_void():
    seg, info = run_panoptic([one_hot_row(K, 0, 0.5)], [rect_mask(HW, (0, 5), (0, 5))])
    assert torch.equal(seg, torch.zeros(HW, dtype=torch.int32)) and info == []


# ----------------------------------------------------------------------------------------------- instance
def test_instance_boxes_scores_and_topk_order():
    hw = (6, 8)
    m0 = rect_mask(hw, (1, 4), (2, 6), inside=2.0)  # box [2, 1, 6, 4]
    m1 = torch.full(hw, OUT)
    m1[0, 7], m1[5, 0], m1[3, 3] = 1.0, 3.0, 0.5  # scattered pixels: box [0, 0, 8, 6]
    m2 = torch.full(hw, OUT)  # empty mask: zero box, score 0
    probs = [[0.6, 0.3, 0.1], [0.05, 0.7, 0.25], [0.2, 0.1, 0.7]]  # Q = 3, K = 2
    result = instance_inference(class_logits(probs), torch.stack([m0, m1, m2]), 2, test_topk_per_image=4)
    assert isinstance(result, Instances) and result.image_size == hw and len(result) == 4
    # (query, class) pairs by decreasing class probability: (1,1) .7, (0,0) .6, (0,1) .3, (2,0) .2
    expected = [(1, 1, 0.7), (0, 0, 0.6), (0, 1, 0.3), (2, 0, 0.2)]
    mask_score = {
        0: 1 / (1 + math.exp(-2.0)),
        1: (1 / (1 + math.exp(-1.0)) + 1 / (1 + math.exp(-3.0)) + 1 / (1 + math.exp(-0.5))) / 3,
        2: 0.0,
    }
    boxes = {0: [2, 1, 6, 4], 1: [0, 0, 8, 6], 2: [0, 0, 0, 0]}
    assert result.pred_classes.tolist() == [c for _, c, _ in expected]
    for i, (q, _, p) in enumerate(expected):
        assert result.scores[i].item() == pytest.approx(p * mask_score[q], rel=1e-5, abs=1e-6)
        assert result.pred_boxes.tensor[i].tolist() == boxes[q]
        assert result.pred_masks.dtype == torch.bool  # detectron2's convention (Mask R-CNN gives bool masks too)
        assert torch.equal(result.pred_masks[i], torch.stack([m0, m1, m2])[q] > 0)


def test_instance_panoptic_on_keeps_only_things_and_topk_is_clamped():
    hw = (4, 4)
    masks = torch.stack([rect_mask(hw, (0, 2), (0, 2)), rect_mask(hw, (2, 4), (2, 4))])
    probs = [[0.5, 0.4, 0.1], [0.3, 0.6, 0.1]]  # K = 2; class 1 is stuff
    result = instance_inference(class_logits(probs), masks, 2, test_topk_per_image=100, panoptic_on=True, thing_ids={0})
    assert result.pred_classes.tolist() == [0, 0]
    assert result.pred_boxes.tensor.tolist() == [[0, 0, 2, 2], [2, 2, 4, 4]]
    with pytest.raises(ValueError, match="thing_ids"):
        instance_inference(class_logits(probs), masks, 2, panoptic_on=True)


def test_masks_to_boxes_matches_detectron2_bitmasks():
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(20, 9, 13, generator=gen) > 0.97
    masks[0] = False
    expected = BitMasks(masks).get_bounding_boxes().tensor
    assert torch.equal(masks_to_boxes(masks), expected)
    assert masks_to_boxes(torch.zeros(0, 3, 3, dtype=torch.bool)).shape == (0, 4)


def test_positive_area_and_sigmoid_sum_across_blocks():
    """The blocked float computation against a direct one, on rows longer than one block and with exact zeros."""
    from universal_seg.modeling.postprocess import _BLOCK_ELEMENTS, _positive_area_and_sigmoid_sum

    torch.manual_seed(0)
    logits = torch.randn(3, _BLOCK_ELEMENTS + 1234).double()
    logits[:, ::7] = 0.0  # sigmoid(0) = 0.5 but x = 0 is not inside the mask
    logits[2] = -1.0  # an empty mask
    area, inside = _positive_area_and_sigmoid_sum(logits)
    positive = logits > 0
    torch.testing.assert_close(area.double(), positive.sum(1).double())
    torch.testing.assert_close(inside.double(), (logits.sigmoid() * positive).sum(1), rtol=1e-5, atol=1e-3)
    assert area[2] == 0 and inside[2] == 0


# ------------------------------------------------------------------------------- panoptic: slow reference
def _reference_panoptic_inference(
    mask_cls, mask_pred, num_classes, object_mask_threshold=0.8, overlap_threshold=0.8, thing_ids=()
):
    """REFERENCE ONLY (slow): the per-query loop that panoptic_inference used before it was vectorised, written
    out verbatim; the randomized tests below require the library function to give exactly its outputs."""
    import torch.nn.functional as F

    thing_ids = set(thing_ids)
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_pred[keep].sigmoid()

    height, width = mask_pred.shape[-2:]
    panoptic_seg = torch.zeros((height, width), dtype=torch.int32, device=mask_pred.device)
    segments_info = []
    if cur_masks.shape[0] == 0:
        return panoptic_seg, segments_info

    owner = (cur_scores[:, None, None] * cur_masks).argmax(0)  # [H, W] index into the kept queries
    stuff_ids = {}
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


_SIZES = [(1, 1), (7, 9), (16, 16), (33, 17), (48, 64), (5, 131)]


def _random_panoptic_case(seed):
    """Random inputs of panoptic_inference that reach its corner cases: overlapping and empty masks, exact score ties
    (duplicated class rows with saturated masks), mask logits exactly 0 or tiny negatives (sigmoid rounds to 0.5),
    stuff classes predicted by several queries, all queries dropped, thresholds that drop some by overlap."""
    gen = torch.Generator().manual_seed(seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    q = pick([1, 2, 3, 5, 8, 12, 20, 30])
    k = pick([1, 2, 3, 5, 8])
    h, w = pick(_SIZES)
    mask_cls = torch.randn(q, k + 1, generator=gen) * pick([0.5, 1.0, 3.0])
    confident = torch.rand(q, generator=gen) < pick([0.3, 0.6, 0.9])
    for i in confident.nonzero().flatten().tolist():
        target = pick(list(range(k)) * 3 + [k])  # mostly a class, sometimes a confident no-object
        mask_cls[i, target] += pick([2.0, 4.0, 8.0, 12.0])
    for _ in range(int(torch.randint(0, 3, (1,), generator=gen))):  # duplicated rows: exactly equal scores
        a, b = torch.randint(q, (2,), generator=gen).tolist()
        mask_cls[b] = mask_cls[a]

    masks = []
    for _ in range(q):
        kind = pick(["rect", "rect", "smooth", "smooth", "saturated", "empty", "boundary"])
        if kind == "rect":
            y0, y1 = sorted(torch.randint(0, h + 1, (2,), generator=gen).tolist())
            x0, x1 = sorted(torch.randint(0, w + 1, (2,), generator=gen).tolist())
            m = torch.full((h, w), pick([-10.0, -3.0, -20.0]))
            m[y0:y1, x0:x1] = pick([10.0, 3.0, 20.0, 0.5])
        elif kind == "smooth":
            low = torch.randn(1, 1, max(1, h // 4), max(1, w // 4), generator=gen) * pick([1.0, 4.0, 10.0])
            m = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            m = m + pick([-2.0, 0.0, 1.0])
        elif kind == "saturated":
            m = torch.full((h, w), pick([20.0, 40.0, 100.0]))  # sigmoid == 1 exactly: ties in score * sigmoid
        elif kind == "empty":
            m = torch.full((h, w), pick([-5.0, -30.0]))
        else:
            values = torch.tensor([0.0, -0.0, -1e-9, -1e-8, -5.9e-8, -6e-8, -1.1e-7, -1.2e-7, -2.4e-7, 1e-8, -1e-3])
            m = values[torch.randint(len(values), (h, w), generator=gen)]
        sprinkle = torch.rand(h, w, generator=gen) < 0.05
        m[sprinkle] = torch.tensor([0.0, -1e-8, -1e-7])[torch.randint(3, (int(sprinkle.sum()),), generator=gen)]
        masks.append(m)
    mask_pred = torch.stack(masks)
    things = [c for c in range(k) if bool(torch.rand(1, generator=gen) < 0.5)] + pick([[], [k + 3], [-1]])
    object_mask_threshold = pick([0.0, 0.3, 0.5, 0.8])
    overlap_threshold = pick([0.0, 0.5, 0.8, 0.8, 1.0, 1.5])
    return mask_cls, mask_pred, k, object_mask_threshold, overlap_threshold, things


def _check_panoptic_against_reference(seeds, device="cpu"):
    """The library's panoptic_inference against the slow reference on random cases: identical outputs. Returns
    counts of the situations met (to check that the random cases cover them)."""
    seen = {"segments": 0, "all_dropped": 0, "stuff_merged": 0, "dropped_by_overlap": 0, "nothing_kept": 0}
    for seed in seeds:
        mask_cls, mask_pred, k, obj_t, ovl_t, things = _random_panoptic_case(seed)
        mask_cls, mask_pred = mask_cls.to(device), mask_pred.to(device)
        expected_seg, expected_info = _reference_panoptic_inference(mask_cls, mask_pred, k, obj_t, ovl_t, things)
        seg, info = panoptic_inference(mask_cls, mask_pred, k, obj_t, ovl_t, things)
        assert seg.dtype == torch.int32 and seg.device == expected_seg.device, seed
        assert torch.equal(seg, expected_seg), seed
        assert info == expected_info, seed
        assert [type(v) for s in info for v in s.values()] == [int, int, bool] * len(info), seed
        # coverage bookkeeping
        kept_any = _reference_panoptic_inference(mask_cls, mask_pred, k, obj_t, -1.0, things)[1]
        seen["segments"] += len(info)
        seen["nothing_kept"] += not kept_any
        seen["all_dropped"] += bool(kept_any) and not info
        seen["dropped_by_overlap"] += len(kept_any) > len(info)
        seen["stuff_merged"] += _painting_queries(mask_cls, mask_pred, k, obj_t, ovl_t) > len(info)
    return seen


def _painting_queries(mask_cls, mask_pred, k, obj_t, ovl_t):
    """How many kept queries paint a segment (more than the segments when stuff queries of one class merge)."""
    import torch.nn.functional as F

    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    keep = labels.ne(k) & (scores > obj_t)
    probs = mask_pred[keep].sigmoid()
    if probs.shape[0] == 0:
        return 0
    owner = (scores[keep][:, None, None] * probs).argmax(0)
    count = 0
    for i in range(probs.shape[0]):
        won, own = int((owner == i).sum()), int((probs[i] >= 0.5).sum())
        count += int(((owner == i) & (probs[i] >= 0.5)).any()) and own > 0 and won / own >= ovl_t
    return count


def test_panoptic_matches_reference_on_random_cases():
    seen = _check_panoptic_against_reference(range(300))
    assert all(count > 0 for count in seen.values()), seen


def test_panoptic_matches_reference_with_tiny_blocks(monkeypatch):
    """Blocks of a few pixels (many blocks per image, a last block of another width) give the same outputs."""
    import universal_seg.modeling.postprocess as postprocess

    for block, cases in ((1, 8), (40, 60), (500, 60)):  # one pixel per block; several; a few
        monkeypatch.setattr(postprocess, "_BLOCK_ELEMENTS", block)
        _check_panoptic_against_reference(range(1000 + block, 1000 + block + cases))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_panoptic_matches_reference_on_cuda():
    _check_panoptic_against_reference(range(300), device="cuda")


def test_sigmoid_half_threshold_is_not_the_sign_of_the_logit():
    """In float32, sigmoid(x) rounds to exactly 0.5 for tiny negative x: such a pixel is inside a query's mask
    (sigmoid >= 0.5) although x < 0. panoptic_inference keeps the sigmoid comparison, so it counts these pixels."""
    tiny = torch.tensor([-1e-9, -1e-8, -5.9e-8, -1.7e-7])
    assert torch.equal(tiny.sigmoid(), torch.full((4,), 0.5))
    assert torch.tensor(-2.4e-7).sigmoid() < 0.5
    mask = torch.full(HW, -1e-8)
    mask[5:] = OUT
    seg, info = run_panoptic([one_hot_row(K, 2, 0.95)], [mask])
    expected = torch.zeros(HW, dtype=torch.int32)
    expected[:5] = 1
    assert torch.equal(seg, expected) and info == [{"id": 1, "category_id": 2, "isthing": False}]


def test_instance_panoptic_on_thing_ids_outside_the_classes_are_ignored():
    """Thing ids are matched as a set of ints: ids outside 0..K-1 (even negative ones) select nothing."""
    hw = (4, 4)
    masks = torch.stack([rect_mask(hw, (0, 2), (0, 2)), rect_mask(hw, (2, 4), (2, 4))])
    probs = [[0.5, 0.4, 0.1], [0.3, 0.6, 0.1]]  # K = 2
    for things, expected in [({-1, 5}, []), ({-1, 1}, [1, 1]), ((1, 0), [1, 0, 1, 0])]:
        result = instance_inference(class_logits(probs), masks, 2, panoptic_on=True, thing_ids=things)
        assert result.pred_classes.tolist() == expected
        assert result.pred_masks.shape == (len(expected), 4, 4) and result.pred_boxes.tensor.shape == (len(expected), 4)
