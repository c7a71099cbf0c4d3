"""Config keys of the data pipeline (names and defaults as in Mask2Former). detectron2 already has
INPUT.MIN_SIZE_TRAIN/MAX_SIZE_TRAIN/CROP.*/FORMAT and TEST.AUG.* (MIN_SIZES, MAX_SIZE, FLIP) used by the TTA."""

from detectron2.config import CfgNode as CN


def add_data_config(cfg):
    """Add the dataset/input/test keys of universal_seg to ``cfg`` (a detectron2 CfgNode), in place."""
    # which training mapper builds targets: one of universal_seg.data.mappers.MAPPER_REGISTRY's names
    # ("mask_former_semantic", "mask_former_panoptic", "mask_former_instance", "coco_instance_lsj",
    # "coco_panoptic_lsj")
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    # SSD-style photometric jitter (brightness, contrast, saturation, hue) in the semantic/panoptic mappers
    cfg.INPUT.COLOR_AUG_SSD = False
    # a random crop is retried (up to 10 times) until no single category covers more than this fraction
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # pad image (value 128) and labels (ignore) to a multiple of this; -1 = no padding
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # large-scale jitter (LSJ, COCO mappers): output size and the range of the random scale of it
    cfg.INPUT.IMAGE_SIZE = 1024
    cfg.INPUT.MIN_SCALE = 0.1
    cfg.INPUT.MAX_SCALE = 2.0
    # training stops with an error when more than this fraction of the training files cannot be decoded (the
    # unreadable ones are skipped, counted and reported until then; missing files are an error before training)
    cfg.DATALOADER.MAX_UNREADABLE_FRACTION = 0.01
    # OneFormer: the panoptic mappers sample a task per training image and derive its ground truth from the
    # panoptic annotation (semantic: one mask per class; instance: things only; panoptic: every segment). With the
    # probabilities at 0 / 1 every image gets one task's targets, which also trains a task-specific Mask2Former
    # (a model without the task token ignores the task): SEMANTIC 1.0 (and INSTANCE 1.0) semantic targets, SEMANTIC
    # 0.0 INSTANCE 1.0 instance targets (benchmarks/oneformer_mini_vs_task_specific.py)
    cfg.INPUT.TASK_SAMPLING = False
    cfg.INPUT.TASK_PROB = CN()
    cfg.INPUT.TASK_PROB.SEMANTIC = 0.33  # cumulative, as the official config: u < 0.33 semantic,
    cfg.INPUT.TASK_PROB.INSTANCE = 0.66  # 0.33 <= u < 0.66 instance, else panoptic
    return cfg
