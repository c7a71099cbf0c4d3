"""Shared pieces of the training mappers: the registry, the common augmentation list and image reading."""

import copy

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.projects.point_rend import ColorAugSSDTransform
from detectron2.utils.registry import Registry

from .image_io import read_rgb_image

MAPPER_REGISTRY = Registry("DATASET_MAPPER")
MAPPER_REGISTRY.__doc__ = "Dataset mappers, selected by cfg.INPUT.DATASET_MAPPER_NAME; built with (cfg, is_train)."


def register_mapper(name):
    """Class decorator registering a mapper under the config name ``name``."""

    def deco(cls):
        MAPPER_REGISTRY._do_register(name, cls)
        return cls

    return deco


def build_mapper(cfg, is_train=True):
    """The mapper named by cfg.INPUT.DATASET_MAPPER_NAME, built from ``cfg``."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in MAPPER_REGISTRY:
        raise KeyError(
            f"cfg.INPUT.DATASET_MAPPER_NAME='{name}' is unknown; use one of {sorted(k for k, _ in MAPPER_REGISTRY)}."
        )
    return MAPPER_REGISTRY.get(name)(cfg, is_train)


def dataset_ignore_label(cfg, default=255):
    """The ignore label of the first training dataset (255 when it has none)."""
    names = cfg.DATASETS.TRAIN
    return MetadataCatalog.get(names[0]).get("ignore_label", default) if names else default


def scale_crop_augmentations(cfg, is_train, ignore_label, category_crop=True):
    """ResizeShortestEdge (train scales) -> crop (category-area constrained when ``category_crop``) -> SSD colour
    jitter -> horizontal flip; at test time only ResizeShortestEdge to the test size."""
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)]
    augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
    if cfg.INPUT.CROP.ENABLED:
        if category_crop:
            augs.append(
                T.RandomCrop_CategoryAreaConstraint(
                    cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE, cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA, ignore_label
                )
            )
        else:
            augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    if cfg.INPUT.COLOR_AUG_SSD:
        augs.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
    augs.append(T.RandomFlip())
    return augs


def lsj_augmentations(cfg, is_train):
    """Large-scale jitter: flip, resize to a random scale in [MIN_SCALE, MAX_SCALE] of IMAGE_SIZE, fixed-size
    crop padded (image 128, labels 0) to IMAGE_SIZE x IMAGE_SIZE. At test time only the resize at scale 1."""
    size = cfg.INPUT.IMAGE_SIZE
    if not is_train:
        return [T.ResizeScale(1.0, 1.0, size, size), T.FixedSizeCrop(crop_size=(size, size))]
    return [
        T.RandomFlip(horizontal=True, vertical=False),
        T.ResizeScale(cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE, size, size),
        T.FixedSizeCrop(crop_size=(size, size)),
    ]


def start(dataset_dict, image_format):
    """Copy ``dataset_dict`` and read its image (uint8 [H, W, 3]); image None when unreadable.

    Records the original "height" / "width" when the dataset does not (semantic datasets): detectron2's
    aspect-ratio grouping and the model's output size read them.
    """
    dataset_dict = copy.deepcopy(dataset_dict)
    image = read_rgb_image(dataset_dict["file_name"], image_format)
    if image is not None:
        dataset_dict.setdefault("height", image.shape[0])
        dataset_dict.setdefault("width", image.shape[1])
    return dataset_dict, image


class TaskSampler:
    """OneFormer's per-image task in training (INPUT.TASK_SAMPLING): u ~ U[0, 1); "semantic" when u < p_sem,
    "instance" when u < p_inst, else "panoptic" (INPUT.TASK_PROB.{SEMANTIC, INSTANCE}, cumulative as in the
    official config). Uses numpy's global generator, which detectron2 seeds per data-loader worker."""

    def __init__(self, semantic: float, instance: float):
        if not 0.0 <= semantic <= instance <= 1.0:
            raise ValueError(
                f"INPUT.TASK_PROB needs 0 <= SEMANTIC <= INSTANCE <= 1 (cumulative probabilities), got "
                f"SEMANTIC={semantic}, INSTANCE={instance}."
            )
        self.semantic, self.instance = semantic, instance

    @classmethod
    def from_config(cls, cfg, is_train: bool):
        """The sampler, or None when INPUT.TASK_SAMPLING is off or at inference."""
        if not (is_train and cfg.INPUT.TASK_SAMPLING):
            return None
        return cls(cfg.INPUT.TASK_PROB.SEMANTIC, cfg.INPUT.TASK_PROB.INSTANCE)

    def __call__(self) -> str:
        u = np.random.uniform(0.0, 1.0)
        return "semantic" if u < self.semantic else "instance" if u < self.instance else "panoptic"
