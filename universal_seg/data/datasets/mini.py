"""The bundled mini dataset (datasets/mini, built by datasets/prepare_mini.py from labelme's VOC examples).

train and val are the same 3 images (a smoke-test set, not a benchmark; evaluation logs that its metrics are
training-set metrics). The held-out check is labelme's street clip, converted by the README guide into
``custom/street`` (frames 100-102 train, 103-104 val). See categories/mini.py for classes.
"""

import os

from detectron2.data.datasets import load_coco_json, load_sem_seg

from ._common import instance_metadata, made_by, panoptic_metadata, register_checked, semantic_metadata
from .categories.mini import MINI_CATEGORIES
from .panoptic_json import load_panoptic_json

_SCRIPT = made_by("prepare_mini.py")


def register_all_mini(root):
    root = os.path.join(root, "mini")
    images, pan_dir, sem_dir = (os.path.join(root, d) for d in ("images", "panoptic", "semantic"))
    pan_meta, sem_meta, ins_meta = (
        f(MINI_CATEGORIES) for f in (panoptic_metadata, semantic_metadata, instance_metadata)
    )
    for split in ("train", "val"):
        pan_json = os.path.join(root, f"panoptic_{split}.json")
        ins_json = os.path.join(root, f"instances_{split}.json")
        common = dict(
            image_root=images,
            panoptic_root=pan_dir,
            panoptic_json=pan_json,
            json_file=ins_json,
            evaluator_type="coco_panoptic_seg",
            **pan_meta,
        )
        name = f"mini_panoptic_{split}"
        register_checked(
            name,
            lambda j=pan_json: load_panoptic_json(j, images, pan_dir, None, pan_meta),
            [pan_json, pan_dir, images],
            _SCRIPT,
            **common,
        )
        register_checked(
            name + "_with_sem_seg",
            lambda j=pan_json: load_panoptic_json(j, images, pan_dir, sem_dir, pan_meta),
            [pan_json, pan_dir, images, sem_dir],
            _SCRIPT,
            sem_seg_root=sem_dir,
            **common,
        )
        name = f"mini_instance_{split}"
        register_checked(
            name,
            lambda j=ins_json, n=name: load_coco_json(j, images, n),
            [ins_json, images],
            _SCRIPT,
            image_root=images,
            json_file=ins_json,
            evaluator_type="coco",
            **ins_meta,
        )
        register_checked(
            f"mini_sem_seg_{split}",
            lambda: load_sem_seg(sem_dir, images, gt_ext="png", image_ext="jpg"),
            [sem_dir, images],
            _SCRIPT,
            image_root=images,
            sem_seg_root=sem_dir,
            evaluator_type="sem_seg",
            **sem_meta,
        )
