"""Cityscapes fine registrations (detectron2's built-in loaders, names and metadata, with path checks).

Instance loading reads ``*_instanceIds.png`` (``from_json=False``), so it needs no shapely; semantic needs
``*_labelTrainIds.png`` and panoptic ``gtFine/cityscapes_panoptic_{split}{,.json}`` (both made by
``datasets/prepare_cityscapes.py`` with cityscapesscripts).
"""

import glob
import os

from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES, _get_builtin_metadata
from detectron2.data.datasets.cityscapes import load_cityscapes_instances, load_cityscapes_semantic
from detectron2.data.datasets.cityscapes_panoptic import load_cityscapes_panoptic

from ._common import downloaded, made_by, register_checked

_SCRIPT = made_by("prepare_cityscapes.py")
_IMAGES = downloaded("leftImg8bit_trainvaltest.zip (cityscapes-dataset.com)", "cityscapes")
_LABELS = downloaded("gtFine_trainvaltest.zip (cityscapes-dataset.com)", "cityscapes")


def _panoptic_meta():
    """detectron2's Cityscapes panoptic metadata: every class under thing_* and stuff_*, contiguous id = trainId."""
    cats = CITYSCAPES_CATEGORIES
    names, colors = [c["name"] for c in cats], [c["color"] for c in cats]
    return dict(
        thing_classes=names,
        thing_colors=colors,
        stuff_classes=names,
        stuff_colors=colors,
        thing_dataset_id_to_contiguous_id={c["id"]: c["trainId"] for c in cats if c["isthing"]},
        stuff_dataset_id_to_contiguous_id={c["id"]: c["trainId"] for c in cats if not c["isthing"]},
        label_divisor=1000,
        ignore_label=255,
    )


def _load_semantic(image_dir, gt_dir):
    """detectron2's semantic loader, after checking that ``gt_dir`` holds the ``*_gtFine_labelTrainIds.png`` it
    reads (not in the download; detectron2 would stop on a bare AssertionError)."""
    if next(glob.iglob(os.path.join(gt_dir, "*", "*_gtFine_labelTrainIds.png")), None) is None:
        raise FileNotFoundError(
            f"Cityscapes semantic segmentation needs '{gt_dir}/<city>/*_gtFine_labelTrainIds.png', and there are "
            f"none; {_SCRIPT}."
        )
    return load_cityscapes_semantic(image_dir, gt_dir)


def register_all_cityscapes(root):
    meta = _get_builtin_metadata("cityscapes")
    for split in ("train", "val", "test"):
        images = os.path.join(root, "cityscapes/leftImg8bit", split)
        gt = os.path.join(root, "cityscapes/gtFine", split)
        register_checked(
            f"cityscapes_fine_instance_seg_{split}",
            lambda x=images, y=gt: load_cityscapes_instances(x, y, from_json=False, to_polygons=False),
            [(images, _IMAGES), (gt, _LABELS)],
            _SCRIPT,
            image_dir=images,
            gt_dir=gt,
            evaluator_type="cityscapes_instance",
            **meta,
        )
        register_checked(
            f"cityscapes_fine_sem_seg_{split}",
            lambda x=images, y=gt: _load_semantic(x, y),
            [(images, _IMAGES), (gt, _LABELS)],
            _SCRIPT,
            image_dir=images,
            gt_dir=gt,
            evaluator_type="cityscapes_sem_seg",
            ignore_label=255,
            **meta,
        )
    pan_meta = _panoptic_meta()
    for split in ("train", "val"):
        images = os.path.join(root, "cityscapes/leftImg8bit", split)
        pan_dir = os.path.join(root, f"cityscapes/gtFine/cityscapes_panoptic_{split}")
        pan_json = pan_dir + ".json"
        gt = os.path.join(root, "cityscapes/gtFine", split)
        register_checked(
            f"cityscapes_fine_panoptic_{split}",
            lambda x=images, p=pan_dir, j=pan_json: load_cityscapes_panoptic(x, p, j, pan_meta),
            [(images, _IMAGES), pan_dir, pan_json],
            _SCRIPT,
            panoptic_root=pan_dir,
            image_root=images,
            panoptic_json=pan_json,
            gt_dir=gt,
            evaluator_type="cityscapes_panoptic_seg",
            **pan_meta,
        )
