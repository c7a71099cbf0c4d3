"""Instance training mapper for COCO-format annotations (ADE20K instance, Cityscapes instance, mini)."""

import pycocotools.mask as mask_util
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .base import lsj_augmentations, register_mapper, scale_crop_augmentations, start
from .targets import divisible_size, image_to_tensor, make_instances, pad_to


def polygons_to_rle(obj, height, width):
    """Rasterise a polygon annotation to RLE at the original size (so crops need no shapely)."""
    seg = obj.get("segmentation")
    if isinstance(seg, list):
        obj = dict(obj, segmentation=mask_util.merge(mask_util.frPyObjects(seg, height, width)))
    return obj


def annotations_to_targets(annotations, transforms, image_shape, original_shape):
    """Transform non-crowd annotations (polygons or RLE; rasterised at ``original_shape`` first) into Instances
    with gt_classes long [n], gt_masks bool [n, H, W] and gt_boxes; masks emptied by a crop are dropped."""
    annos = [
        utils.transform_instance_annotations(polygons_to_rle(obj, *original_shape), transforms, image_shape)
        for obj in annotations
        if obj.get("iscrowd", 0) == 0
    ]
    if not annos:
        return make_instances(image_shape, [], [])
    inst = utils.annotations_to_instances(annos, image_shape, mask_format="bitmask")
    masks = inst.gt_masks.tensor.bool()
    keep = masks.flatten(1).any(1)
    return make_instances(image_shape, inst.gt_classes[keep].tolist(), list(masks[keep].numpy()))


@register_mapper("mask_former_instance")
class InstanceDatasetMapper:
    """Reads ``file_name`` + ``annotations``; resize, random crop, optional SSD colour jitter, flip, pad (image
    128, masks 0) to size_divisibility. Crowd annotations are dropped (as in Mask2Former).

    Returns dict(..., image uint8 [3, H, W], instances: gt_classes long [n], gt_masks bool [n, H, W],
    gt_boxes), or None when the image is unreadable.
    """

    @configurable
    def __init__(self, is_train=True, *, augmentations, image_format, size_divisibility):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.size_divisibility = size_divisibility

    @classmethod
    def from_config(cls, cfg, is_train=True):
        augs = scale_crop_augmentations(cfg, is_train, ignore_label=255, category_crop=False)
        return dict(
            is_train=is_train,
            augmentations=augs,
            image_format=cfg.INPUT.FORMAT,
            size_divisibility=cfg.INPUT.SIZE_DIVISIBILITY,
        )

    def __call__(self, dataset_dict):
        dataset_dict, image = start(dataset_dict, self.image_format)
        if image is None:
            return None
        original_shape = image.shape[:2]
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        instances = annotations_to_targets(
            dataset_dict.pop("annotations", []), transforms, image.shape[:2], original_shape
        )
        size = divisible_size(image.shape, self.size_divisibility)
        image, _ = pad_to(image, [], size, [])
        dataset_dict["image"] = image_to_tensor(image)
        dataset_dict["instances"] = _pad_instances(instances, size)
        return dataset_dict


def _pad_instances(instances, size):
    """Pad gt_masks [n, h, w] with zeros to [n, *size] (boxes are unchanged by bottom/right padding)."""
    masks = instances.gt_masks
    h, w = masks.shape[-2:]
    if (h, w) == tuple(size):
        return instances
    padded = torch.zeros((masks.shape[0], *size), dtype=masks.dtype)
    padded[:, :h, :w] = masks
    return make_instances(size, instances.gt_classes.tolist(), list(padded.numpy()))


@register_mapper("coco_instance_lsj")
class COCOInstanceLSJDatasetMapper(InstanceDatasetMapper):
    """COCO instance mapper with large-scale jitter (flip, scale 0.1-2.0 of IMAGE_SIZE, fixed crop, pad to
    IMAGE_SIZE x IMAGE_SIZE). Output as InstanceDatasetMapper with H = W = IMAGE_SIZE."""

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return dict(
            is_train=is_train,
            augmentations=lsj_augmentations(cfg, is_train),
            image_format=cfg.INPUT.FORMAT,
            size_divisibility=-1,
        )
