"""Mapillary Vistas v1.2 registrations: 65-class semantic (label 65 ignored) and panoptic.

Panoptic category ids in ``panoptic_2018.json`` are the semantic label value + 1.
"""

import os

from detectron2.data.datasets import load_sem_seg

from ._common import downloaded, panoptic_metadata, register_checked, semantic_metadata
from .categories.mapillary import MAPILLARY_VISTAS_CATEGORIES, MAPILLARY_VISTAS_IGNORE_LABEL
from .panoptic_json import load_panoptic_json

_SPLITS = {"train": "training", "val": "validation"}
_DOWNLOAD = downloaded("Mapillary Vistas v1.2 (mapillary.com/dataset/vistas)", "mapillary_vistas")


def register_all_mapillary_vistas(root):
    sem_meta = semantic_metadata(MAPILLARY_VISTAS_CATEGORIES, ignore_label=MAPILLARY_VISTAS_IGNORE_LABEL)
    pan_meta = panoptic_metadata([dict(c, id=c["id"] + 1) for c in MAPILLARY_VISTAS_CATEGORIES])
    for split, folder in _SPLITS.items():
        base = os.path.join(root, "mapillary_vistas", folder)
        images, labels = os.path.join(base, "images"), os.path.join(base, "labels")
        register_checked(
            f"mapillary_vistas_sem_seg_{split}",
            lambda i=images, g=labels: load_sem_seg(g, i, gt_ext="png", image_ext="jpg"),
            [images, labels],
            _DOWNLOAD,
            image_root=images,
            sem_seg_root=labels,
            evaluator_type="sem_seg",
            **sem_meta,
        )
        pan_dir = os.path.join(base, "panoptic")
        pan_json = os.path.join(pan_dir, "panoptic_2018.json")
        pan_meta_split = dict(pan_meta, ignore_label=MAPILLARY_VISTAS_IGNORE_LABEL)
        register_checked(
            f"mapillary_vistas_panoptic_{split}",
            lambda j=pan_json, i=images, p=pan_dir, s=labels: load_panoptic_json(j, i, p, s, pan_meta),
            [pan_json, images, labels],
            _DOWNLOAD,
            image_root=images,
            panoptic_root=pan_dir,
            panoptic_json=pan_json,
            sem_seg_root=labels,
            evaluator_type="mapillary_vistas_panoptic_seg",
            **pan_meta_split,
        )
