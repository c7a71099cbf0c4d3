"""Semantic-segmentation training mapper (Mask2Former's MaskFormerSemanticDatasetMapper behaviour)."""

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import transforms as T

from .base import dataset_ignore_label, register_mapper, scale_crop_augmentations, start
from .image_io import check_same_size, check_semantic_label, read_label
from .targets import divisible_size, image_to_tensor, instances_from_semantic, pad_to


@register_mapper("mask_former_semantic")
class SemanticDatasetMapper:
    """Reads ``file_name`` + ``sem_seg_file_name``; resize by a random shortest edge, category-area-constrained
    crop, optional SSD colour jitter, flip, pad (image 128, labels ignore) to a multiple of size_divisibility.

    Returns dict(..., image uint8 [3, H, W], sem_seg long [H, W], instances: gt_classes long [n] (classes
    present), gt_masks bool [n, H, W]), or None when the image is unreadable.
    """

    @configurable
    def __init__(
        self, is_train=True, *, augmentations, image_format, ignore_label, size_divisibility, num_classes=None
    ):
        self.is_train = is_train
        self.num_classes = num_classes  # labels are checked against it (None: not checked)
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility

    @classmethod
    def from_config(cls, cfg, is_train=True):
        ignore = dataset_ignore_label(cfg)
        return dict(
            is_train=is_train,
            augmentations=scale_crop_augmentations(cfg, is_train, ignore),
            image_format=cfg.INPUT.FORMAT,
            ignore_label=ignore,
            size_divisibility=cfg.INPUT.SIZE_DIVISIBILITY,
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        )

    def __call__(self, dataset_dict):
        dataset_dict, image = start(dataset_dict, self.image_format)
        if image is None:
            return None
        sem = read_label(dataset_dict["sem_seg_file_name"])
        check_same_size(image, sem, dataset_dict["sem_seg_file_name"])
        if self.num_classes is not None:
            check_semantic_label(sem, dataset_dict["sem_seg_file_name"], self.num_classes, self.ignore_label)
        aug_input = T.AugInput(image, sem_seg=sem.astype(np.uint8 if sem.max() < 256 else np.float32))
        self.augmentations(aug_input)
        image, sem = aug_input.image, aug_input.sem_seg.astype(np.int64)
        size = divisible_size(image.shape, self.size_divisibility)
        image, (sem,) = pad_to(image, [sem], size, [self.ignore_label])
        dataset_dict["image"] = image_to_tensor(image)
        dataset_dict["sem_seg"] = torch.from_numpy(sem)
        dataset_dict["instances"] = instances_from_semantic(sem, self.ignore_label)
        return dataset_dict
