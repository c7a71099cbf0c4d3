"""The base of both meta-architectures: backbone -> sem_seg_head, detectron2's input and output formats
(normalisation, padding, channels-last on the CPU, output resizing, train / inference dispatch)."""

import torch
import torch.nn.functional as F
from detectron2.modeling import build_backbone
from detectron2.structures import ImageList
from torch import nn

from ...ops.batch_invariant import batch_invariant


def resize_to_output(x: torch.Tensor, image_size: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """[C, H_pad, W_pad] -> crop the padding to image_size -> bilinear to (height, width) ([C, height, width]).

    detectron2's sem_seg_postprocess, except that the resize is skipped when it would be the identity
    (output size == image size: a scale-1 bilinear resize with align_corners=False returns its input).
    """
    x = x[:, : image_size[0], : image_size[1]]
    if tuple(image_size) == (height, width):
        return x
    return F.interpolate(x[None], size=(height, width), mode="bilinear", align_corners=False)[0]


TASKS = ("panoptic", "instance", "semantic")  # preference order


class SegmentorBase(nn.Module):
    """What both meta-architectures share: a backbone and a ``sem_seg_head``, input normalisation and padding,
    output sizes.

    Input: a list of detectron2 dicts, "image" [3, H, W] (uint8 or float, in the backbone's channel order), in
    training also the targets the subclass reads, optionally "height" / "width" (the output size; default the
    image's). ``forward`` normalises and pads the batch (:meth:`preprocess`), then calls :meth:`forward_train`
    (dict of weighted losses) or :meth:`forward_inference` (one dict per image, every map at "height" x "width",
    resized with :func:`resize_to_output`). CPU inference on a batch runs under
    :func:`universal_seg.ops.batch_invariant.batch_invariant`, so each image's outputs are bit for bit those it gets
    alone (in a batch of images of the same padded size: padding further changes the input).

    Args:
        backbone: detectron2 Backbone (``output_shape()``, ``size_divisibility``).
        sem_seg_head: the head, backbone features -> predictions (subclass-specific).
        size_divisibility: pad images to a multiple of this; 0 or less: the backbone's ``size_divisibility``.
        pixel_mean, pixel_std: per-channel normalisation, (C,) each.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: nn.Module,
        size_divisibility: int,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
    ):
        super().__init__()
        self.backbone, self.sem_seg_head = backbone, sem_seg_head
        self.size_divisibility = size_divisibility if size_divisibility > 0 else backbone.size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg, backbone: nn.Module | None = None) -> dict:
        """The shared arguments (the subclasses' from_config add their head, their ``size_divisibility`` and the
        rest); ``backbone``: an already built backbone to use instead of building MODEL.BACKBONE
        (``Segmentor(cfg, backbone=...)``)."""
        return {
            "backbone": backbone if backbone is not None else build_backbone(cfg),
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
        }

    @classmethod
    def output_tasks(cls, cfg) -> tuple[str, ...]:
        """The tasks a model built from ``cfg`` outputs, a subset of TASKS in that order (panoptic > instance >
        semantic). Each meta-architecture reads its own keys; evaluation, the demo and the tools ask here."""
        raise NotImplementedError

    @classmethod
    def enable_output_task(cls, cfg, task: str) -> None:
        """Turns the model's output for ``task`` on in ``cfg`` (unfrozen), or raises ValueError when this
        meta-architecture cannot output it."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, batched_inputs: list[dict]) -> ImageList:
        """Normalises and pads the images: ImageList of [B, 3, H_pad, W_pad].

        On the CPU the batch is channels-last: oneDNN's convolutions then run without reordering every input and
        output, and the flattened feature maps the decoders read ([B, HW, C]) are views (see the README's CPU speed
        section). Values are the same; only strides differ.
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
        with batch_invariant(images.tensor):  # CPU batches: each image's outputs equal its outputs alone
            return self.forward_inference(batched_inputs, images)

    def forward_train(self, batched_inputs: list[dict], images: ImageList) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward_inference(self, batched_inputs: list[dict], images: ImageList) -> list[dict]:
        raise NotImplementedError

    # ------------------------------------------------------------------------------- checkpoint loading
    def class_head_keys(self) -> list[str]:
        """State-dict keys of the learned class head: the tensors whose first dimension is the class count (K,
        or K + 1 with the no-object class). Fine-tuning a checkpoint with another class count re-initialises
        exactly these (see :class:`universal_seg.checkpoint.UniversalSegCheckpointer`): every ``class_embed``
        Linear of a mask-classification decoder and the 1x1 classifier of every per-pixel (auxiliary) head."""
        from ..heads.base import DecodeHead

        keys = []
        for name, module in self.named_modules():
            if isinstance(module, DecodeHead):
                prefix = f"{name}.{module.classifier_name}"
            elif name.endswith("class_embed") and isinstance(module, nn.Linear):
                prefix = name
            else:
                continue
            keys += [f"{prefix}.{p}" for p, _ in getattr(module, "classifier", module).named_parameters()]
        return keys

    def config_buffer_keys(self) -> list[str]:
        """Persistent buffers computed from the config, never loaded from a checkpoint (they are in the official
        checkpoints, so they stay in the state dict): the criterion's per-class CE weights ``empty_weight``."""
        return [name for name, _ in self.named_buffers() if name == "criterion.empty_weight"]
