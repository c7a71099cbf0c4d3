"""The two StructToken-universal semantic fixes against hand computation: the unmatched-mask loss of SetCriterion
(BCE towards empty on uniform random points, written out in numpy with bilinear sampling) and semantic inference
over confident queries only (the sum over the kept queries, by loops)."""

import math

import numpy as np
import pytest
import torch
from conftest import FixedMatcher
from detectron2.config import get_cfg as d2_cfg
from torch import nn

from universal_seg.config import add_universal_seg_config
from universal_seg.modeling.criterion import SetCriterion, build_weight_dict
from universal_seg.modeling.postprocess import confident_semantic_inference, semantic_inference


def bilinear_zero_padded(image, u, v):
    """image [H, W] sampled at normalised (u, v) in [0, 1]^2 as grid_sample(align_corners=False, zero padding):
    pixel coordinates x = u * W - 0.5, y = v * H - 0.5; outside pixels count as 0."""
    height, width = image.shape
    x, y = u * width - 0.5, v * height - 0.5
    x0, y0 = math.floor(x), math.floor(y)
    total = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < height and 0 <= xx < width:
                total += wy * wx * float(image[yy, xx])
    return total


def test_unmatched_mask_loss_by_hand():
    gen = torch.Generator().manual_seed(0)
    batch, queries, hw, points = 2, 4, (5, 6), 7
    masks = torch.randn(batch, queries, *hw, generator=gen) * 3
    outputs = {"pred_logits": torch.zeros(batch, queries, 4), "pred_masks": masks}
    targets = [
        {"labels": torch.tensor([0, 2]), "masks": torch.rand(2, *hw, generator=gen) > 0.5},
        {"labels": torch.tensor([1]), "masks": torch.rand(1, *hw, generator=gen) > 0.5},
    ]
    matched = [([1, 3], [0, 1]), ([2], [0])]  # unmatched: image 0 queries 0, 2; image 1 queries 0, 1, 3
    criterion = SetCriterion(3, FixedMatcher(matched), {}, losses=("unmatched_masks",), num_points=points)
    torch.manual_seed(5)
    loss = criterion(outputs, targets)["loss_mask_unmatched"].item()

    torch.manual_seed(5)  # the same uniform points: one [N, P, 2] draw over the unmatched masks in (image, query) order
    coords = torch.rand(5, points, 2).numpy().astype(np.float64)
    unmatched = [(0, 0), (0, 2), (1, 0), (1, 1), (1, 3)]
    total = 0.0
    for n, (b, q) in enumerate(unmatched):
        image = masks[b, q].numpy().astype(np.float64)
        bce = [math.log1p(math.exp(bilinear_zero_padded(image, u, v))) for u, v in coords[n]]  # -log(1 - sigmoid)
        total += sum(bce) / points
    num_masks = 3  # ground-truth masks in the batch
    assert loss == pytest.approx(total / num_masks, rel=1e-5)


def test_unmatched_mask_loss_leaves_matched_queries_alone_and_pushes_masks_to_empty():
    masks = torch.zeros(1, 3, 4, 4, requires_grad=True)
    outputs = {"pred_logits": torch.zeros(1, 3, 3), "pred_masks": masks}
    targets = [{"labels": torch.tensor([0]), "masks": torch.ones(1, 4, 4, dtype=torch.bool)}]
    criterion = SetCriterion(2, FixedMatcher([([1], [0])]), {}, losses=("unmatched_masks",), num_points=50)
    criterion(outputs, targets)["loss_mask_unmatched"].backward()
    grad = masks.grad[0]
    assert torch.all(grad[1] == 0)  # the matched query gets no gradient from this loss
    assert torch.all(grad[[0, 2]] >= 0) and grad[[0, 2]].sum() > 0  # descent lowers the unmatched logits
    # nothing unmatched: an exact zero, still connected to the graph
    all_matched = SetCriterion(2, FixedMatcher([([0, 1, 2], [0, 0, 0])]), {}, losses=("unmatched_masks",))
    targets3 = [{"labels": torch.tensor([0, 1, 0]), "masks": torch.ones(3, 4, 4, dtype=torch.bool)}]
    zero = all_matched(outputs, targets3)["loss_mask_unmatched"]
    assert zero.item() == 0.0 and zero.requires_grad


def test_unmatched_mask_weight_keys():
    assert "loss_mask_unmatched" not in build_weight_dict(dec_layers=3)  # Mask2Former: absent
    weights = build_weight_dict(dec_layers=3, unmatched_mask_weight=0.5)
    assert {k: v for k, v in weights.items() if "unmatched" in k} == {
        "loss_mask_unmatched": 0.5,
        "loss_mask_unmatched_0": 0.5,
        "loss_mask_unmatched_1": 0.5,
    }
    cfg = d2_cfg()
    add_universal_seg_config(cfg)
    assert cfg.MODEL.MASK_FORMER.UNMATCHED_MASK_WEIGHT == 0.0  # the defaults keep Mask2Former's method
    assert cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_OBJECT_THRESHOLD == 0.0


def hand_confident_semantic(mask_cls, mask_pred, threshold):
    """Sum over the kept queries of p(class) * sigmoid(mask), kept: p(object) > threshold or the most confident."""
    num_queries, classes = mask_cls.shape[0], mask_cls.shape[1] - 1
    probs = []
    for q in range(num_queries):
        row = [math.exp(v) for v in mask_cls[q].tolist()]
        probs.append([v / sum(row) for v in row])
    p_object = [1 - p[-1] for p in probs]
    kept = [q for q in range(num_queries) if p_object[q] > threshold or p_object[q] == max(p_object)]
    out = torch.zeros(classes, *mask_pred.shape[1:], dtype=torch.float64)
    for c in range(classes):
        for y in range(mask_pred.shape[1]):
            for x in range(mask_pred.shape[2]):
                out[c, y, x] = sum(probs[q][c] / (1 + math.exp(-mask_pred[q, y, x].item())) for q in kept)
    return out, kept


def test_confident_semantic_inference_by_hand():
    # Q = 4, K = 2: p(no-object) = 0.1, 0.9 (a broad unmatched-like token), 0.45, 0.95
    probs = [[0.6, 0.3, 0.1], [0.05, 0.05, 0.9], [0.5, 0.05, 0.45], [0.02, 0.03, 0.95]]
    mask_cls = torch.tensor(probs, dtype=torch.float64).log().float()
    mask_pred = torch.tensor(
        [
            [[4.0, -4.0], [-4.0, -4.0]],
            [[3.0, 3.0], [3.0, 3.0]],
            [[-4.0, 4.0], [-4.0, 0.0]],
            [[2.0, 2.0], [2.0, 2.0]],
        ]
    )
    out = confident_semantic_inference(mask_cls, mask_pred, 0.5)
    expected, kept = hand_confident_semantic(mask_cls, mask_pred, 0.5)
    assert kept == [0, 2]
    assert torch.allclose(out.double(), expected, atol=1e-6)
    # the broad token 1 would have lifted class 1 at pixel (1, 0); without it, nothing there but tiny leftovers
    assert semantic_inference(mask_cls, mask_pred)[1, 1, 0] > 0.06 and out[1, 1, 0] < 0.01
    # threshold 0 keeps every query: Mask2Former's sum
    assert torch.allclose(
        confident_semantic_inference(mask_cls, mask_pred, 0.0), semantic_inference(mask_cls, mask_pred)
    )
    # no query above the threshold: the most confident one (query 0) still counts
    out_high = confident_semantic_inference(mask_cls, mask_pred, 0.95)
    expected_high, kept_high = hand_confident_semantic(mask_cls, mask_pred, 0.95)
    assert kept_high == [0] and torch.allclose(out_high.double(), expected_high, atol=1e-6)


@pytest.mark.parametrize(
    "path", ["configs/coco/panoptic/structtoken_pwe_r50.yaml", "configs/mini/panoptic/structtoken_pwe_r18.yaml"]
)
def test_structtoken_universal_configs_train_with_the_unmatched_mask_loss(path):
    from conftest import ROOT

    from universal_seg.config import load_config

    cfg = load_config(str(ROOT / path), ["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.MASK_FORMER.UNMATCHED_MASK_WEIGHT == 0.5  # MASK_WEIGHT x NO_OBJECT_WEIGHT, the held-out winner
    assert cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_OBJECT_THRESHOLD == 0.0


def test_confident_semantic_inference_exports_to_onnx(tmp_path):
    """No data-dependent shape: the exported graph equals eager on logits other than the traced ones."""
    import onnxruntime as ort

    from universal_seg.export import semantic_scores

    class Scores(nn.Module):
        def forward(self, logits, masks):
            return semantic_scores({"pred_logits": logits, "pred_masks": masks}, (8, 10), object_threshold=0.5)

    gen = torch.Generator().manual_seed(1)
    logits, masks = torch.randn(1, 6, 4, generator=gen), torch.randn(1, 6, 4, 5, generator=gen)
    with torch.no_grad():
        program = torch.onnx.export(Scores(), (logits, masks), input_names=["logits", "masks"], dynamo=True)
    program.save(str(tmp_path / "scores.onnx"))
    session = ort.InferenceSession(str(tmp_path / "scores.onnx"))
    for _ in range(3):
        logits, masks = torch.randn(1, 6, 4, generator=gen) * 3, torch.randn(1, 6, 4, 5, generator=gen)
        got = session.run(None, {"logits": logits.numpy(), "masks": masks.numpy()})[0]
        up = torch.nn.functional.interpolate(masks, size=(8, 10), mode="bilinear", align_corners=False)
        expected = confident_semantic_inference(logits[0], up[0], 0.5)
        np.testing.assert_allclose(got[0], expected.numpy(), atol=1e-5)
