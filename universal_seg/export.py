"""Export of the semantic-segmentation path of a model (TorchScript by tracing, at one fixed input size).

:class:`SemanticSegmentationWrapper` is a plain ``nn.Module``: image [1, 3, H, W] float (pixel values 0..255 in
cfg.INPUT.FORMAT channel order) -> normalise -> pad to the size divisibility -> backbone -> sem_seg_head ->
semantic scores -> crop + bilinear to [1, K, H, W]. It reproduces the "sem_seg" output of the eager model for an
image of that size (no test-time resize).

The compiled MSDeformAttn op is an autograd Function over a C++ extension, which tracing records as an opaque
Python call that cannot be saved; :func:`reference_ms_deform_attn` switches the layers of the calling thread to the
pure-PyTorch reference (``grid_sample``) for the duration of the export (other threads keep the compiled op).
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .modeling.postprocess import semantic_inference
from .ops.ms_deform_attn_function import opmath_dtype
from .ops.ms_deform_attn_layer import use_ms_deform_attn_op
from .ops.ms_deform_attn_reference import ms_deform_attn_reference


def traceable_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """ms_deform_attn by the pure-PyTorch reference (same arguments, shapes and dtype handling as the compiled
    op: value [N, S, M, D], ..., attention_weights [N, Lq, M, L, P] -> [N, Lq, M * D]); traceable."""
    op = opmath_dtype(value.dtype)
    return ms_deform_attn_reference(
        value, spatial_shapes.long(), level_start_index.long(), sampling_locations.to(op), attention_weights.to(op)
    )


@contextlib.contextmanager
def reference_ms_deform_attn():
    """Inside this context the MSDeformAttn layers run in the calling thread use :func:`traceable_ms_deform_attn`."""
    with use_ms_deform_attn_op(traceable_ms_deform_attn):
        yield


def semantic_scores(outputs, size: tuple[int, int]) -> torch.Tensor:
    """Head outputs -> per-class scores [B, K, H, W] at ``size`` (the padded input size).

    Mask classification ({"pred_logits": [B, Q, K+1], "pred_masks": [B, Q, h, w]}): masks are upsampled first,
    then sum over queries of p(class) * sigmoid(mask), as the meta-architecture does. Per-pixel heads (a tensor
    [B, K, h, w] or {"sem_seg_logits": [B, K, h, w], ...}): logits upsampled, then softmax over classes.
    """
    if isinstance(outputs, dict) and "pred_logits" in outputs and "pred_masks" in outputs:
        masks = F.interpolate(outputs["pred_masks"], size=size, mode="bilinear", align_corners=False)
        return torch.stack([semantic_inference(c, m) for c, m in zip(outputs["pred_logits"], masks)])
    if isinstance(outputs, dict):
        logits = outputs.get("sem_seg_logits", outputs.get("sem_seg"))
    else:
        logits = outputs
    if not torch.is_tensor(logits) or logits.dim() != 4:
        raise TypeError(
            "the model's sem_seg_head returns neither mask-classification outputs (pred_logits, "
            "pred_masks) nor per-pixel logits [B, K, h, w]; it cannot be exported for semantic "
            "segmentation."
        )
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).softmax(dim=1)


class SemanticSegmentationWrapper(nn.Module):
    """image [B, 3, H, W] float -> semantic scores [B, K, H, W] (probabilities, as the model's "sem_seg").

    Args:
        model: a built UniversalSegmentor-like model (``backbone``, ``sem_seg_head``, ``pixel_mean``,
            ``pixel_std``, ``size_divisibility``), in eval mode.
        normalized_input: True when the input is already (x - pixel_mean) / pixel_std.
    """

    def __init__(self, model: nn.Module, normalized_input: bool = False):
        super().__init__()
        for name in ("backbone", "sem_seg_head", "pixel_mean", "pixel_std"):
            if not hasattr(model, name):
                raise TypeError(
                    f"cannot export {type(model).__name__}: it has no {name!r}; export needs a "
                    "backbone + sem_seg_head meta-architecture (UniversalSegmentor)."
                )
        self.backbone, self.sem_seg_head = model.backbone, model.sem_seg_head
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone().view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", model.pixel_std.detach().clone().view(1, -1, 1, 1), persistent=False)
        self.size_divisibility = int(getattr(model, "size_divisibility", 0) or 0)
        self.normalized_input = normalized_input

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image: [B, 3, H, W] float. Returns [B, K, H, W] float semantic scores."""
        height, width = image.shape[-2:]
        x = image if self.normalized_input else (image - self.pixel_mean) / self.pixel_std
        d = self.size_divisibility
        if d > 1:
            pad_h, pad_w = (d - height % d) % d, (d - width % d) % d
            x = F.pad(x, (0, pad_w, 0, pad_h))  # zeros after normalisation, like ImageList.from_tensors
        outputs = self.sem_seg_head(self.backbone(x))
        scores = semantic_scores(outputs, tuple(x.shape[-2:]))
        return scores[:, :, :height, :width]


def trace_semantic(model: nn.Module, height: int, width: int, normalized_input: bool = False):
    """TorchScript trace of SemanticSegmentationWrapper(model) for one [1, 3, height, width] input (CPU/eval).

    Returns (traced module, example input [1, 3, height, width]). The size is fixed in the trace.
    """
    wrapper = SemanticSegmentationWrapper(model.eval(), normalized_input).eval()
    device = wrapper.pixel_mean.device
    generator = torch.Generator().manual_seed(0)
    example = torch.rand((1, 3, height, width), generator=generator) * 255.0
    if normalized_input:
        example = (example - wrapper.pixel_mean.cpu()) / wrapper.pixel_std.cpu()
    example = example.to(device)
    with torch.no_grad(), reference_ms_deform_attn():
        traced = torch.jit.trace(wrapper, example, check_trace=False)
    return traced, example
