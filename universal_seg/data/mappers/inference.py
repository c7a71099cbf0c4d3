"""The evaluation mapper: the training mappers' image reader (same pixels as in training and the demo), test-time
resize, and unreadable images reported instead of raised (:class:`SkipUnreadable` drops and counts them)."""

import copy
import logging

import torch
from detectron2.config import configurable
from detectron2.data import transforms as T

from .image_io import UnreadableImageError, decode_rgb_image

logger = logging.getLogger(__name__)

UNREADABLE_KEY = "unreadable"  # a mapped dict with this key stands for an image that could not be read


class TestResize(T.Augmentation):
    """Resize so the shortest edge is ``short`` and the longest at most ``max_size`` (ResizeShortestEdge's output
    size at test time), drawing no random number: evaluation during training leaves the trainer's generators as they
    were, so a resumed run stays exact."""

    def __init__(self, short: int, max_size: int):
        super().__init__()
        self.short, self.max_size = short, max_size

    def get_transform(self, image):
        h, w = image.shape[:2]
        if self.short == 0:
            return T.NoOpTransform()
        newh, neww = T.ResizeShortestEdge.get_output_shape(h, w, self.short, self.max_size)
        return T.ResizeTransform(h, w, newh, neww)


class InferenceDatasetMapper:
    """dataset dict -> dict(..., image uint8 [3, h, w] resized so the shortest edge is INPUT.MIN_SIZE_TEST (longest at
    most INPUT.MAX_SIZE_TEST), "height" / "width" of the original); annotations are dropped (the evaluators read the
    ground truth themselves). An unreadable image gives {"unreadable": reason, "file_name", "image_id"}."""

    @configurable
    def __init__(self, *, augmentations, image_format):
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg):
        return dict(
            augmentations=[TestResize(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
            image_format=cfg.INPUT.FORMAT,
        )

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        try:
            image = decode_rgb_image(dataset_dict["file_name"], self.image_format)
        except UnreadableImageError as e:
            return {
                UNREADABLE_KEY: str(e),
                "file_name": dataset_dict["file_name"],
                "image_id": dataset_dict.get("image_id"),
            }
        dataset_dict.setdefault("height", image.shape[0])
        dataset_dict.setdefault("width", image.shape[1])
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        dataset_dict["image"] = torch.as_tensor(aug_input.image.transpose(2, 0, 1).copy())
        for key in ("annotations", "sem_seg_file_name", "pan_seg_file_name", "segments_info"):
            dataset_dict.pop(key, None)
        return dataset_dict


class SkipUnreadable:
    """Wraps a test loader (batches = lists of mapped dicts): drops the unreadable images from each batch (a batch
    left empty is skipped) and records them in ``unreadable`` ([(file_name, image_id, reason)]). ``len`` is the
    wrapped loader's (the number of batches inference_on_dataset expects at most)."""

    def __init__(self, loader):
        self.loader = loader
        self.unreadable: list[tuple] = []

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.unreadable = []
        for batch in self.loader:
            kept = []
            for d in batch:
                if UNREADABLE_KEY in d:
                    self.unreadable.append((d["file_name"], d["image_id"], d[UNREADABLE_KEY]))
                    logger.warning(f"evaluation: skipping {d[UNREADABLE_KEY]}; {len(self.unreadable)} skipped so far.")
                else:
                    kept.append(d)
            if kept:
                yield kept
