"""SetCriterion: loss names, hand-computed CE / BCE / dice, num_masks normalisation, zero-GT batches, AMP."""

import math

import pytest
import torch
import torch.distributed as dist
from conftest import FixedMatcher
from torch import nn

from universal_seg.modeling.criterion import SetCriterion, build_weight_dict, count_masks
from universal_seg.modeling.matcher import HungarianMatcher


def pixel_centres(height, width):
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([(xs.flatten() + 0.5) / width, (ys.flatten() + 0.5) / height], dim=1).float()


def at_pixel_centres(criterion, height, width):
    """Replace importance sampling by every pixel centre, so point losses equal per-pixel losses."""
    points = pixel_centres(height, width)
    criterion.sample_points = lambda logits: points[None].expand(logits.shape[0], -1, -1)
    return criterion


def random_outputs(gen, batch=2, queries=4, num_classes=3, hw=(5, 6), aux=0, requires_grad=False):
    def one():
        logits = torch.randn(batch, queries, num_classes + 1, generator=gen)
        masks = torch.randn(batch, queries, *hw, generator=gen) * 2
        return {"pred_logits": logits.requires_grad_(requires_grad), "pred_masks": masks.requires_grad_(requires_grad)}

    outputs = one()
    if aux:
        outputs["aux_outputs"] = [one() for _ in range(aux)]
    return outputs


def random_targets(gen, sizes, num_classes=3, hw=(5, 6)):
    return [
        {"labels": torch.randint(0, num_classes, (n,), generator=gen), "masks": torch.rand(n, *hw, generator=gen) > 0.5}
        for n in sizes
    ]


def hand_point_losses(logits, target):
    """(mean BCE, dice) of one mask: logits [H, W], target [H, W], by loops over pixels."""
    bce, inter, sp, st, n = 0.0, 0.0, 0.0, 0.0, 0
    for x, t in zip(logits.flatten().tolist(), target.flatten().float().tolist()):
        p = 1 / (1 + math.exp(-x))
        bce += -(t * math.log(p) + (1 - t) * math.log(1 - p))
        inter, sp, st, n = inter + p * t, sp + p, st + t, n + 1
    return bce / n, 1 - (2 * inter + 1) / (sp + st + 1)


def test_build_weight_dict():
    weights = build_weight_dict()
    assert len(weights) == 30
    assert weights["loss_ce"] == 2.0 and weights["loss_mask"] == 5.0 and weights["loss_dice"] == 5.0
    assert weights["loss_ce_8"] == 2.0 and "loss_ce_9" not in weights
    assert build_weight_dict(deep_supervision=False) == {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}


def test_loss_names_with_nine_aux_outputs_are_finite():
    gen = torch.Generator().manual_seed(0)
    outputs = random_outputs(gen, aux=9)
    targets = random_targets(gen, [2, 3])
    criterion = SetCriterion(3, HungarianMatcher(num_points=20), build_weight_dict(), num_points=20)
    losses = criterion(outputs, targets)
    assert len(losses) == 30
    assert set(losses) == set(criterion.weight_dict)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())


def test_cross_entropy_with_no_object_weight():
    """Q = 3 queries, 1 target matched to query 1: weighted mean over queries, no-object weight 0.1."""
    gen = torch.Generator().manual_seed(1)
    outputs = random_outputs(gen, batch=1, queries=3, num_classes=4)
    targets = [{"labels": torch.tensor([2]), "masks": torch.ones(1, 5, 6, dtype=torch.bool)}]
    criterion = SetCriterion(4, FixedMatcher([([1], [0])]), {}, eos_coef=0.1, losses=("labels",))
    loss = criterion(outputs, targets)["loss_ce"]

    logits = outputs["pred_logits"][0].tolist()
    classes, weights = [4, 2, 4], [0.1, 1.0, 0.1]  # no-object (index 4) for the unmatched queries
    nll = [-(row[c] - math.log(sum(math.exp(v) for v in row))) for row, c in zip(logits, classes)]
    expected = sum(w * loss for w, loss in zip(weights, nll)) / sum(weights)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    weight = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.1])
    reference = nn.functional.cross_entropy(outputs["pred_logits"][0], torch.tensor(classes), weight=weight)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)


def test_mask_losses_by_hand_and_normalised_by_number_of_masks():
    """Two images with 2 and 1 masks: sum of per-mask losses / 3."""
    gen = torch.Generator().manual_seed(2)
    outputs = random_outputs(gen, batch=2, queries=4, hw=(4, 5))
    targets = random_targets(gen, [2, 1], hw=(4, 5))
    pairs = [([3, 0], [1, 0]), ([2], [0])]
    criterion = at_pixel_centres(SetCriterion(3, FixedMatcher(pairs), {}, losses=("masks",)), 4, 5)
    losses = criterion(outputs, targets)

    bce_sum, dice_sum = 0.0, 0.0
    for b, (rows, cols) in enumerate(pairs):
        for q, t in zip(rows, cols):
            bce, dice = hand_point_losses(outputs["pred_masks"][b, q], targets[b]["masks"][t])
            bce_sum, dice_sum = bce_sum + bce, dice_sum + dice
    assert losses["loss_mask"].item() == pytest.approx(bce_sum / 3, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(dice_sum / 3, rel=1e-5)


def test_targets_at_a_finer_resolution():
    """GT masks at 2x the prediction size (nearest upsampled) give the same losses as at 1x."""
    gen = torch.Generator().manual_seed(3)
    outputs = random_outputs(gen, batch=1, queries=2, hw=(4, 5))
    small = random_targets(gen, [2], hw=(4, 5))
    big = [{"labels": small[0]["labels"], "masks": small[0]["masks"].repeat_interleave(2, 1).repeat_interleave(2, 2)}]
    criterion = at_pixel_centres(SetCriterion(3, FixedMatcher([([0, 1], [1, 0])]), {}), 4, 5)
    a, b = criterion(outputs, small), criterion(outputs, big)
    for key in ("loss_mask", "loss_dice"):
        assert a[key].item() == pytest.approx(b[key].item(), rel=1e-6)


@pytest.mark.parametrize("sizes", [[0, 0], [0, 2]])
def test_zero_gt_images(sizes):
    gen = torch.Generator().manual_seed(4)
    outputs = random_outputs(gen, aux=2, requires_grad=True)
    targets = random_targets(gen, sizes)
    criterion = SetCriterion(3, HungarianMatcher(num_points=16), build_weight_dict(dec_layers=3), num_points=16)
    losses = criterion(outputs, targets)
    assert len(losses) == 9 and all(torch.isfinite(v) for v in losses.values())
    if sum(sizes) == 0:
        assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    total = sum(criterion.weight_dict[k] * v for k, v in losses.items())
    total.backward()
    for out in [outputs] + outputs["aux_outputs"]:
        assert out["pred_masks"].grad is not None and out["pred_logits"].grad is not None
        assert out["pred_logits"].grad.abs().sum() > 0


def test_count_masks_single_process_and_clamp():
    assert count_masks([{"labels": torch.zeros(2)}, {"labels": torch.zeros(3)}], torch.device("cpu")).item() == 5
    assert count_masks([{"labels": torch.zeros(0)}], torch.device("cpu")).item() == 1


def test_count_masks_averages_over_workers(tmp_path):
    """With a (single-worker gloo) process group the count goes through all_reduce / world size."""
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        assert count_masks([{"labels": torch.zeros(4)}], torch.device("cpu")).item() == 4
    finally:
        dist.destroy_process_group()


def test_importance_sampling_prefers_uncertain_points():
    """Points picked by uncertainty lie nearer the decision boundary than uniform ones."""
    torch.manual_seed(0)
    criterion = SetCriterion(
        1, HungarianMatcher(), {}, num_points=200, oversample_ratio=3.0, importance_sample_ratio=0.75
    )
    xs = torch.linspace(-8, 8, 32)
    logits = xs[None, None, None, :].expand(2, 1, 32, 32).contiguous()  # boundary at x = 0.5
    coords = criterion.sample_points(logits)
    assert coords.shape == (2, 200, 2) and coords.min() >= 0 and coords.max() <= 1
    uncertain = (coords[:, :150, 0] - 0.5).abs().mean()
    random = (coords[:, 150:, 0] - 0.5).abs().mean()
    assert uncertain < 0.15 < random


def test_fp32_losses_under_autocast():
    """bf16 outputs under autocast give fp32 losses equal to those of the same values in fp32."""
    gen = torch.Generator().manual_seed(5)
    outputs = random_outputs(gen, aux=1)
    low = {
        "pred_logits": outputs["pred_logits"].bfloat16(),
        "pred_masks": outputs["pred_masks"].bfloat16(),
        "aux_outputs": [{k: v.bfloat16() for k, v in outputs["aux_outputs"][0].items()}],
    }
    high = {
        "pred_logits": low["pred_logits"].float(),
        "pred_masks": low["pred_masks"].float(),
        "aux_outputs": [{k: v.float() for k, v in low["aux_outputs"][0].items()}],
    }
    targets = random_targets(gen, [2, 1])
    criterion = SetCriterion(3, HungarianMatcher(num_points=24), build_weight_dict(dec_layers=2), num_points=24)
    torch.manual_seed(0)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = criterion(low, targets)
    torch.manual_seed(0)
    ref = criterion(high, targets)
    for key in ref:
        assert got[key].dtype == torch.float32
        assert got[key].item() == pytest.approx(ref[key].item(), rel=1e-6, abs=1e-7)


def test_clear_errors():
    gen = torch.Generator().manual_seed(6)
    outputs = random_outputs(gen, batch=1)
    criterion = SetCriterion(3, HungarianMatcher(num_points=8), {}, num_points=8)
    with pytest.raises(ValueError, match="contiguous"):
        criterion(outputs, [{"labels": torch.tensor([3]), "masks": torch.ones(1, 5, 6)}])
    with pytest.raises(ValueError, match="2 targets"):
        criterion(outputs, random_targets(gen, [1, 1]))
    with pytest.raises(ValueError, match="unknown losses"):
        SetCriterion(3, HungarianMatcher(), {}, losses=("boxes",))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_fp16_autocast_is_finite():
    gen = torch.Generator().manual_seed(7)
    outputs = random_outputs(gen, aux=1)
    targets = random_targets(gen, [2, 0])
    pairs = [([1, 3], [0, 1]), ([], [])]
    cpu = at_pixel_centres(SetCriterion(3, FixedMatcher(pairs), {}), 5, 6)(outputs, targets)
    to_cuda = {
        "pred_logits": outputs["pred_logits"].cuda(),
        "pred_masks": outputs["pred_masks"].cuda(),
        "aux_outputs": [{k: v.cuda() for k, v in outputs["aux_outputs"][0].items()}],
    }
    cuda_targets = [{k: v.cuda() for k, v in t.items()} for t in targets]
    criterion = SetCriterion(3, FixedMatcher(pairs), {})
    criterion.sample_points = lambda logits, p=pixel_centres(5, 6).cuda(): p[None].expand(logits.shape[0], -1, -1)
    gpu = criterion.cuda()(to_cuda, cuda_targets)
    for key in cpu:
        assert gpu[key].item() == pytest.approx(cpu[key].item(), rel=1e-4, abs=1e-6)
    full = SetCriterion(3, HungarianMatcher(num_points=64), build_weight_dict(dec_layers=2), num_points=64).cuda()
    half = {
        "pred_logits": to_cuda["pred_logits"].half(),
        "pred_masks": to_cuda["pred_masks"].half(),
        "aux_outputs": [{k: v.half() for k, v in to_cuda["aux_outputs"][0].items()}],
    }
    with torch.autocast(device_type="cuda", dtype=torch.float16):
        losses = full(half, cuda_targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_empty_weight_is_in_the_state_dict_like_the_official_checkpoints():
    criterion = SetCriterion(133, HungarianMatcher(), {}, eos_coef=0.1)
    state = criterion.state_dict()
    assert list(state) == ["empty_weight"] and state["empty_weight"].shape == (134,)
    assert state["empty_weight"][-1].item() == pytest.approx(0.1) and state["empty_weight"][:-1].eq(1).all()


def test_masks_converted_to_float_once_for_all_prediction_sets():
    """The matcher and the mask losses of all 1 + 3 prediction sets read one float32 copy of each image's masks
    (not one conversion per prediction set), and the losses and gradients equal those from float inputs."""
    gen = torch.Generator().manual_seed(11)
    outputs = random_outputs(gen, batch=2, queries=5, aux=3, requires_grad=True)
    targets = random_targets(gen, [3, 2])
    seen = []

    class SpyMatcher(HungarianMatcher):
        def forward(self, outputs, targets):
            seen.append([(t["masks"].dtype, t["masks"].data_ptr()) for t in targets])
            return super().forward(outputs, targets)

    criterion = SetCriterion(3, SpyMatcher(num_points=16), build_weight_dict(dec_layers=4), num_points=16)

    def run(tgts):
        torch.manual_seed(0)
        losses = criterion(outputs, tgts)
        total = sum(losses.values())
        grads = torch.autograd.grad(total, [outputs["pred_masks"], outputs["aux_outputs"][0]["pred_masks"]])
        return losses, grads

    losses, grads = run(targets)
    assert len(seen) == 4 and all(s == seen[0] for s in seen)
    assert all(dtype == torch.float32 for dtype, _ in seen[0])
    float_targets = [{**t, "masks": t["masks"].float()} for t in targets]
    ref_losses, ref_grads = run(float_targets)
    assert losses.keys() == ref_losses.keys()
    for key in losses:
        assert torch.equal(losses[key], ref_losses[key]), key
    for g, r in zip(grads, ref_grads):
        assert torch.equal(g, r)
    assert targets[0]["masks"].dtype == torch.bool  # the caller's targets are not modified
