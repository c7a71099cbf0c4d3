"""universal_seg.export_postprocess (numpy instance / panoptic post-processing of exported outputs). Truth: the
eager torch post-processing (universal_seg.modeling.postprocess) on the same inputs, and hand-built cases whose
results are written out."""

import math

import numpy as np
import pytest
import torch

from universal_seg.export_postprocess import (
    instance_postprocess,
    masks_to_boxes,
    panoptic_postprocess,
    semantic_map,
)
from universal_seg.modeling.postprocess import instance_inference, panoptic_inference


def _hand_case():
    """Q = 4 queries, K = 2 classes (0 stuff, 1 thing), a 2 x 4 image. q0: class 0 on columns 0-1, q1: class 1 on
    column 2, q2: no-object, q3: class 0 on column 3 (merged with q0's stuff segment)."""
    pred_logits = np.array([[10, 0, 0], [0, 9, 0], [0, 0, 10], [8, 0, 0]], dtype=np.float32)
    cols = [[5, 5, -5, -5], [-5, -5, 5, -5], [5, 5, 5, 5], [-5, -5, -5, 5]]
    mask_logits = np.array([[c, c] for c in cols], dtype=np.float32)  # [4, 2, 4]
    return pred_logits, mask_logits


def test_panoptic_hand_built_case():
    pred_logits, mask_logits = _hand_case()
    panoptic, segments = panoptic_postprocess(pred_logits, mask_logits, thing_ids=[1])
    assert panoptic.dtype == np.int32
    np.testing.assert_array_equal(panoptic, [[1, 1, 2, 1], [1, 1, 2, 1]])
    assert segments == [
        {"id": 1, "category_id": 0, "isthing": False},
        {"id": 2, "category_id": 1, "isthing": True},
    ]
    # with class 0 a thing too, q3 gets its own id
    panoptic, segments = panoptic_postprocess(pred_logits, mask_logits, thing_ids=[0, 1])
    np.testing.assert_array_equal(panoptic, [[1, 1, 2, 3], [1, 1, 2, 3]])
    assert [s["category_id"] for s in segments] == [0, 1, 0]
    # no confident query: all void
    panoptic, segments = panoptic_postprocess(pred_logits, mask_logits, object_mask_threshold=0.99999)
    assert not panoptic.any() and segments == []


def test_panoptic_overlap_rule_drops_a_covered_segment():
    """q1's own mask (columns 0-2) is mostly won by q0 (columns 0-1, higher score): won 1 of 3 own pixels < 0.8."""
    pred_logits = np.array([[10, 0, 0], [0, 9, 0]], dtype=np.float32)
    mask_logits = np.array([[[5, 5, -5, -5]] * 2, [[5, 5, 5, -5]] * 2], dtype=np.float32)
    panoptic, segments = panoptic_postprocess(pred_logits, mask_logits, thing_ids=[1])
    np.testing.assert_array_equal(panoptic, [[1, 1, 0, 0], [1, 1, 0, 0]])
    assert segments == [{"id": 1, "category_id": 0, "isthing": False}]
    panoptic, segments = panoptic_postprocess(pred_logits, mask_logits, overlap_threshold=0.3, thing_ids=[1])
    np.testing.assert_array_equal(panoptic, [[1, 1, 2, 0], [1, 1, 2, 0]])


def test_instance_hand_built_case():
    pred_logits, mask_logits = _hand_case()
    out = instance_postprocess(pred_logits, mask_logits, topk=2)
    e10 = math.exp(10)
    p0 = e10 / (e10 + 2)  # q0, class 0
    p1 = math.exp(9) / (math.exp(9) + 2)  # q1, class 1
    s5 = 1 / (1 + math.exp(-5))  # mean sigmoid inside each mask
    np.testing.assert_array_equal(out["pred_classes"], [0, 1])
    np.testing.assert_allclose(out["scores"], [p0 * s5, p1 * s5], rtol=1e-6)
    np.testing.assert_array_equal(out["pred_boxes"], [[0, 0, 2, 2], [2, 0, 3, 2]])
    np.testing.assert_array_equal(out["pred_masks"][1], [[False, False, True, False]] * 2)
    # panoptic_on keeps thing classes only: q1-class-1 first, then the best remaining thing pair
    out = instance_postprocess(pred_logits, mask_logits, topk=3, panoptic_on=True, thing_ids=[1])
    assert set(out["pred_classes"].tolist()) == {1}


def test_masks_to_boxes_empty_and_full():
    masks = np.zeros((2, 3, 5), dtype=bool)
    masks[1, 1:3, 2:4] = True
    np.testing.assert_array_equal(masks_to_boxes(masks), [[0, 0, 0, 0], [2, 1, 4, 3]])


@pytest.mark.parametrize("seed", [0, 3, 4])
def test_numpy_postprocess_equals_torch_postprocess(seed):
    """Random logits with a few confident queries: the numpy functions give the eager post-processing's results."""
    g = torch.Generator().manual_seed(seed)
    Q, K, H, W = 12, 8, 24, 30
    pred_logits = torch.randn(Q, K + 1, generator=g)
    pred_logits[: Q // 2, :K] += 6 * torch.rand(Q // 2, K, generator=g)  # some queries above the threshold
    # smooth blobs (a coarse random grid upsampled), so that segments survive the overlap rule
    coarse = torch.randn(1, Q, 4, 5, generator=g) * 4
    mask_logits = torch.nn.functional.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)[0]
    thing_ids = {1, 3, 4, 6, 7}
    pan_t, seg_t = panoptic_inference(pred_logits, mask_logits, K, 0.5, 0.5, thing_ids)
    pan_n, seg_n = panoptic_postprocess(pred_logits.numpy(), mask_logits.numpy(), 0.5, 0.5, thing_ids)
    assert len(seg_t) >= 2, "the case should have several segments"
    np.testing.assert_array_equal(pan_n, pan_t.numpy())
    assert seg_n == seg_t
    for panoptic_on in (False, True):
        inst = instance_inference(pred_logits, mask_logits, K, 20, panoptic_on, thing_ids)
        out = instance_postprocess(pred_logits.numpy(), mask_logits.numpy(), 20, panoptic_on, thing_ids)
        np.testing.assert_array_equal(out["pred_classes"], inst.pred_classes.numpy())
        np.testing.assert_array_equal(out["pred_masks"], inst.pred_masks.numpy())
        np.testing.assert_array_equal(out["pred_boxes"], inst.pred_boxes.tensor.numpy())
        np.testing.assert_allclose(out["scores"], inst.scores.numpy(), rtol=1e-5, atol=1e-7)


def test_semantic_map_and_bad_shapes():
    scores = np.zeros((2, 3, 2, 2), dtype=np.float32)
    scores[0, 2, 0, 1] = 1
    scores[1, 1] = 1
    np.testing.assert_array_equal(semantic_map(scores), [[[0, 2], [0, 0]], [[1, 1], [1, 1]]])
    with pytest.raises(ValueError, match="index the batch first"):
        panoptic_postprocess(np.zeros((1, 3, 4)), np.zeros((1, 3, 2, 2)))
    with pytest.raises(ValueError, match="needs thing_ids"):
        instance_postprocess(np.zeros((3, 4)), np.zeros((3, 2, 2)), panoptic_on=True)
