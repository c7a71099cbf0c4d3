"""COCO registrations: instance (detectron2's built-ins, with path checks), panoptic (+ semantic derived from
panoptic, Mask2Former's ``coco_2017_{train,val}_panoptic_with_sem_seg``) and COCO-Stuff-10k semantic."""

import os

from detectron2.data.datasets import load_coco_json, load_sem_seg

from ._common import downloaded, instance_metadata, made_by, panoptic_metadata, register_checked, semantic_metadata
from .categories.coco import COCO_PANOPTIC_CATEGORIES, COCO_STUFF_171_CATEGORIES
from .panoptic_json import load_panoptic_json

_INSTANCE_SPLITS = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
}
_PANOPTIC_SPLITS = {  # name: (images, panoptic PNGs, panoptic JSON, semantic PNGs, instance JSON)
    "coco_2017_{}_panoptic".format(s): (
        f"coco/{s}2017",
        f"coco/panoptic_{s}2017",
        f"coco/annotations/panoptic_{s}2017.json",
        f"coco/panoptic_semseg_{s}2017",
        f"coco/annotations/instances_{s}2017.json",
    )
    for s in ("train", "val")
}
_STUFF_10K_SPLITS = {
    "coco_2017_train_stuff_10k_sem_seg": (
        "coco/coco_stuff_10k/images_detectron2/train",
        "coco/coco_stuff_10k/annotations_detectron2/train",
    ),
    "coco_2017_test_stuff_10k_sem_seg": (
        "coco/coco_stuff_10k/images_detectron2/test",
        "coco/coco_stuff_10k/annotations_detectron2/test",
    ),
}
_DOWNLOAD = downloaded("COCO 2017 (cocodataset.org: the images and the instance / panoptic annotations)", "coco")


def register_coco_instance(root):
    meta = instance_metadata(COCO_PANOPTIC_CATEGORIES)
    for name, (images, json_file) in _INSTANCE_SPLITS.items():
        images, json_file = os.path.join(root, images), os.path.join(root, json_file)
        register_checked(
            name,
            lambda j=json_file, i=images, n=name: load_coco_json(j, i, n),
            [json_file, images],
            _DOWNLOAD,
            image_root=images,
            json_file=json_file,
            evaluator_type="coco",
            **meta,
        )


def register_coco_panoptic(root):
    meta = panoptic_metadata(COCO_PANOPTIC_CATEGORIES)
    for name, paths in _PANOPTIC_SPLITS.items():
        images, pan_dir, pan_json, sem_dir, inst_json = [os.path.join(root, p) for p in paths]
        common = dict(
            image_root=images,
            panoptic_root=pan_dir,
            panoptic_json=pan_json,
            json_file=inst_json,
            evaluator_type="coco_panoptic_seg",
            **meta,
        )
        register_checked(
            name,
            lambda j=pan_json, i=images, p=pan_dir: load_panoptic_json(j, i, p, None, meta),
            [pan_json, pan_dir, images],
            _DOWNLOAD,
            **common,
        )
        register_checked(
            name + "_with_sem_seg",
            lambda j=pan_json, i=images, p=pan_dir, s=sem_dir: load_panoptic_json(j, i, p, s, meta),
            [pan_json, pan_dir, images, (sem_dir, made_by("prepare_coco_semantic_from_panoptic.py"))],
            _DOWNLOAD,
            sem_seg_root=sem_dir,
            **common,
        )


def register_coco_stuff_10k(root):
    meta = semantic_metadata(COCO_STUFF_171_CATEGORIES)
    for name, (images, labels) in _STUFF_10K_SPLITS.items():
        images, labels = os.path.join(root, images), os.path.join(root, labels)
        register_checked(
            name,
            lambda i=images, g=labels: load_sem_seg(g, i, gt_ext="png", image_ext="jpg"),
            [images, labels],
            made_by("prepare_coco_stuff_10k.py"),
            image_root=images,
            sem_seg_root=labels,
            evaluator_type="sem_seg",
            **meta,
        )


def register_all_coco(root):
    register_coco_instance(root)
    register_coco_panoptic(root)
    register_coco_stuff_10k(root)
