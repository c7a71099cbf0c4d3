"""Per-pixel classification (SegFormer, SETR, CGRSeg, StructToken-semantic): CE losses, sliding-window
inference."""

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList
from torch import nn

from ...layers import pad_to_multiple
from ..heads import (
    PER_PIXEL_HEAD_REGISTRY,
    PerPixelHead,
    build_per_pixel_head,
    class_probabilities,
    per_pixel_head_names,
    slide_window_logits,
)
from .base import SegmentorBase, resize_to_output


@META_ARCH_REGISTRY.register()
class PerPixelSegmentor(SegmentorBase):
    """Per-pixel classification (SegFormer, SETR, CGRSeg, StructToken's semantic mode).

    ``sem_seg_head``: a :class:`PerPixelHead` (MODEL.SEM_SEG_HEAD.NAME in PER_PIXEL_HEAD_REGISTRY), features ->
    {"sem_seg_logits": [B, K, h, w], "aux_logits": [([B, K, h', w'], weight), ...] (training)}.
    Training input: "sem_seg" [H, W] class ids; output: the head's losses ({"loss_sem_seg", "loss_sem_seg_aux{i}"},
    weighted), on targets padded with the head's ignore label like the images (padding ignored).
    Inference output per image: {"sem_seg": [K, H, W]}, the softmax of the logits upsampled to the padded image,
    cropped and resized to "height" x "width"; with ``slide_window`` ((crop_h, crop_w), (stride_h, stride_w)) the
    logits are averaged over overlapping windows of the unpadded image (mmseg's "slide" mode).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: PerPixelHead,
        size_divisibility: int,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
        slide_window: tuple[tuple[int, int], tuple[int, int]] | None = None,
    ):
        if not isinstance(sem_seg_head, PerPixelHead):
            raise TypeError(
                f"PerPixelSegmentor needs a per-pixel head (a PerPixelHead subclass), got "
                f"{type(sem_seg_head).__name__}."
            )
        super().__init__(
            backbone=backbone,
            sem_seg_head=sem_seg_head,
            size_divisibility=size_divisibility,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
        )
        self.slide_window = slide_window

    @classmethod
    def output_tasks(cls, cfg) -> tuple[str, ...]:
        """Per-pixel heads predict semantic segmentation only."""
        return ("semantic",)

    @classmethod
    def enable_output_task(cls, cfg, task: str) -> None:
        if task != "semantic":
            raise ValueError(
                f"{cfg.MODEL.SEM_SEG_HEAD.NAME} is a per-pixel head and predicts semantic segmentation only, not "
                f"{task}; use a mask-classification config (MODEL.META_ARCHITECTURE 'UniversalSegmentor') for {task}."
            )

    @classmethod
    def from_config(cls, cfg, backbone: nn.Module | None = None) -> dict:
        head, pp = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.PER_PIXEL
        if head.NAME not in PER_PIXEL_HEAD_REGISTRY:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.NAME={head.NAME!r} is not registered as a per-pixel head, which the "
                f"PerPixelSegmentor meta-architecture needs: choose one of {per_pixel_head_names()}, or "
                f"set MODEL.META_ARCHITECTURE to 'UniversalSegmentor' for a mask-classification decoder."
            )
        slide = pp.SLIDE_WINDOW
        if slide.ENABLED and (
            len(slide.CROP_SIZE) != 2
            or len(slide.STRIDE) != 2
            or min(slide.STRIDE) <= 0
            or any(s > c for s, c in zip(slide.STRIDE, slide.CROP_SIZE))
        ):
            raise ValueError(
                f"MODEL.PER_PIXEL.SLIDE_WINDOW needs CROP_SIZE and STRIDE as (h, w) with "
                f"0 < stride <= crop, got {list(slide.CROP_SIZE)} and {list(slide.STRIDE)}."
            )
        args = super().from_config(cfg, backbone)
        return {
            **args,
            "size_divisibility": pp.SIZE_DIVISIBILITY,
            "sem_seg_head": build_per_pixel_head(cfg, args["backbone"].output_shape()),
            "slide_window": (tuple(slide.CROP_SIZE), tuple(slide.STRIDE)) if slide.ENABLED else None,
        }

    def forward_train(self, batched_inputs: list[dict], images: ImageList) -> dict[str, torch.Tensor]:
        """{"loss_sem_seg", "loss_sem_seg_aux{i}"}, weighted (PerPixelHead.losses)."""
        outputs = self.sem_seg_head(self.backbone(images.tensor))
        return self.sem_seg_head.losses(outputs, self.prepare_sem_seg_targets(batched_inputs, images))

    def forward_inference(self, batched_inputs: list[dict], images: ImageList) -> list[dict]:
        """[{"sem_seg": [K, height, width]}] class probabilities, whole image or sliding windows."""
        results = []
        if self.slide_window is None:
            logits = self.per_pixel_logits(images.tensor)
        for i, (x, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
            height, width = self.output_size(x, image_size)
            if self.slide_window is None:
                logits_i = logits[i]
            else:
                image = images.tensor[i, :, : image_size[0], : image_size[1]]
                logits_i = slide_window_logits(image, self.per_pixel_logits, *self.slide_window)
            results.append({"sem_seg": class_probabilities(resize_to_output(logits_i, image_size, height, width))})
        return results

    def per_pixel_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, H, W] (any size) -> per-pixel logits [B, K, H, W]: the images are zero-padded to
        size_divisibility for the network and the upsampled logits cropped back."""
        H, W = images.shape[-2:]
        d = self.size_divisibility
        padded = pad_to_multiple(images, d) if d > 1 else images
        logits = self.sem_seg_head(self.backbone(padded))["sem_seg_logits"]
        logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :H, :W]

    def prepare_sem_seg_targets(self, batched_inputs: list[dict], images: ImageList) -> torch.Tensor:
        """Batched "sem_seg" [B, H_pad, W_pad] long, padded with the head's ignore label like the images."""
        h_pad, w_pad = images.tensor.shape[-2:]
        ignore_label = self.sem_seg_head.ignore_label
        targets = torch.full((len(batched_inputs), h_pad, w_pad), ignore_label, dtype=torch.long, device=self.device)
        for i, x in enumerate(batched_inputs):
            if "sem_seg" not in x:
                raise ValueError(
                    "per-pixel heads train on 'sem_seg' ([H, W] class ids); use a semantic dataset "
                    "mapper (INPUT.DATASET_MAPPER_NAME: mask_former_semantic)."
                )
            sem = x["sem_seg"]
            targets[i, : sem.shape[0], : sem.shape[1]] = sem.to(self.device).long()
        return targets
