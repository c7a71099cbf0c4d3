"""Per-class CE weights on both loss paths and the focal variant of the per-pixel loss, against the written-out
formulas (numpy): sum_i w[y_i] (1 - p_i)^gamma (-log p_i) / sum_i w[y_i]."""

import numpy as np
import pytest
import torch
from conftest import load_cfg
from detectron2.modeling import build_model

import universal_seg.data  # noqa: F401
import universal_seg.modeling  # noqa: F401
from universal_seg.modeling.criterion import SetCriterion
from universal_seg.modeling.heads.inference import per_pixel_ce_loss


def numpy_loss(logits, targets, ignore, w, gamma):
    """logits [B, K, H, W], targets [B, H, W] as float64 numpy; the formula pixel by pixel."""
    num, den = 0.0, 0.0
    B, K, H, W = logits.shape
    for b in range(B):
        for y in range(H):
            for x in range(W):
                t = targets[b, y, x]
                if t == ignore:
                    continue
                z = logits[b, :, y, x]
                p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
                num += w[t] * (1 - p[t]) ** gamma * -np.log(p[t])
                den += w[t]
    return num / den


@pytest.mark.parametrize("gamma", [0.0, 2.0])
@pytest.mark.parametrize("weights", [None, [0.5, 2.0, 0.0, 1.5]])
def test_per_pixel_weighted_focal_loss_matches_the_formula(gamma, weights):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 4, (2, 3, 5), generator=g)
    targets[0, 0, :3] = 255
    w = np.ones(4) if weights is None else np.array(weights)
    expected = numpy_loss(logits.numpy(), targets.numpy(), 255, w, gamma)
    got = per_pixel_ce_loss(
        logits, targets, 255, None if weights is None else torch.tensor(weights, dtype=torch.float64), gamma
    )
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_per_pixel_loss_with_only_zero_weight_pixels_is_zero_with_gradient():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    targets = torch.full((1, 2, 2), 1)
    for gamma in (0.0, 2.0):
        loss = per_pixel_ce_loss(logits, targets, 255, torch.tensor([1.0, 0.0, 1.0]), gamma)
        loss.backward()
        assert loss.item() == 0 and logits.grad is not None


def test_mask_classification_ce_uses_per_class_weights_next_to_no_object_weight():
    K, Q = 3, 4
    criterion = SetCriterion(K, matcher=None, weight_dict={}, eos_coef=0.1, class_weights=(2.0, 0.5, 1.0))
    assert criterion.empty_weight.tolist() == pytest.approx([2.0, 0.5, 1.0, 0.1])
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, Q, K + 1, generator=g)
    targets = [{"labels": torch.tensor([1, 0])}]
    indices = [(torch.tensor([2, 0]), torch.tensor([0, 1]))]  # query 2 -> class 1, query 0 -> class 0
    loss = criterion.loss_labels({"pred_logits": logits}, targets, indices, torch.tensor(2.0))["loss_ce"]
    t = [0, K, 1, K]  # matched classes, no-object (K) for the others
    w = [2.0, 0.5, 1.0, 0.1]
    z = logits[0].double().numpy()
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    expected = sum(w[t[q]] * -logp[q, t[q]] for q in range(Q)) / sum(w[t[q]] for q in range(Q))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_config_keys_reach_both_loss_paths_and_bad_values_name_the_key():
    model = build_model(
        load_cfg(
            "configs/mini/panoptic/m2f_r18.yaml", "MODEL.MASK_FORMER.PER_CLASS_CE_WEIGHTS", str([1.0] * 20 + [3.0])
        )
    )
    assert model.criterion.empty_weight[-2:].tolist() == pytest.approx([3.0, 0.1])
    cfg = ("configs/mini/semantic/segformer_b0.yaml", "MODEL.SEM_SEG_HEAD.FOCAL_GAMMA", "2.0")
    head = build_model(load_cfg(*cfg, "MODEL.SEM_SEG_HEAD.PER_CLASS_CE_WEIGHTS", str([2.0] + [1.0] * 20))).sem_seg_head
    assert head.focal_gamma == 2.0 and head.class_weights[:2].tolist() == [2.0, 1.0]
    assert "class_weights" not in head.state_dict()  # config, not checkpoint content
    with pytest.raises(ValueError, match=r"MODEL.MASK_FORMER.PER_CLASS_CE_WEIGHTS has 2 values .* one finite weight"):
        build_model(
            load_cfg("configs/mini/panoptic/m2f_r18.yaml", "MODEL.MASK_FORMER.PER_CLASS_CE_WEIGHTS", "[1.0, 2.0]")
        )
    with pytest.raises(ValueError, match=r"MODEL.SEM_SEG_HEAD.PER_CLASS_CE_WEIGHTS has 21 values"):
        build_model(load_cfg(cfg[0], "MODEL.SEM_SEG_HEAD.PER_CLASS_CE_WEIGHTS", str([-1.0] * 21)))
