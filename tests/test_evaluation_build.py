"""build_evaluator picks the evaluators from a dataset's evaluator_type (and the TEST.*_ON flags);
SemanticSegmentorWithTTA averages flipped-back multi-scale outputs."""

import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)
from torch import nn

import universal_seg.data  # noqa: F401
from universal_seg.config import add_universal_seg_config
from universal_seg.evaluation import InstanceSegEvaluator, SemanticSegmentorWithTTA, build_evaluator
from universal_seg.evaluation.build import CheckedSemSegEvaluator, PanopticEvaluator
from universal_seg.evaluation.coco import FastCOCOEvaluator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_mini = pytest.mark.skipif(
    not os.path.exists(os.path.join(REPO, "datasets", "mini", ".complete-v2")),
    reason="datasets/mini not built (python datasets/prepare_mini.py)",
)


def _cfg(panoptic=True, semantic=True, instance=True):
    cfg = get_cfg()
    add_universal_seg_config(cfg)
    cfg.MODEL.MASK_FORMER.TEST.update(PANOPTIC_ON=panoptic, SEMANTIC_ON=semantic, INSTANCE_ON=instance)
    return cfg


def _types(evaluator):
    children = evaluator._evaluators if isinstance(evaluator, DatasetEvaluators) else [evaluator]
    return [type(e) for e in children]


@needs_mini
def test_panoptic_with_sem_seg_all_outputs(tmp_path):
    evaluator = build_evaluator(_cfg(), "mini_panoptic_val_with_sem_seg", str(tmp_path))
    # mini things are contiguous 1-20 (background is 0), so instance AP needs InstanceSegEvaluator
    assert _types(evaluator) == [PanopticEvaluator, CheckedSemSegEvaluator, InstanceSegEvaluator]


@needs_mini
def test_panoptic_flags_select_evaluators(tmp_path):
    assert _types(build_evaluator(_cfg(semantic=False, instance=False), "mini_panoptic_val_with_sem_seg")) == [
        PanopticEvaluator
    ]
    assert _types(build_evaluator(_cfg(panoptic=False, instance=False), "mini_panoptic_val_with_sem_seg")) == [
        CheckedSemSegEvaluator
    ]
    # without a semantic root, SEMANTIC_ON adds nothing
    assert _types(build_evaluator(_cfg(instance=False), "mini_panoptic_val")) == [PanopticEvaluator]
    # a config without universal_seg's keys (add_universal_seg_config not called) fails loudly
    with pytest.raises(ValueError, match="META_ARCHITECTURE"):
        build_evaluator(get_cfg(), "mini_panoptic_val_with_sem_seg", str(tmp_path))
    with pytest.raises(ValueError, match="No evaluator enabled"):
        build_evaluator(_cfg(False, False, False), "mini_panoptic_val_with_sem_seg")


@needs_mini
def test_sem_seg_and_coco_instance_types():
    assert _types(build_evaluator(_cfg(), "mini_sem_seg_val")) == [CheckedSemSegEvaluator]
    # mini instance ids 1-20 -> contiguous 0-19 (things first): detectron2's COCOEvaluator, AP by faster-coco-eval
    evaluator = build_evaluator(_cfg(), "mini_instance_val")
    assert type(evaluator) is FastCOCOEvaluator and evaluator._use_fast_impl is False


@pytest.mark.parametrize("name", ["ade20k_panoptic_val", "mapillary_vistas_panoptic_val", "coco_2017_val_panoptic"])
def test_other_panoptic_types(name):
    # panoptic only: these evaluators read no annotation file at construction
    assert _types(build_evaluator(_cfg(semantic=False, instance=False), name)) == [PanopticEvaluator]


def test_cityscapes_types():
    assert _types(build_evaluator(_cfg(), "cityscapes_fine_sem_seg_val")) == [CityscapesSemSegEvaluator]
    assert _types(build_evaluator(_cfg(), "cityscapes_fine_instance_seg_val")) == [CityscapesInstanceEvaluator]
    assert _types(build_evaluator(_cfg(), "cityscapes_fine_panoptic_val")) == [
        CityscapesInstanceEvaluator,
        CityscapesSemSegEvaluator,
        PanopticEvaluator,
    ]
    assert _types(build_evaluator(_cfg(instance=False, semantic=False), "cityscapes_fine_panoptic_val")) == [
        PanopticEvaluator
    ]


def test_unknown_evaluator_type_names_the_fix():
    MetadataCatalog.get("_test_no_evaluator_type").set(thing_classes=["a"])
    with pytest.raises(NotImplementedError, match="_test_no_evaluator_type.*evaluator_type"):
        build_evaluator(_cfg(), "_test_no_evaluator_type")


# ---------------------------------------------------------------- semantic TTA
class ScaleFlipModel(nn.Module):
    """sem_seg [2, height, width]: channel 0 = (the received image is bright, > 127, at that column) * s / 100,
    channel 1 = s / 100 + (1 if the received image is flipped), where s = the received image height."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, inputs):
        (x,) = inputs
        image = x["image"]
        s, flipped = image.shape[-2], float(image[0, 0, 0] > 127)
        self.sizes.append(tuple(image.shape[-2:]))
        bright = (image[:1, :1, :] > 127).float()[None]  # [1, 1, 1, w]; resizing blurs the edge
        bright = F.interpolate(bright, size=(x["height"], x["width"]), mode="nearest")[0, 0]
        return [{"sem_seg": torch.stack([bright * s / 100, torch.full_like(bright, s / 100 + flipped)])}]


def _tta_cfg(min_sizes, flip):
    cfg = get_cfg()
    cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.MAX_SIZE, cfg.TEST.AUG.FLIP = min_sizes, 1000, flip
    return cfg


def _half_bright_image():
    image = torch.zeros(3, 4, 8, dtype=torch.uint8)
    image[:, :, 4:] = 255  # columns 4-7 bright
    return image


def test_tta_average_and_flip_back():
    model = ScaleFlipModel()
    tta = SemanticSegmentorWithTTA(_tta_cfg((4, 8), True), model, softmax=False)
    (out,) = tta([{"image": _half_bright_image(), "height": 4, "width": 8}])
    assert model.sizes == [(4, 8), (4, 8), (8, 16), (8, 16)]  # each scale, unflipped then flipped
    # channel 0: flipped outputs are bright on the left and must be flipped back: (x >= 4) * mean(.04, .04, .08, .08)
    expected0 = torch.zeros(4, 8)
    expected0[:, 4:] = 0.06
    torch.testing.assert_close(out["sem_seg"][0], expected0)
    # channel 1: mean(.04, 1.04, .08, 1.08): half the variants are flipped
    torch.testing.assert_close(out["sem_seg"][1], torch.full((4, 8), 0.56))


def test_tta_output_at_requested_size_without_flip():
    model = ScaleFlipModel()
    tta = SemanticSegmentorWithTTA(_tta_cfg((8,), False), model, softmax=False)
    (out,) = tta([{"image": _half_bright_image(), "height": 2, "width": 4}])
    assert model.sizes == [(8, 16)]
    torch.testing.assert_close(out["sem_seg"], torch.tensor([[[0, 0, 0.08, 0.08]] * 2, [[0.08] * 4] * 2]))


def test_tta_softmax_then_average():
    class LogitModel(nn.Module):  # logits [log s, 0]: softmax channel 0 = s / (s + 1)
        def forward(self, inputs):
            s = float(inputs[0]["image"].shape[-2])
            return [{"sem_seg": torch.tensor([s, 1.0]).log()[:, None, None].expand(2, 4, 8)}]

    tta = SemanticSegmentorWithTTA(_tta_cfg((4, 8), True), LogitModel(), softmax=True)
    (out,) = tta([{"image": _half_bright_image()}])
    torch.testing.assert_close(out["sem_seg"][0], torch.full((4, 8), (4 / 5 + 8 / 9) / 2))
    torch.testing.assert_close(out["sem_seg"].sum(0), torch.ones(4, 8))


@needs_mini
def test_checked_semantic_evaluator_equals_detectron2s_and_names_bad_labels(tmp_path):
    """On good labels the metrics are detectron2's SemSegEvaluator's; a label of another size (detectron2: a
    broadcast error) or with ids beyond the classes (detectron2: counted silently) raises AnnotationError naming
    the file."""
    import numpy as np
    import torch
    from detectron2.data import DatasetCatalog
    from PIL import Image

    from universal_seg.data.mappers.image_io import AnnotationError

    record = DatasetCatalog.get("mini_sem_seg_val")[0]
    label = np.asarray(Image.open(record["sem_seg_file_name"]))
    scores = torch.rand(21, *label.shape, generator=torch.Generator().manual_seed(0))
    results = []
    for cls in (SemSegEvaluator, CheckedSemSegEvaluator):
        evaluator = cls("mini_sem_seg_val", distributed=False)
        evaluator.reset()
        evaluator.process([record], [{"sem_seg": scores}])
        results.append(evaluator.evaluate())
    assert repr(results[0]) == repr(results[1])  # repr: NaN (classes absent from the image) equals itself
    cases = {"small.png": label[:-10], "stray.png": np.where(label == 0, 40, label).astype(np.uint8)}
    for name, bad in cases.items():
        Image.fromarray(bad).save(tmp_path / name)
        evaluator = CheckedSemSegEvaluator("mini_sem_seg_val", distributed=False)
        evaluator.reset()
        evaluator.input_file_to_gt_file[record["file_name"]] = str(tmp_path / name)
        with pytest.raises(AnnotationError, match=f"^Label '{tmp_path / name}' (is|holds class id)"):
            evaluator.process([record], [{"sem_seg": scores}])
