"""COCO panoptic training mapper with large-scale jitter (Mask2Former's COCOPanopticNewBaselineDatasetMapper)."""

import torch
from detectron2.config import configurable
from detectron2.data import transforms as T

from .base import TaskSampler, lsj_augmentations, register_mapper, start
from .panoptic import read_compact_panoptic, semantic_from_compact
from .targets import add_task_instances, image_to_tensor


@register_mapper("coco_panoptic_lsj")
class COCOPanopticLSJDatasetMapper:
    """Flip, random scale in [MIN_SCALE, MAX_SCALE] of IMAGE_SIZE, fixed IMAGE_SIZE crop padded with 128 (image) and
    void (labels). Targets: one instance per non-crowd segment; sem_seg from the segments (void/pad -> ignore).

    Returns dict(..., image uint8 [3, S, S], sem_seg long [S, S], instances: gt_classes long [n],
    gt_masks bool [n, S, S]) with S = IMAGE_SIZE, or None when the image is unreadable. With ``task_sampler``
    (INPUT.TASK_SAMPLING, OneFormer) also "task", and the instances are that task's (task_instances_from_panoptic).
    """

    @configurable
    def __init__(self, is_train=True, *, augmentations, image_format, ignore_label=255, task_sampler=None):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.task_sampler = task_sampler

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return dict(
            is_train=is_train,
            augmentations=lsj_augmentations(cfg, is_train),
            image_format=cfg.INPUT.FORMAT,
            task_sampler=TaskSampler.from_config(cfg, is_train),
        )

    def __call__(self, dataset_dict):
        dataset_dict, image = start(dataset_dict, self.image_format)
        if image is None:
            return None
        segments, compact = read_compact_panoptic(dataset_dict, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        compact = transforms.apply_segmentation(compact)  # padding is 0 = void
        dataset_dict["image"] = image_to_tensor(aug_input.image)
        dataset_dict["sem_seg"] = torch.from_numpy(semantic_from_compact(compact, segments, self.ignore_label))
        add_task_instances(dataset_dict, compact, segments, self.task_sampler)
        return dataset_dict
