"""Training-target helpers shared by the mappers: padding and conversion of label maps to Instances."""

import numpy as np
import torch
from detectron2.structures import BitMasks, Boxes, Instances

IMAGE_PAD_VALUE = 128


def compact_panoptic(pan_ids, segments_info):
    """Map panoptic segment ids [H, W] to 1..n by ``segments_info`` order (0 = void / unlisted).

    Returns uint8 when n < 256, else float32 (exact, and resizable with nearest interpolation).
    """
    dtype = np.uint8 if len(segments_info) < 256 else np.float32
    compact = np.zeros(pan_ids.shape, dtype=dtype)
    for k, segment in enumerate(segments_info):
        compact[pan_ids == segment["id"]] = k + 1
    return compact


def pad_to(image, labels, size, ignore_values):
    """Pad image [H, W, 3] with 128 and each label [H, W] with its ignore value at the bottom/right to ``size``."""
    h, w = image.shape[:2]
    ph, pw = size[0] - h, size[1] - w
    if ph <= 0 and pw <= 0:
        return image, labels
    image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=IMAGE_PAD_VALUE)
    labels = [
        None if lab is None else np.pad(lab, ((0, ph), (0, pw)), constant_values=v)
        for lab, v in zip(labels, ignore_values)
    ]
    return image, labels


def divisible_size(shape, divisibility):
    """The smallest (H, W) >= ``shape`` that is a multiple of ``divisibility`` (unchanged when <= 0)."""
    if divisibility <= 0:
        return tuple(shape[:2])
    return tuple(int(np.ceil(s / divisibility) * divisibility) for s in shape[:2])


def instances_from_semantic(sem_seg, ignore_label):
    """One instance per class present in ``sem_seg`` [H, W] (ignore excluded): gt_classes [n], gt_masks [n, H, W]."""
    classes = [int(c) for c in np.unique(sem_seg) if c != ignore_label]
    masks = [sem_seg == c for c in classes]
    return make_instances(sem_seg.shape, classes, masks)


def instances_from_panoptic(compact, segments_info, things_only: bool = False):
    """One instance per non-crowd segment (only the thing segments with ``things_only``) still visible in
    ``compact`` [H, W] (ids 1..n as from compact_panoptic)."""
    classes, masks = [], []
    for k, segment in enumerate(segments_info):
        if segment.get("iscrowd", 0) or (things_only and not segment.get("isthing", 0)):
            continue
        mask = compact == k + 1
        if mask.any():
            classes.append(int(segment["category_id"]))
            masks.append(mask)
    return make_instances(compact.shape, classes, masks)


def task_instances_from_panoptic(compact, segments_info, task):
    """OneFormer's task-dependent targets from one panoptic annotation (non-crowd segments still visible in
    ``compact``): "panoptic" one instance per segment; "instance" only the thing segments; "semantic" one instance
    per class, the union of that class's segments (things merged), classes in ascending order."""
    if task == "panoptic":
        return instances_from_panoptic(compact, segments_info)
    if task == "instance":
        return instances_from_panoptic(compact, segments_info, things_only=True)
    if task != "semantic":
        raise ValueError(f"task {task!r} is unknown; choose 'semantic', 'instance' or 'panoptic'.")
    by_class = {}
    for k, segment in enumerate(segments_info):
        if segment.get("iscrowd", 0):
            continue
        mask = compact == k + 1
        if mask.any():
            c = int(segment["category_id"])
            by_class[c] = by_class[c] | mask if c in by_class else mask
    classes = sorted(by_class)
    return make_instances(compact.shape, classes, [by_class[c] for c in classes])


def add_task_instances(dataset_dict, compact, segments_info, task_sampler=None) -> None:
    """Sets ``dataset_dict["instances"]`` from one panoptic annotation (``compact`` [H, W], ids 1..n of
    ``segments_info``): the "panoptic" targets, or with ``task_sampler`` (INPUT.TASK_SAMPLING, OneFormer) those of
    the task it draws, which is also stored as ``dataset_dict["task"]`` (task_instances_from_panoptic)."""
    task = task_sampler() if task_sampler is not None else "panoptic"
    if task_sampler is not None:
        dataset_dict["task"] = task
    dataset_dict["instances"] = task_instances_from_panoptic(compact, segments_info, task)


def make_instances(shape, classes, masks):
    """Instances with gt_classes long [n], gt_masks bool [n, H, W] and gt_boxes (XYXY, from the masks)."""
    inst = Instances(tuple(shape[:2]))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    if masks:
        gt_masks = torch.from_numpy(np.ascontiguousarray(np.stack(masks))).bool()
    else:
        gt_masks = torch.zeros((0, shape[0], shape[1]), dtype=torch.bool)
    inst.gt_masks = gt_masks
    inst.gt_boxes = BitMasks(gt_masks).get_bounding_boxes() if len(classes) else Boxes(torch.zeros((0, 4)))
    return inst


def image_to_tensor(image):
    """uint8 [H, W, 3] -> uint8 tensor [3, H, W]."""
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
