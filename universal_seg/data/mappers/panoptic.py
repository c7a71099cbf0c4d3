"""Panoptic training mapper for ADE20K / Cityscapes / Mapillary-style data (COCO-panoptic PNG + segments_info)."""

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import transforms as T

from .base import TaskSampler, register_mapper, start
from .image_io import check_same_size, check_semantic_label, read_label, read_panoptic
from .semantic import SemanticDatasetMapper
from .targets import add_task_instances, compact_panoptic, divisible_size, image_to_tensor, pad_to


def semantic_from_compact(compact, segments_info, ignore_label):
    """Semantic labels [H, W] (int64) from compact panoptic ids: segment k+1 -> its category, void -> ignore."""
    lut = np.full(len(segments_info) + 1, ignore_label, dtype=np.int64)
    for k, segment in enumerate(segments_info):
        lut[k + 1] = segment["category_id"]
    return lut[compact.astype(np.int64)]


def read_compact_panoptic(dataset_dict, image):
    """Pops ``segments_info`` and reads ``pan_seg_file_name`` as segment indices 1..n in that order (0 = void),
    checked to be the image's size. Returns (segments_info, compact [H, W])."""
    segments = dataset_dict.pop("segments_info")
    compact = compact_panoptic(read_panoptic(dataset_dict["pan_seg_file_name"]), segments)
    check_same_size(image, compact, dataset_dict["pan_seg_file_name"])
    return segments, compact


@register_mapper("mask_former_panoptic")
class PanopticDatasetMapper(SemanticDatasetMapper):
    """The semantic mapper's augmentations and padding (constructor and config shared), plus
    ``pan_seg_file_name``/``segments_info``: one instance per non-crowd segment
    (crowd segments are dropped from ``instances`` but keep their class in ``sem_seg``). Semantic labels come from
    ``sem_seg_file_name`` when present, else from the panoptic segments (void -> ignore).

    Returns dict(..., image uint8 [3, H, W], sem_seg long [H, W], instances: gt_classes long [n],
    gt_masks bool [n, H, W]), or None when the image is unreadable. With INPUT.TASK_SAMPLING (OneFormer) also
    "task", and the instances are that task's (task_instances_from_panoptic).
    """

    @configurable
    def __init__(self, is_train=True, *, task_sampler=None, **kwargs):
        super().__init__(is_train, **kwargs)
        self.task_sampler = task_sampler

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return {**super().from_config(cfg, is_train), "task_sampler": TaskSampler.from_config(cfg, is_train)}

    def __call__(self, dataset_dict):
        dataset_dict, image = start(dataset_dict, self.image_format)
        if image is None:
            return None
        segments, compact = read_compact_panoptic(dataset_dict, image)
        if "sem_seg_file_name" in dataset_dict:
            sem = read_label(dataset_dict["sem_seg_file_name"])
            check_same_size(image, sem, dataset_dict["sem_seg_file_name"])
            if self.num_classes is not None:
                check_semantic_label(sem, dataset_dict["sem_seg_file_name"], self.num_classes, self.ignore_label)
        else:
            sem = semantic_from_compact(compact, segments, self.ignore_label)
        aug_input = T.AugInput(image, sem_seg=sem.astype(np.uint8))
        transforms = self.augmentations(aug_input)
        image, sem = aug_input.image, aug_input.sem_seg.astype(np.int64)
        compact = transforms.apply_segmentation(compact)
        size = divisible_size(image.shape, self.size_divisibility)
        image, (sem, compact) = pad_to(image, [sem, compact], size, [self.ignore_label, 0])
        dataset_dict["image"] = image_to_tensor(image)
        dataset_dict["sem_seg"] = torch.from_numpy(sem)
        add_task_instances(dataset_dict, compact, segments, self.task_sampler)
        return dataset_dict
