"""The two meta-architectures, on one base (:class:`SegmentorBase`: backbone -> sem_seg_head, detectron2's input
and output formats):

- :class:`UniversalSegmentor`, mask classification (Mask2Former, StructToken-universal): backbone -> pixel decoder
  -> decoder (queries) -> Hungarian matcher + set criterion (training) or semantic / instance / panoptic
  post-processing (inference);
- :class:`PerPixelSegmentor`, per-pixel classification (SegFormer, SETR, CGRSeg, StructToken-semantic): backbone ->
  per-pixel head -> its cross-entropy losses (training) or class probabilities, optionally averaged over sliding
  windows (inference).

MODEL.META_ARCHITECTURE names one of them; each refuses at build time a config whose heads belong to the other.
"""
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import ImageList, Instances
from torch import nn

from .criterion import SetCriterion, build_weight_dict
from .decoder.per_pixel import (PER_PIXEL_HEAD_REGISTRY, PerPixelHead, build_per_pixel_head, class_probabilities,
                                 per_pixel_head_names, slide_window_logits)
from .matcher import HungarianMatcher
from .postprocess import instance_inference, panoptic_inference, semantic_inference
from .segmentation_head import SegmentationHead


def resize_to_output(x: torch.Tensor, image_size: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """[C, H_pad, W_pad] -> crop the padding to image_size -> bilinear to (height, width) ([C, height, width]).

    detectron2's sem_seg_postprocess, except that the resize is skipped when it would be the identity
    (output size == image size: a scale-1 bilinear resize with align_corners=False returns its input).
    """
    x = x[:, : image_size[0], : image_size[1]]
    if tuple(image_size) == (height, width):
        return x
    return F.interpolate(x[None], size=(height, width), mode="bilinear", align_corners=False)[0]


class SegmentorBase(nn.Module):
    """What both meta-architectures share: a backbone and a ``sem_seg_head``, input normalisation and padding,
    output sizes.

    Input: a list of detectron2 dicts, "image" [3, H, W] (uint8 or float, in the backbone's channel order), in
    training also the targets the subclass reads, optionally "height" / "width" (the output size; default the
    image's). ``forward`` normalises and pads the batch (:meth:`preprocess`), then calls :meth:`forward_train`
    (dict of weighted losses) or :meth:`forward_inference` (one dict per image, every map at "height" x "width",
    resized with :func:`resize_to_output`).

    Args:
        backbone: detectron2 Backbone (``output_shape()``, ``size_divisibility``).
        sem_seg_head: the head, backbone features -> predictions (subclass-specific).
        size_divisibility: pad images to a multiple of this; 0 or less: the backbone's ``size_divisibility``.
        pixel_mean, pixel_std: per-channel normalisation, (C,) each.
    """

    def __init__(self, *, backbone: nn.Module, sem_seg_head: nn.Module, size_divisibility: int,
                 pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...]):
        super().__init__()
        self.backbone, self.sem_seg_head = backbone, sem_seg_head
        self.size_divisibility = size_divisibility if size_divisibility > 0 else backbone.size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg, backbone: nn.Module | None = None) -> dict:
        """The shared arguments (the subclasses' from_config add their head and the rest); ``backbone``: an already
        built backbone to use instead of building MODEL.BACKBONE (``Segmentor(cfg, backbone=...)``)."""
        return {
            "backbone": backbone if backbone is not None else build_backbone(cfg),
            "size_divisibility": cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, batched_inputs: list[dict]) -> ImageList:
        """Normalises and pads the images: ImageList of [B, 3, H_pad, W_pad].

        On the CPU the batch is channels-last: oneDNN's convolutions then run without reordering every input and
        output, and the flattened feature maps the decoders read ([B, HW, C]) are views (measured on R50 at 512x512,
        2 threads: backbone 15-25% faster, pixel decoder 10-25%). Values are the same; only strides differ.
        """
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images, self.size_divisibility)
        if self.device.type == "cpu":
            images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
        return images

    @staticmethod
    def output_size(x: dict, image_size: tuple[int, int]) -> tuple[int, int]:
        """(height, width) of the outputs for input dict ``x``: its "height" / "width", else the image's size."""
        return x.get("height", image_size[0]), x.get("width", image_size[1])

    def forward(self, batched_inputs: list[dict]):
        images = self.preprocess(batched_inputs)
        if self.training:
            return self.forward_train(batched_inputs, images)
        return self.forward_inference(batched_inputs, images)

    def forward_train(self, batched_inputs: list[dict], images: ImageList) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward_inference(self, batched_inputs: list[dict], images: ImageList) -> list[dict]:
        raise NotImplementedError


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
    def __init__(self, *, backbone: nn.Module, sem_seg_head: nn.Module, criterion: nn.Module, num_queries: int,
                 object_mask_threshold: float, overlap_threshold: float, metadata, size_divisibility: int,
                 sem_seg_postprocess_before_inference: bool, pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...],
                 semantic_on: bool, panoptic_on: bool, instance_on: bool, test_topk_per_image: int,
                 ignore_label: int = 255):
        super().__init__(backbone=backbone, sem_seg_head=sem_seg_head, size_divisibility=size_divisibility,
                         pixel_mean=pixel_mean, pixel_std=pixel_std)
        if not (semantic_on or panoptic_on or instance_on):
            raise ValueError("enable at least one of MODEL.MASK_FORMER.TEST.{SEMANTIC,INSTANCE,PANOPTIC}_ON.")
        if (panoptic_on or instance_on) and getattr(metadata, "thing_dataset_id_to_contiguous_id", None) is None:
            raise ValueError("panoptic / instance inference needs the dataset's thing classes, but the metadata of "
                             "DATASETS.TRAIN[0] has no thing_dataset_id_to_contiguous_id: register the dataset "
                             "(import universal_seg.data) or turn MODEL.MASK_FORMER.TEST.{PANOPTIC,INSTANCE}_ON off.")
        self.criterion = criterion
        self.num_queries = num_queries
        self.object_mask_threshold, self.overlap_threshold = object_mask_threshold, overlap_threshold
        self.metadata = metadata
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        self.semantic_on, self.panoptic_on, self.instance_on = semantic_on, panoptic_on, instance_on
        self.test_topk_per_image = test_topk_per_image
        self.ignore_label = ignore_label

    @classmethod
    def from_config(cls, cfg, backbone: nn.Module | None = None) -> dict:
        name = cfg.MODEL.SEM_SEG_HEAD.NAME
        if name in PER_PIXEL_HEAD_REGISTRY:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.NAME={name!r} is a per-pixel head, which the mask-classification "
                             f"meta-architecture UniversalSegmentor cannot run: set MODEL.META_ARCHITECTURE to "
                             f"'PerPixelSegmentor'.")
        args = super().from_config(cfg, backbone)
        mf = cfg.MODEL.MASK_FORMER
        matcher = HungarianMatcher(cost_class=mf.CLASS_WEIGHT, cost_mask=mf.MASK_WEIGHT, cost_dice=mf.DICE_WEIGHT,
                                   num_points=mf.TRAIN_NUM_POINTS)
        weight_dict = build_weight_dict(mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.DEC_LAYERS,
                                        mf.DEEP_SUPERVISION)
        test = mf.TEST
        return {
            **args,
            "sem_seg_head": SegmentationHead.from_config(cfg, args["backbone"].output_shape()),
            "criterion": SetCriterion(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, matcher=matcher, weight_dict=weight_dict,
                                      eos_coef=mf.NO_OBJECT_WEIGHT, losses=("labels", "masks"),
                                      num_points=mf.TRAIN_NUM_POINTS, oversample_ratio=mf.OVERSAMPLE_RATIO,
                                      importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO),
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "object_mask_threshold": test.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": test.OVERLAP_THRESHOLD,
            "metadata": MetadataCatalog.get(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else None,
            # panoptic and instance results are built at output resolution, so masks are resized first
            "sem_seg_postprocess_before_inference": (test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE
                                                     or test.PANOPTIC_ON or test.INSTANCE_ON),
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
            raise ValueError("training inputs need 'instances' (gt_classes, gt_masks) or 'sem_seg'; check the "
                             "dataset mapper (INPUT.DATASET_MAPPER_NAME).")
        sem = x["sem_seg"]
        classes = [c for c in torch.unique(sem).tolist() if c != self.ignore_label]
        inst = Instances(tuple(sem.shape))
        inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
        inst.gt_masks = torch.stack([sem == c for c in classes]) if classes else sem.new_zeros((0, *sem.shape),
                                                                                              dtype=torch.bool)
        return inst

    def prepare_targets(self, batched_inputs: list[dict], images: ImageList) -> list[dict]:
        """Per image {"labels": [n], "masks": [n, H_pad, W_pad] bool}, masks zero-padded like the image."""
        h_pad, w_pad = images.tensor.shape[-2:]
        targets = []
        for x in batched_inputs:
            inst = self._instances_of(x).to(self.device)
            masks = inst.gt_masks
            masks = masks.tensor if hasattr(masks, "tensor") else masks
            padded = masks.new_zeros((masks.shape[0], h_pad, w_pad), dtype=torch.bool)
            padded[:, : masks.shape[1], : masks.shape[2]] = masks.bool()
            targets.append({"labels": inst.gt_classes.long(), "masks": padded})
        return targets

    # ---------------------------------------------------------------------------------------------- inference
    def inference(self, outputs: dict, batched_inputs: list[dict], images: ImageList) -> list[dict]:
        """Decoder outputs -> per image {"sem_seg", "panoptic_seg", "instances"} (those enabled), at the output
        size; mask logits are upsampled to the padded image first."""
        mask_cls = outputs["pred_logits"]
        mask_pred = F.interpolate(outputs["pred_masks"], size=images.tensor.shape[-2:], mode="bilinear",
                                  align_corners=False)
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
                out["panoptic_seg"] = panoptic_inference(cls_i, mask_i, num_classes, self.object_mask_threshold,
                                                         self.overlap_threshold, thing_ids)
            if self.instance_on:
                out["instances"] = instance_inference(cls_i, mask_i, num_classes, self.test_topk_per_image,
                                                      self.panoptic_on, thing_ids)
            results.append(out)
        return results


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
    def __init__(self, *, backbone: nn.Module, sem_seg_head: PerPixelHead, size_divisibility: int,
                 pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...],
                 slide_window: tuple[tuple[int, int], tuple[int, int]] | None = None):
        if not isinstance(sem_seg_head, PerPixelHead):
            raise TypeError(f"PerPixelSegmentor needs a per-pixel head (a PerPixelHead subclass), got "
                            f"{type(sem_seg_head).__name__}.")
        super().__init__(backbone=backbone, sem_seg_head=sem_seg_head, size_divisibility=size_divisibility,
                         pixel_mean=pixel_mean, pixel_std=pixel_std)
        self.slide_window = slide_window

    @classmethod
    def from_config(cls, cfg, backbone: nn.Module | None = None) -> dict:
        head, test = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.MASK_FORMER.TEST
        if head.NAME not in PER_PIXEL_HEAD_REGISTRY:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.NAME={head.NAME!r} is not registered as a per-pixel head, which the "
                             f"PerPixelSegmentor meta-architecture needs: choose one of {per_pixel_head_names()}, or "
                             f"set MODEL.META_ARCHITECTURE to 'UniversalSegmentor' for a mask-classification decoder.")
        if test.PANOPTIC_ON or test.INSTANCE_ON or not test.SEMANTIC_ON:
            raise ValueError(f"{head.NAME} is a per-pixel head and predicts semantic segmentation only: set "
                             "MODEL.MASK_FORMER.TEST.SEMANTIC_ON True and PANOPTIC_ON / INSTANCE_ON False.")
        slide = head.SLIDE_WINDOW
        if slide.ENABLED and (len(slide.CROP_SIZE) != 2 or len(slide.STRIDE) != 2 or min(slide.STRIDE) <= 0
                              or any(s > c for s, c in zip(slide.STRIDE, slide.CROP_SIZE))):
            raise ValueError(f"MODEL.SEM_SEG_HEAD.SLIDE_WINDOW needs CROP_SIZE and STRIDE as (h, w) with "
                             f"0 < stride <= crop, got {list(slide.CROP_SIZE)} and {list(slide.STRIDE)}.")
        args = super().from_config(cfg, backbone)
        return {
            **args,
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
        padded = F.pad(images, (0, (-W) % d, 0, (-H) % d)) if d > 1 else images
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
                raise ValueError("per-pixel heads train on 'sem_seg' ([H, W] class ids); use a semantic dataset "
                                 "mapper (INPUT.DATASET_MAPPER_NAME: mask_former_semantic).")
            sem = x["sem_seg"]
            targets[i, : sem.shape[0], : sem.shape[1]] = sem.to(self.device).long()
        return targets
