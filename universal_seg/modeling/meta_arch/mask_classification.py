"""Mask classification (Mask2Former, StructToken-universal): queries, Hungarian matching, three-task
post-processing."""

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList, Instances
from torch import nn

from ..criterion import SetCriterion, build_weight_dict
from ..heads import PER_PIXEL_HEAD_REGISTRY
from ..matcher import HungarianMatcher
from ..postprocess import instance_inference, panoptic_inference, semantic_inference
from ..segmentation_head import SegmentationHead
from .base import TASKS, SegmentorBase, resize_to_output

# MODEL.SEM_SEG_HEAD.NAME values a mask-classification config may carry: detectron2's default (which no
# Mask2Former config changes) and the name the official Mask2Former configs give this head.
MASK_CLASSIFICATION_HEAD_ALIASES = ("MaskFormerHead", "SemSegFPNHead")


@META_ARCH_REGISTRY.register()
class UniversalSegmentor(SegmentorBase):
    """Mask classification (Mask2Former and StructToken's universal mode): N queries each predict a class and a mask.

    ``sem_seg_head`` (:class:`SegmentationHead`: MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME then
    MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME) returns {"pred_logits": [B, Q, K+1], "pred_masks": [B, Q, h, w],
    "aux_outputs": [...]}.
    Training input: "instances" (gt_classes [n], gt_masks [n, H, W]); "sem_seg" ([H, W], ignore = ``ignore_label``)
    alone also works (one target per class present). Training output: the criterion's losses, weighted.
    Inference output per image: "sem_seg" [K, H, W] probabilities, "panoptic_seg" (int32 [H, W], segments_info) and
    "instances" (pred_masks, pred_boxes, scores, pred_classes), each when enabled, at "height" x "width".
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        num_queries: int,
        object_mask_threshold: float,
        overlap_threshold: float,
        metadata,
        size_divisibility: int,
        sem_seg_postprocess_before_inference: bool,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
        semantic_on: bool,
        panoptic_on: bool,
        instance_on: bool,
        test_topk_per_image: int,
        ignore_label: int = 255,
    ):
        super().__init__(
            backbone=backbone,
            sem_seg_head=sem_seg_head,
            size_divisibility=size_divisibility,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
        )
        if not (semantic_on or panoptic_on or instance_on):
            raise ValueError("enable at least one of MODEL.MASK_FORMER.TEST.{SEMANTIC,INSTANCE,PANOPTIC}_ON.")
        if (panoptic_on or instance_on) and getattr(metadata, "thing_dataset_id_to_contiguous_id", None) is None:
            raise ValueError(
                "panoptic / instance inference needs the dataset's thing classes, but the metadata of "
                "DATASETS.TRAIN[0] has no thing_dataset_id_to_contiguous_id: register the dataset "
                "(import universal_seg.data) or turn MODEL.MASK_FORMER.TEST.{PANOPTIC,INSTANCE}_ON off."
            )
        self.criterion = criterion
        self.num_queries = num_queries
        self.object_mask_threshold, self.overlap_threshold = object_mask_threshold, overlap_threshold
        self.metadata = metadata
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        self.semantic_on, self.panoptic_on, self.instance_on = semantic_on, panoptic_on, instance_on
        self.test_topk_per_image = test_topk_per_image
        self.ignore_label = ignore_label

    _TASK_KEYS = {"panoptic": "PANOPTIC_ON", "instance": "INSTANCE_ON", "semantic": "SEMANTIC_ON"}

    @classmethod
    def output_tasks(cls, cfg) -> tuple[str, ...]:
        """MODEL.MASK_FORMER.TEST.{PANOPTIC,INSTANCE,SEMANTIC}_ON."""
        return tuple(t for t in TASKS if cfg.MODEL.MASK_FORMER.TEST[cls._TASK_KEYS[t]])

    @classmethod
    def enable_output_task(cls, cfg, task: str) -> None:
        cfg.MODEL.MASK_FORMER.TEST[cls._TASK_KEYS[task]] = True

    @classmethod
    def from_config(cls, cfg, backbone: nn.Module | None = None) -> dict:
        name = cfg.MODEL.SEM_SEG_HEAD.NAME
        if name in PER_PIXEL_HEAD_REGISTRY:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.NAME={name!r} is a per-pixel head, which the mask-classification "
                f"meta-architecture UniversalSegmentor cannot run: set MODEL.META_ARCHITECTURE to "
                f"'PerPixelSegmentor'."
            )
        if name not in MASK_CLASSIFICATION_HEAD_ALIASES:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.NAME={name!r} is not a head UniversalSegmentor knows: it builds its head from "
                f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME and MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME, so leave NAME "
                f"at one of {sorted(MASK_CLASSIFICATION_HEAD_ALIASES)}."
            )
        args = super().from_config(cfg, backbone)
        mf = cfg.MODEL.MASK_FORMER
        matcher = HungarianMatcher(
            cost_class=mf.CLASS_WEIGHT,
            cost_mask=mf.MASK_WEIGHT,
            cost_dice=mf.DICE_WEIGHT,
            num_points=mf.TRAIN_NUM_POINTS,
        )
        weight_dict = build_weight_dict(
            mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.DEC_LAYERS, mf.DEEP_SUPERVISION
        )
        test = mf.TEST
        return {
            **args,
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "sem_seg_head": SegmentationHead.from_config(cfg, args["backbone"].output_shape()),
            "criterion": SetCriterion(
                cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
                matcher=matcher,
                weight_dict=weight_dict,
                eos_coef=mf.NO_OBJECT_WEIGHT,
                losses=("labels", "masks"),
                num_points=mf.TRAIN_NUM_POINTS,
                oversample_ratio=mf.OVERSAMPLE_RATIO,
                importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
                class_weights=tuple(mf.PER_CLASS_CE_WEIGHTS),
            ),
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "object_mask_threshold": test.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": test.OVERLAP_THRESHOLD,
            "metadata": MetadataCatalog.get(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else None,
            # panoptic and instance results are built at output resolution, so masks are resized first
            "sem_seg_postprocess_before_inference": (
                test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE or test.PANOPTIC_ON or test.INSTANCE_ON
            ),
            "semantic_on": test.SEMANTIC_ON,
            "instance_on": test.INSTANCE_ON,
            "panoptic_on": test.PANOPTIC_ON,
            "test_topk_per_image": test.DETECTIONS_PER_IMAGE,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        }

    def forward_train(self, batched_inputs: list[dict], images: ImageList) -> dict[str, torch.Tensor]:
        outputs = self.sem_seg_head(self.backbone(images.tensor))
        targets = self.prepare_targets(batched_inputs, images)
        losses = self.criterion(outputs, targets)
        weights = self.criterion.weight_dict
        return {k: v * weights[k] for k, v in losses.items() if k in weights}

    def forward_inference(self, batched_inputs: list[dict], images: ImageList) -> list[dict]:
        outputs = self.sem_seg_head(self.backbone(images.tensor))
        return self.inference(outputs, batched_inputs, images)

    # ----------------------------------------------------------------------------------------------- training
    def _instances_of(self, x: dict) -> Instances:
        if "instances" in x:
            return x["instances"]
        if "sem_seg" not in x:
            raise ValueError(
                "training inputs need 'instances' (gt_classes, gt_masks) or 'sem_seg'; check the "
                "dataset mapper (INPUT.DATASET_MAPPER_NAME)."
            )
        sem = x["sem_seg"]
        classes = [c for c in torch.unique(sem).tolist() if c != self.ignore_label]
        inst = Instances(tuple(sem.shape))
        inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
        inst.gt_masks = (
            torch.stack([sem == c for c in classes]) if classes else sem.new_zeros((0, *sem.shape), dtype=torch.bool)
        )
        return inst

    def prepare_targets(self, batched_inputs: list[dict], images: ImageList) -> list[dict]:
        """Per image {"labels": [n], "masks": [n, H_pad, W_pad] bool}, masks zero-padded like the image."""
        h_pad, w_pad = images.tensor.shape[-2:]
        targets = []
        for x in batched_inputs:
            inst = self._instances_of(x).to(self.device)
            masks = inst.gt_masks
            masks = masks.tensor if hasattr(masks, "tensor") else masks
            if masks.shape[-2:] == (h_pad, w_pad):  # already at the padded size (fixed-size LSJ crops): no copy
                padded = masks.bool()
            else:
                padded = masks.new_zeros((masks.shape[0], h_pad, w_pad), dtype=torch.bool)
                padded[:, : masks.shape[1], : masks.shape[2]] = masks.bool()
            targets.append({"labels": inst.gt_classes.long(), "masks": padded})
        return targets

    # ---------------------------------------------------------------------------------------------- inference
    def inference(self, outputs: dict, batched_inputs: list[dict], images: ImageList) -> list[dict]:
        """Decoder outputs -> per image {"sem_seg", "panoptic_seg", "instances"} (those enabled), at the output
        size; mask logits are upsampled to the padded image first."""
        mask_cls = outputs["pred_logits"]
        mask_pred = F.interpolate(
            outputs["pred_masks"], size=images.tensor.shape[-2:], mode="bilinear", align_corners=False
        )
        thing_map = getattr(self.metadata, "thing_dataset_id_to_contiguous_id", None)
        thing_ids = set(thing_map.values()) if thing_map is not None else set()
        num_classes = mask_cls.shape[-1] - 1
        results = []
        for cls_i, mask_i, x, image_size in zip(mask_cls, mask_pred, batched_inputs, images.image_sizes):
            height, width = self.output_size(x, image_size)
            if self.sem_seg_postprocess_before_inference:
                mask_i = resize_to_output(mask_i, image_size, height, width)
            out = {}
            if self.semantic_on:
                sem = semantic_inference(cls_i, mask_i)
                if not self.sem_seg_postprocess_before_inference:
                    sem = resize_to_output(sem, image_size, height, width)
                out["sem_seg"] = sem
            if self.panoptic_on:
                out["panoptic_seg"] = panoptic_inference(
                    cls_i, mask_i, num_classes, self.object_mask_threshold, self.overlap_threshold, thing_ids
                )
            if self.instance_on:
                out["instances"] = instance_inference(
                    cls_i, mask_i, num_classes, self.test_topk_per_image, self.panoptic_on, thing_ids
                )
            results.append(out)
        return results
