"""PerPixelSegmentor and the per-pixel heads' shared losses: CE loss (with padding and auxiliary heads),
sliding-window inference, meta-architecture / head selection and config errors. Dummy backbones / heads make every
expected value computable by hand."""

import math

import pytest
import torch
from conftest import load_cfg
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from torch import nn

import universal_seg.data  # noqa: F401
import universal_seg.modeling  # noqa: F401
from universal_seg.modeling.heads import PerPixelHead, per_pixel_ce_loss, slide_window_logits
from universal_seg.modeling.heads.inference import window_starts
from universal_seg.modeling.meta_arch import PerPixelSegmentor

MINI = "configs/mini/semantic/segformer_b0.yaml"


class IdentityBackbone(nn.Module):
    size_divisibility = 1

    def forward(self, x):
        return {"res2": x}


class LinearHead(PerPixelHead):
    """logits = 1x1 conv of the image (full resolution); aux = the same logits with their own weight."""

    def __init__(self, in_channels=3, num_classes=4, aux_weight=None, loss_weight=1.0):
        super().__init__(num_classes=num_classes, loss_weight=loss_weight)
        self.conv = nn.Conv2d(in_channels, num_classes, 1)
        self.aux_weight = aux_weight

    def forward(self, features):
        logits = self.conv(features["res2"])
        out = {"sem_seg_logits": logits}
        if self.training and self.aux_weight is not None:
            out["aux_logits"] = [(2 * logits, self.aux_weight)]
        return out


class WindowMeanHead(PerPixelHead):
    """Constant logits per window: [mean of the window, -mean] over the window's first channel."""

    def __init__(self):
        super().__init__(num_classes=2)

    def forward(self, features):
        x = features["res2"][:, :1]
        m = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
        return {"sem_seg_logits": torch.cat([m, -m], dim=1)}


def dummy_segmentor(head, slide_window=None, size_divisibility=1):
    return PerPixelSegmentor(
        backbone=IdentityBackbone(),
        sem_seg_head=head,
        size_divisibility=size_divisibility,
        pixel_mean=(0.0, 0.0, 0.0),
        pixel_std=(1.0, 1.0, 1.0),
        slide_window=slide_window,
    )


def hand_ce(logits, target, ignore=255):
    """Mean over labelled pixels of -log softmax(logits)[target], with explicit loops. logits [K, H, W]."""
    total, n = 0.0, 0
    for y in range(target.shape[0]):
        for x in range(target.shape[1]):
            t = int(target[y, x])
            if t == ignore:
                continue
            z = [float(v) for v in logits[:, y, x]]
            total += math.log(sum(math.exp(v) for v in z)) - z[t]
            n += 1
    return total / n, total, n


def test_ce_loss_equals_hand_computed():
    logits = torch.tensor([[[2.0, 0.0], [1.0, -1.0]], [[0.5, 0.5], [3.0, 0.0]], [[-1.0, 2.0], [0.0, 0.0]]])[None]
    target = torch.tensor([[[0, 2], [255, 1]]])
    expected, _, n = hand_ce(logits[0], target[0])
    assert n == 3
    assert per_pixel_ce_loss(logits, target, 255).item() == pytest.approx(expected, rel=1e-6)
    # everything ignored: zero loss that still has a gradient path
    loss = per_pixel_ce_loss(logits.requires_grad_(), torch.full_like(target, 255), 255)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_ce_loss_upsamples_logits_bilinearly():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 2)
    target = torch.randint(0, 3, (1, 4, 4))
    up = torch.nn.functional.interpolate(logits, size=(4, 4), mode="bilinear", align_corners=False)
    assert per_pixel_ce_loss(logits, target, 255).item() == pytest.approx(hand_ce(up[0], target[0])[0], rel=1e-6)


def test_training_loss_ignores_padding_and_weights_aux():
    torch.manual_seed(0)
    model = dummy_segmentor(LinearHead(aux_weight=0.4, loss_weight=2.0), size_divisibility=4).train()
    inputs = [
        {"image": torch.randint(0, 255, (3, 5, 6)).to(torch.uint8), "sem_seg": torch.randint(0, 4, (5, 6))},
        {"image": torch.randint(0, 255, (3, 3, 7)).to(torch.uint8), "sem_seg": torch.randint(0, 4, (3, 7))},
    ]
    inputs[1]["sem_seg"][0, 0] = 255
    losses = model(inputs)
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_aux0"}
    total, count = 0.0, 0
    aux_total = 0.0
    with torch.no_grad():
        for x in inputs:
            logits = model.sem_seg_head.conv(x["image"].float()[None])[0]  # padding excluded: each image at its size
            total += hand_ce(logits, x["sem_seg"])[1]
            aux_total += hand_ce(2 * logits, x["sem_seg"])[1]
            count += hand_ce(logits, x["sem_seg"])[2]
    assert losses["loss_sem_seg"].item() == pytest.approx(2.0 * total / count, rel=1e-5)
    assert losses["loss_sem_seg_aux0"].item() == pytest.approx(0.4 * aux_total / count, rel=1e-5)
    sum(losses.values()).backward()
    assert model.sem_seg_head.conv.weight.grad is not None


def test_training_without_sem_seg_is_a_clear_error():
    model = dummy_segmentor(LinearHead()).train()
    with pytest.raises(ValueError, match="sem_seg"):
        model([{"image": torch.zeros(3, 4, 4, dtype=torch.uint8)}])


def test_window_starts_follow_mmseg_slide_mode():
    assert window_starts(5, 3, 2) == [0, 2]
    assert window_starts(7, 4, 3) == [0, 3]
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(3, 4, 3) == [0]  # image smaller than the crop: one clipped window
    assert window_starts(1024, 512, 341) == [0, 341, 512]


def test_sliding_window_averages_window_logits_by_hand():
    torch.manual_seed(0)
    image = torch.randn(3, 5, 7)
    # windows (crop 3x4, stride 2x3): rows [0,3) and [2,5), columns [0,4) and [3,7)
    boxes = [(0, 3, 0, 4), (0, 3, 3, 7), (2, 5, 0, 4), (2, 5, 3, 7)]
    expected = torch.zeros(5, 7)
    for y in range(5):
        for x in range(7):
            means = [image[0, y1:y2, x1:x2].mean() for y1, y2, x1, x2 in boxes if y1 <= y < y2 and x1 <= x < x2]
            expected[y, x] = sum(means) / len(means)
    head = WindowMeanHead()
    got = slide_window_logits(image, lambda crops: head({"res2": crops})["sem_seg_logits"], (3, 4), (2, 3))
    torch.testing.assert_close(got[0], expected)
    torch.testing.assert_close(got[1], -expected)

    # through the meta-architecture: softmax of the averaged logits at the requested output size
    model = dummy_segmentor(WindowMeanHead(), slide_window=((3, 4), (2, 3))).eval()
    with torch.no_grad():
        out = model([{"image": image * 0 + image}])[0]["sem_seg"]  # float image: preprocess keeps it
    torch.testing.assert_close(out, torch.stack([expected, -expected]).softmax(0))


def test_whole_image_inference_resizes_logits_then_softmax():
    torch.manual_seed(0)
    model = dummy_segmentor(LinearHead(), size_divisibility=4).eval()
    image = torch.randn(3, 5, 6)
    with torch.no_grad():
        out = model([{"image": image, "height": 10, "width": 12}])[0]
        logits = model.sem_seg_head.conv(image[None])
        expected = torch.nn.functional.interpolate(logits, size=(10, 12), mode="bilinear", align_corners=False)
    assert set(model([{"image": image}])[0]) == {"sem_seg"}
    torch.testing.assert_close(out["sem_seg"], expected[0].softmax(0))


def test_per_pixel_head_rejects_panoptic_and_instance():
    from universal_seg.modeling.meta_arch import enable_output_task, output_tasks

    cfg = load_cfg(MINI)
    assert output_tasks(cfg) == ("semantic",)
    enable_output_task(cfg, "semantic")
    for task in ("panoptic", "instance"):
        with pytest.raises(ValueError, match=f"semantic segmentation only, not {task}"):
            enable_output_task(cfg, task)


def test_meta_architecture_selects_the_path():
    cfg = load_cfg(MINI)
    assert cfg.MODEL.META_ARCHITECTURE == "PerPixelSegmentor" and cfg.MODEL.SEM_SEG_HEAD.NAME == "SegFormerHead"
    model = build_model(cfg)
    assert isinstance(model, PerPixelSegmentor) and isinstance(model.sem_seg_head, PerPixelHead)
    assert not hasattr(model, "criterion") and not hasattr(model, "num_queries")
    assert get_cfg().MODEL.SEM_SEG_HEAD.NAME == "SemSegFPNHead"  # detectron2's default: no per-pixel head
    for name in ("NoSuchHead", "SemSegFPNHead"):
        with pytest.raises(ValueError, match=f"MODEL.SEM_SEG_HEAD.NAME='{name}' is not registered as a per-pixel"):
            build_model(load_cfg(MINI, "MODEL.SEM_SEG_HEAD.NAME", name))


def test_bad_slide_window_config_is_a_clear_error():
    with pytest.raises(ValueError, match="SLIDE_WINDOW"):
        build_model(
            load_cfg(
                MINI,
                "MODEL.PER_PIXEL.SLIDE_WINDOW.ENABLED",
                "True",
                "MODEL.PER_PIXEL.SLIDE_WINDOW.STRIDE",
                "[600, 600]",
            )
        )


def test_mini_config_trains_and_infers_with_slide_window():
    torch.manual_seed(0)
    cfg = load_cfg(
        MINI,
        "MODEL.PER_PIXEL.SLIDE_WINDOW.ENABLED",
        "True",
        "MODEL.PER_PIXEL.SLIDE_WINDOW.CROP_SIZE",
        "[64, 64]",
        "MODEL.PER_PIXEL.SLIDE_WINDOW.STRIDE",
        "[48, 48]",
    )
    assert cfg.DATASETS.TRAIN == ("mini_sem_seg_train",) and cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 21
    model = build_model(cfg).train()
    inputs = [
        {"image": torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8), "sem_seg": torch.randint(0, 21, (96, 128))}
        for _ in range(2)
    ]
    losses = model(inputs)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.sem_seg_head.parameters())
    model.eval()
    with torch.no_grad():
        out = model([{"image": inputs[0]["image"], "height": 48, "width": 64}])[0]["sem_seg"]
    assert out.shape == (21, 48, 64)
    torch.testing.assert_close(out.sum(0), torch.ones(48, 64))


def test_class_probabilities_any_layout_equals_softmax():
    from universal_seg.modeling.heads import class_probabilities

    torch.manual_seed(0)
    logits = torch.randn(1, 5, 6, 7) * 10
    expected = logits[0].double().softmax(0)
    for layout in (torch.contiguous_format, torch.channels_last):
        x = logits.contiguous(memory_format=layout)[0].clone(memory_format=torch.preserve_format)
        with torch.no_grad():
            torch.testing.assert_close(class_probabilities(x).double(), expected, rtol=1e-6, atol=1e-7)
        y = logits.contiguous(memory_format=layout)[0].detach().requires_grad_()
        probs = class_probabilities(y)  # autograd needs the logits: not in place
        torch.testing.assert_close(probs.double(), expected, rtol=1e-6, atol=1e-7)
        probs[2].sum().backward()
        assert y.grad is not None and torch.isfinite(y.grad).all()
