"""The two meta-architectures and their shared parts: every config builds the meta-architecture its YAML names,
configs whose heads do not fit it fail at build time naming the fix, both share SegmentorBase, and the per-pixel
heads share PerPixelHead (inputs, classifier, aux policy)."""

from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, load_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from torch import nn

import universal_seg.data  # noqa: F401
import universal_seg.modeling  # noqa: F401
from universal_seg.modeling.heads import CGRSegHead, PerPixelHead, SegFormerHead
from universal_seg.modeling.meta_arch import PerPixelSegmentor, SegmentorBase, UniversalSegmentor
from universal_seg.modeling.segmentation_head import SegmentationHead

CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))
SEGFORMER_MINI = "configs/mini/semantic/segformer_b0.yaml"
M2F_MINI = "configs/mini/panoptic/m2f_r18.yaml"


def named_meta_architecture(path: Path) -> str | None:
    """MODEL.META_ARCHITECTURE as the YAML file states it, else as its _BASE_ chain does (read with plain yaml)."""
    data = yaml.safe_load(path.read_text())
    name = (data.get("MODEL") or {}).get("META_ARCHITECTURE")
    if name is None and "_BASE_" in data:
        return named_meta_architecture((path.parent / data["_BASE_"]).resolve())
    return name


def test_every_config_is_listed():
    assert len(CONFIGS) >= 40 and "configs/ade20k/semantic/Base-ADE20K-SemanticSegmentation.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS)
def test_config_builds_the_meta_architecture_it_names(path):
    name = named_meta_architecture(ROOT / path)
    expected = {"UniversalSegmentor": UniversalSegmentor, "PerPixelSegmentor": PerPixelSegmentor}
    assert name in expected, f"{path} names no meta-architecture of ours ({name!r})"
    with torch.device("meta"):  # full-size models without memory or init cost
        model = build_model(load_cfg(path, "MODEL.DEVICE", "meta"))
    assert type(model) is expected[name]
    assert isinstance(model.sem_seg_head, PerPixelHead if name == "PerPixelSegmentor" else SegmentationHead)
    assert next(model.parameters()).device.type == "meta"


def test_both_meta_architectures_are_registered_on_one_base():
    assert META_ARCH_REGISTRY.get("UniversalSegmentor") is UniversalSegmentor
    assert META_ARCH_REGISTRY.get("PerPixelSegmentor") is PerPixelSegmentor
    for cls in (UniversalSegmentor, PerPixelSegmentor):
        assert issubclass(cls, SegmentorBase)
        for shared in ("preprocess", "output_size", "forward"):  # one implementation, in the base
            assert getattr(cls, shared) is getattr(SegmentorBase, shared)


def test_per_pixel_head_under_mask_classification_is_a_build_time_error():
    with pytest.raises(
        ValueError,
        match=r"'SegFormerHead' is a per-pixel head.*set MODEL.META_ARCHITECTURE to "
        r"'PerPixelSegmentor'\.$",
    ):
        build_model(load_cfg(SEGFORMER_MINI, "MODEL.META_ARCHITECTURE", "UniversalSegmentor"))


def test_unknown_head_name_under_mask_classification_is_a_build_time_error():
    with pytest.raises(ValueError, match=r"NAME='MaskFormerHeda' is not a head UniversalSegmentor knows"):
        build_model(load_cfg(M2F_MINI, "MODEL.SEM_SEG_HEAD.NAME", "MaskFormerHeda"))
    model = build_model(load_cfg(M2F_MINI, "MODEL.SEM_SEG_HEAD.NAME", "MaskFormerHead"))  # the official configs' name
    assert isinstance(model, UniversalSegmentor)


def test_mask_classification_config_under_per_pixel_is_a_build_time_error():
    # the Mask2Former configs leave MODEL.SEM_SEG_HEAD.NAME at detectron2's default, which is no per-pixel head
    with pytest.raises(
        ValueError,
        match=r"'SemSegFPNHead' is not registered as a per-pixel head.*"
        r"set MODEL.META_ARCHITECTURE to 'UniversalSegmentor'",
    ):
        build_model(load_cfg(M2F_MINI, "MODEL.META_ARCHITECTURE", "PerPixelSegmentor"))


def test_per_pixel_segmentor_refuses_another_head():
    class Backbone(nn.Module):
        size_divisibility = 1

    with pytest.raises(TypeError, match="PerPixelHead"):
        PerPixelSegmentor(
            backbone=Backbone(),
            sem_seg_head=nn.Conv2d(3, 2, 1),
            size_divisibility=1,
            pixel_mean=(0.0, 0.0, 0.0),
            pixel_std=(1.0, 1.0, 1.0),
        )


# ------------------------------------------------------------------------------------ the shared per-pixel head
def _shapes(strides, channels=8):
    return {f"res{i + 2}": ShapeSpec(channels=channels * (i + 1), stride=s) for i, s in enumerate(strides)}


def test_classifier_keeps_each_heads_name_and_init():
    torch.manual_seed(0)
    segformer = SegFormerHead(_shapes([4, 8, 16, 32]), num_classes=5, embed_dim=16, dropout=0.1)
    assert segformer.classifier is segformer.linear_pred and not hasattr(segformer, "conv_seg")
    assert list(segformer.state_dict())[-2:] == ["linear_pred.weight", "linear_pred.bias"]
    cgrseg = CGRSegHead(_shapes([8, 16, 32]), num_classes=5, channels=16, context_rcms=1)
    assert cgrseg.classifier is cgrseg.conv_seg and not hasattr(cgrseg, "linear_pred")
    assert torch.equal(cgrseg.conv_seg.bias, torch.zeros(5))  # mmseg's init: normal(0, 0.01), zero bias
    assert cgrseg.conv_seg.weight.std().item() == pytest.approx(0.01, rel=0.3)
    # classify = 1x1 conv after dropout (identity in eval)
    x = torch.randn(2, 16, 3, 4)
    segformer.eval()
    expected = torch.einsum("kc,bchw->bkhw", segformer.linear_pred.weight[:, :, 0, 0], x)
    expected = expected + segformer.linear_pred.bias[None, :, None, None]
    torch.testing.assert_close(segformer.classify(x), expected)


def test_inputs_are_ordered_fine_to_coarse_and_counted():
    shapes = dict(reversed(list(_shapes([4, 8, 16, 32]).items())))  # given coarse to fine
    head = SegFormerHead(shapes, num_classes=3, embed_dim=8)
    assert head.in_features == ["res2", "res3", "res4", "res5"] and head.in_channels == [8, 16, 24, 32]
    with pytest.raises(ValueError, match=r"SegFormerHead needs the four MiT stages.*IN_FEATURES"):
        SegFormerHead(_shapes([4, 8, 16]), num_classes=3)


def test_heads_without_auxiliary_inputs_refuse_them():
    cfg = load_cfg(SEGFORMER_MINI, "MODEL.SEM_SEG_HEAD.AUX_IN_FEATURES", "['res3']")
    with pytest.raises(ValueError, match="SegFormerHead has no auxiliary heads.*AUX_IN_FEATURES empty"):
        build_model(cfg)


@pytest.mark.parametrize("mask_hw", [(32, 32), (27, 30)])
def test_prepare_targets_pads_masks_with_zeros_to_the_batch_size(mask_hw):
    """Masks already at the padded size are used as they are (no copy), smaller ones are zero-padded: both equal a
    hand-padded [n, 32, 32] bool tensor."""
    from types import SimpleNamespace

    from detectron2.structures import ImageList, Instances

    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(3, *mask_hw, generator=gen) > 0.5
    inst = Instances(mask_hw, gt_classes=torch.tensor([2, 0, 1]), gt_masks=masks)
    model = SimpleNamespace(device=torch.device("cpu"), _instances_of=lambda x: x["instances"])
    images = ImageList(torch.zeros(1, 3, 32, 32), [mask_hw])
    (target,) = UniversalSegmentor.prepare_targets(model, [{"instances": inst}], images)
    expected = torch.zeros(3, 32, 32, dtype=torch.bool)
    expected[:, : mask_hw[0], : mask_hw[1]] = masks
    assert target["masks"].dtype == torch.bool and torch.equal(target["masks"], expected)
    assert target["labels"].tolist() == [2, 0, 1]
