"""ADE20K registrations (ADEChallengeData2016): 150-class semantic, panoptic and 100-class instance."""

import os

from detectron2.data.datasets import load_coco_json, load_sem_seg

from ._common import downloaded, instance_metadata, made_by, panoptic_metadata, register_checked, semantic_metadata
from .categories.ade20k import ADE20K_150_CATEGORIES, ADE20K_INSTANCE_CATEGORIES
from .panoptic_json import load_panoptic_json

_SPLITS = {"train": "training", "val": "validation"}
_SEM_SCRIPT = made_by("prepare_ade20k_sem_seg.py")
_PAN_SCRIPT = made_by("prepare_ade20k_pan_ins.py")
_RELEASE = downloaded("ADEChallengeData2016.zip (sceneparsing.csail.mit.edu)")


def register_all_ade20k(root):
    root = os.path.join(root, "ADEChallengeData2016")
    sem_meta = semantic_metadata(ADE20K_150_CATEGORIES)
    pan_meta = panoptic_metadata(ADE20K_150_CATEGORIES)
    ins_meta = instance_metadata([dict(c, isthing=1) for c in ADE20K_INSTANCE_CATEGORIES])
    for split, folder in _SPLITS.items():
        images = os.path.join(root, "images", folder)
        labels = os.path.join(root, "annotations_detectron2", folder)
        register_checked(
            f"ade20k_sem_seg_{split}",
            lambda i=images, g=labels: load_sem_seg(g, i, gt_ext="png", image_ext="jpg"),
            [(images, _RELEASE), labels],
            _SEM_SCRIPT,
            image_root=images,
            sem_seg_root=labels,
            evaluator_type="sem_seg",
            **sem_meta,
        )

        pan_json = os.path.join(root, f"ade20k_panoptic_{split}.json")
        pan_dir = os.path.join(root, f"ade20k_panoptic_{split}")
        ins_json = os.path.join(root, f"ade20k_instance_{split}.json")
        register_checked(
            f"ade20k_panoptic_{split}",
            lambda j=pan_json, i=images, p=pan_dir, s=labels: load_panoptic_json(j, i, p, s, pan_meta),
            [(images, _RELEASE), pan_json, pan_dir, (labels, _SEM_SCRIPT)],
            _PAN_SCRIPT,
            image_root=images,
            panoptic_root=pan_dir,
            panoptic_json=pan_json,
            sem_seg_root=labels,
            json_file=ins_json,
            evaluator_type="ade20k_panoptic_seg",
            **pan_meta,
        )
        register_checked(
            f"ade20k_instance_{split}",
            lambda j=ins_json, i=images, n=f"ade20k_instance_{split}": load_coco_json(j, i, n),
            [(images, _RELEASE), ins_json],
            _PAN_SCRIPT,
            image_root=images,
            json_file=ins_json,
            evaluator_type="coco",
            **ins_meta,
        )
