"""HungarianMatcher: optimality against brute force, cost entries against a per-pair hand loop."""

import itertools
import math

import pytest
import torch

from universal_seg.modeling.matcher import HungarianMatcher, compute_cost_matrix


def pixel_centres(height, width):
    """[H*W, 2] (x, y) of every pixel centre, so bilinear point sampling reads the pixel values exactly."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([(xs.flatten() + 0.5) / width, (ys.flatten() + 0.5) / height], dim=1).float()


def random_batch(gen, sizes, num_queries=4, num_classes=3, hw=(6, 7)):
    """outputs for B = len(sizes) images and targets with sizes[i] masks each."""
    B = len(sizes)
    outputs = {
        "pred_logits": torch.randn(B, num_queries, num_classes + 1, generator=gen),
        "pred_masks": torch.randn(B, num_queries, *hw, generator=gen) * 3,
    }
    targets = [
        {"labels": torch.randint(0, num_classes, (n,), generator=gen), "masks": torch.rand(n, *hw, generator=gen) > 0.5}
        for n in sizes
    ]
    return outputs, targets


def brute_force_min(cost):
    """Minimum total cost over every one-to-one assignment of min(Q, T) pairs, by enumeration."""
    Q, T = len(cost), len(cost[0])
    if Q >= T:
        return min(sum(cost[q][t] for t, q in enumerate(p)) for p in itertools.permutations(range(Q), T))
    return min(sum(cost[q][t] for q, t in enumerate(p)) for p in itertools.permutations(range(T), Q))


def hand_cost(logits, masks, label, tgt_mask, weights=(2.0, 5.0, 5.0)):
    """Cost of one (query, target) pair by explicit loops over pixels (masks [H, W] sampled at centres)."""
    probs = [math.exp(v) for v in logits.tolist()]
    p_class = probs[label] / sum(probs)
    bce, inter, sum_p, sum_t, n = 0.0, 0.0, 0.0, 0.0, 0
    for x, t in zip(masks.flatten().tolist(), tgt_mask.flatten().float().tolist()):
        p = 1 / (1 + math.exp(-x))
        bce += -(t * math.log(p) + (1 - t) * math.log(1 - p))
        inter += p * t
        sum_p += p
        sum_t += t
        n += 1
    dice = 1 - (2 * inter + 1) / (sum_p + sum_t + 1)
    return weights[0] * -p_class + weights[1] * bce / n + weights[2] * dice


def test_cost_matrix_matches_hand_loop():
    gen = torch.Generator().manual_seed(0)
    outputs, targets = random_batch(gen, [3], num_queries=4, hw=(5, 6))
    logits, masks = outputs["pred_logits"][0], outputs["pred_masks"][0]
    labels, tgt = targets[0]["labels"], targets[0]["masks"]
    cost = compute_cost_matrix(logits, masks, labels, tgt, pixel_centres(5, 6), 2.0, 5.0, 5.0)
    assert cost.shape == (4, 3) and cost.dtype == torch.float32
    for q in range(4):
        for t in range(3):
            expected = hand_cost(logits[q], masks[q], int(labels[t]), tgt[t])
            assert cost[q, t].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_cost_matrix_target_at_another_resolution():
    """A target at 2x the prediction resolution (nearest upsampled) costs the same as at 1x."""
    gen = torch.Generator().manual_seed(1)
    outputs, targets = random_batch(gen, [2], num_queries=3, hw=(4, 5))
    logits, masks = outputs["pred_logits"][0], outputs["pred_masks"][0]
    labels, tgt = targets[0]["labels"], targets[0]["masks"]
    big = tgt.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # [2, 8, 10]
    cost = compute_cost_matrix(logits, masks, labels, big, pixel_centres(4, 5))
    for q in range(3):
        for t in range(2):
            assert cost[q, t].item() == pytest.approx(hand_cost(logits[q], masks[q], int(labels[t]), tgt[t]), rel=1e-5)


@pytest.mark.parametrize("num_queries,sizes", [(5, [3, 5, 1]), (3, [4, 2]), (6, [6])])
def test_assignment_is_optimal(monkeypatch, num_queries, sizes):
    gen = torch.Generator().manual_seed(num_queries)
    outputs, targets = random_batch(gen, sizes, num_queries=num_queries)
    matcher = HungarianMatcher(num_points=42)
    points = pixel_centres(6, 7)
    monkeypatch.setattr(matcher, "sample_points", lambda device: points)
    indices = matcher(outputs, targets)
    assert len(indices) == len(sizes)
    for b, ((rows, cols), target) in enumerate(zip(indices, targets)):
        m = min(num_queries, len(target["labels"]))
        assert rows.dtype == cols.dtype == torch.long and len(rows) == len(cols) == m
        assert len(set(rows.tolist())) == m and len(set(cols.tolist())) == m
        cost = compute_cost_matrix(
            outputs["pred_logits"][b], outputs["pred_masks"][b], target["labels"], target["masks"], points
        ).double()
        ours = cost[rows, cols].sum().item()
        assert ours == pytest.approx(brute_force_min(cost.tolist()), rel=1e-9, abs=1e-9)


def test_forward_uses_one_point_set_per_image_shared_by_predictions_and_targets():
    """With the default sampler, the cost equals the cost at the points drawn from the same RNG state."""
    gen = torch.Generator().manual_seed(3)
    outputs, targets = random_batch(gen, [4], num_queries=5)
    matcher = HungarianMatcher(num_points=64)
    torch.manual_seed(123)
    cost = matcher.cost_matrix(outputs["pred_logits"][0], outputs["pred_masks"][0], targets[0])
    torch.manual_seed(123)
    points = torch.rand(64, 2)
    expected = compute_cost_matrix(
        outputs["pred_logits"][0], outputs["pred_masks"][0], targets[0]["labels"], targets[0]["masks"], points
    )
    torch.testing.assert_close(cost, expected)
    torch.manual_seed(123)
    rows, cols = matcher(outputs, targets)[0]
    assert cost[rows, cols].sum().item() == pytest.approx(brute_force_min(cost.double().tolist()), rel=1e-6)


def test_zero_target_images():
    gen = torch.Generator().manual_seed(4)
    outputs, targets = random_batch(gen, [0, 2, 0], num_queries=3)
    indices = HungarianMatcher(num_points=16)(outputs, targets)
    for (rows, cols), n in zip(indices, [0, 2, 0]):
        assert len(rows) == len(cols) == n and rows.dtype == cols.dtype == torch.long


def test_fp32_under_autocast():
    """Under bf16 autocast the cost (and assignment) is the fp32 one of the same bf16 inputs."""
    gen = torch.Generator().manual_seed(5)
    outputs, targets = random_batch(gen, [3, 2], num_queries=4)
    low = {k: v.bfloat16() for k, v in outputs.items()}
    matcher = HungarianMatcher(num_points=32)
    torch.manual_seed(0)
    ref_cost = matcher.cost_matrix(low["pred_logits"][0], low["pred_masks"][0], targets[0])
    torch.manual_seed(0)
    ref = matcher(low, targets)
    torch.manual_seed(0)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = matcher(low, targets)
    torch.manual_seed(0)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        cost = matcher.cost_matrix(low["pred_logits"][0], low["pred_masks"][0], targets[0])
    assert ref_cost.dtype == cost.dtype == torch.float32
    torch.testing.assert_close(cost, ref_cost, rtol=0, atol=0)
    for (r0, c0), (r1, c1) in zip(ref, got):
        assert r0.tolist() == r1.tolist() and c0.tolist() == c1.tolist()


def test_nan_cost_raises_clear_error():
    gen = torch.Generator().manual_seed(6)
    outputs, targets = random_batch(gen, [2], num_queries=3)
    outputs["pred_logits"][0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="diverged"):
        HungarianMatcher(num_points=8)(outputs, targets)


def test_pairwise_costs_at_training_size_equal_a_per_pair_float64_loop():
    """Q = 100 queries, 12544 random points (the recipe's), 7 targets: the one-product BCE and the dice equal a
    per-pair float64 computation (F.binary_cross_entropy_with_logits on each pair) and the official two-product
    form, and the assignment is the float64 reference's."""
    from scipy.optimize import linear_sum_assignment

    gen = torch.Generator().manual_seed(7)
    num_queries, num_targets, hw = 100, 7, (24, 32)
    logits = torch.randn(num_queries, 134, generator=gen)
    masks = torch.randn(num_queries, *hw, generator=gen) * 6  # logits beyond softplus' linear threshold (20) too
    masks[0, 0, :8] = 30.0
    labels = torch.randint(0, 133, (num_targets,), generator=gen)
    tgt = torch.rand(num_targets, 48, 64, generator=gen) > 0.6
    points = torch.rand(12544, 2, generator=gen)
    cost = compute_cost_matrix(logits, masks, labels, tgt, points)

    grid = (points.double() * 2 - 1)[None, :, None]  # the bilinear point sampling, in float64
    x = torch.nn.functional.grid_sample(masks.double()[None], grid, align_corners=False)[0, :, :, 0]  # [Q, P]
    t = torch.nn.functional.grid_sample(tgt.double()[None], grid, align_corners=False)[0, :, :, 0]  # [T, P]
    probs = logits.double().softmax(-1)
    reference = torch.empty(num_queries, num_targets, dtype=torch.float64)
    for q in range(num_queries):
        for j in range(num_targets):
            bce = torch.nn.functional.binary_cross_entropy_with_logits(x[q], t[j])
            p = x[q].sigmoid()
            dice = 1 - (2 * (p * t[j]).sum() + 1) / (p.sum() + t[j].sum() + 1)
            reference[q, j] = -2 * probs[q, labels[j]] + 5 * bce + 5 * dice
    torch.testing.assert_close(cost.double(), reference, rtol=0, atol=2e-5)

    official_bce = (  # Mask2Former's batch_sigmoid_ce_loss, in float64
        torch.nn.functional.binary_cross_entropy_with_logits(x, torch.ones_like(x), reduction="none") @ t.T
        + torch.nn.functional.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none") @ (1 - t).T
    ) / x.shape[1]
    ours_bce = (torch.nn.functional.softplus(x).sum(-1, keepdim=True) - x @ t.T) / x.shape[1]
    # exact algebra; softplus returns x above 20 (error < e^-20 per point, on the 8 points at logit 30)
    torch.testing.assert_close(ours_bce, official_bce, rtol=0, atol=1e-10)

    rows, cols = linear_sum_assignment(cost.numpy())
    ref_rows, ref_cols = linear_sum_assignment(reference.numpy())
    assert rows.tolist() == ref_rows.tolist() and cols.tolist() == ref_cols.tolist()
