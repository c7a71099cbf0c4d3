"""Export of a model's inference path: TorchScript (semantic scores, traced at one fixed input size) and ONNX
(the network's outputs, the semantic scores and the semantic map; dynamic batch and image size).

:class:`SemanticSegmentationWrapper` is a plain ``nn.Module``: image [1, 3, H, W] float (pixel values 0..255 in
cfg.INPUT.FORMAT channel order) -> normalise -> pad to the size divisibility -> backbone -> sem_seg_head ->
semantic scores -> crop + bilinear to [1, K, H, W]. It reproduces the "sem_seg" output of the eager model for an
image of that size (no test-time resize). :class:`OnnxExportWrapper` runs the same path and returns every output
a deployment needs (see its docstring); :func:`export_onnx` exports it with ``torch.onnx.export`` (the
``torch.export``-based exporter, symbolic batch / height / width).

The compiled MSDeformAttn op is an autograd Function over a C++ extension, which neither tracer can record. The
export switches the MSDeformAttn layers of the calling thread (a ``ContextVar``, other threads keep the compiled
op) to a pure-PyTorch formulation: :func:`reference_ms_deform_attn` to the ``grid_sample`` reference for the
TorchScript trace, :func:`onnx_ms_deform_attn` to :func:`gather_ms_deform_attn` for ONNX. The reference splits
the levels with Python sizes read from the level table, which a symbolic-shape export cannot do; the gather
formulation reads the level table as tensors only (one ONNX graph for every image size).
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .modeling.heads import PerPixelHead
from .modeling.oneformer import TEXT_OF_TASK
from .modeling.postprocess import confident_semantic_inference, semantic_inference
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


def gather_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Multi-scale deformable attention written with gathers (same arguments and result as the compiled op:
    value [N, S, M, D], spatial_shapes [L, 2] (H_l, W_l), level_start_index [L], sampling_locations
    [N, Lq, M, L, P, 2] (x, y) in [0, 1], attention_weights [N, Lq, M, L, P] -> [N, Lq, M * D]).

    Bilinear sampling with zero padding and align_corners=False, as the kernels and ``grid_sample``: a location
    (x, y) of level l is the pixel coordinate (x * W_l - 0.5, y * H_l - 0.5); its four neighbours (x0 + dx,
    y0 + dy), dx, dy in {0, 1}, x0 = floor, weigh (1 - |x - x_i|) (1 - |y - y_i|), times 0 outside the map. Each
    neighbour's row of ``value`` is start_l + y_i * W_l + x_i; all L * P * 4 rows of a (query, head) are gathered
    in one ``index_select`` and reduced with their weights (bilinear x attention) in one batched product. The
    level table is used only as tensors, so an exported graph holds no image size. Sums in float32 (float64 for
    float64 values), as the op.
    """
    out_dtype = value.dtype
    compute = opmath_dtype(value.dtype)
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    shapes = spatial_shapes.to(device=value.device, dtype=torch.long)
    starts = level_start_index.to(device=value.device, dtype=torch.long).view(1, 1, 1, L, 1)
    heights, widths = shapes[:, 0].view(1, 1, 1, L, 1), shapes[:, 1].view(1, 1, 1, L, 1)
    x = sampling_locations[..., 0].to(compute) * widths.to(compute) - 0.5  # [N, Lq, M, L, P]
    y = sampling_locations[..., 1].to(compute) * heights.to(compute) - 0.5
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    attention = attention_weights.to(compute)
    rows, weights = [], []
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi < widths) & (yi >= 0) & (yi < heights)
            w = (fx if dx else 1 - fx) * (fy if dy else 1 - fy) * attention
            weights.append(torch.where(inside, w, torch.zeros_like(w)))
            rows.append(starts + yi.clamp(min=0).minimum(heights - 1) * widths + xi.clamp(min=0).minimum(widths - 1))
    K = L * P * 4
    # [N, Lq, M, L, P, 4] -> [N, M, Lq, K]
    rows = torch.stack(rows, dim=-1).permute(0, 2, 1, 3, 4, 5).reshape(N, M, Lq, K)
    weights = torch.stack(weights, dim=-1).permute(0, 2, 1, 3, 4, 5).reshape(N * M * Lq, 1, K)
    # rows of value as [N * M * S, D]: image n, head m, position s at (n * M + m) * S + s
    table = value.to(compute).permute(0, 2, 1, 3).reshape(N * M * S, D)
    offsets = (torch.arange(N * M, device=value.device) * S).view(N, M, 1, 1)
    gathered = table.index_select(0, (rows + offsets).reshape(-1)).view(N * M * Lq, K, D)
    out = torch.bmm(weights, gathered).view(N, M, Lq, D)  # [N, M, Lq, D]
    return out.permute(0, 2, 1, 3).reshape(N, Lq, M * D).to(out_dtype)


@contextlib.contextmanager
def onnx_ms_deform_attn():
    """Inside this context the MSDeformAttn layers run in the calling thread use :func:`gather_ms_deform_attn`."""
    with use_ms_deform_attn_op(gather_ms_deform_attn):
        yield


def semantic_scores(outputs, size: tuple[int, int], object_threshold: float = 0.0) -> torch.Tensor:
    """Head outputs -> per-class scores [B, K, H, W] at ``size`` (the padded input size).

    Mask classification ({"pred_logits": [B, Q, K+1], "pred_masks": [B, Q, h, w]}): masks are upsampled first,
    then sum over queries of p(class) * sigmoid(mask), as the meta-architecture does (over the queries with
    p(object) > ``object_threshold`` when it is > 0: MODEL.MASK_FORMER.TEST.SEMANTIC_OBJECT_THRESHOLD). Per-pixel
    heads (a tensor [B, K, h, w] or {"sem_seg_logits": [B, K, h, w], ...}): logits upsampled, then softmax over classes.
    """
    if isinstance(outputs, dict) and "pred_logits" in outputs and "pred_masks" in outputs:
        masks = F.interpolate(outputs["pred_masks"], size=size, mode="bilinear", align_corners=False)
        if object_threshold > 0:
            return torch.stack(
                [confident_semantic_inference(c, m, object_threshold) for c, m in zip(outputs["pred_logits"], masks)]
            )
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

    A OneFormer model (``task_mlp``) runs with the task token of its ``test_task`` (MODEL.TEST.TASK: semantic,
    instance or panoptic), computed once here and held as a constant [1, C]: the graph is that task's.

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
        self.semantic_object_threshold = float(getattr(model, "semantic_object_threshold", 0.0))
        self.register_buffer("task_token", _task_token(model), persistent=False)

    def conditioning(self, batch: int) -> dict:
        """The decoder's extra inputs for ``batch`` images: OneFormer's task token [batch, C], else none."""
        return {} if self.task_token is None else {"task": self.task_token.expand(batch, -1)}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image: [B, 3, H, W] float. Returns [B, K, H, W] float semantic scores."""
        height, width = image.shape[-2:]
        x = image if self.normalized_input else (image - self.pixel_mean) / self.pixel_std
        d = self.size_divisibility
        if d > 1:
            pad_h, pad_w = (d - height % d) % d, (d - width % d) % d
            x = F.pad(x, (0, pad_w, 0, pad_h))  # zeros after normalisation, like ImageList.from_tensors
        outputs = self.sem_seg_head(self.backbone(x), **self.conditioning(x.shape[0]))
        scores = semantic_scores(outputs, tuple(x.shape[-2:]), self.semantic_object_threshold)
        return scores[:, :, :height, :width]


def _task_token(model: nn.Module) -> torch.Tensor | None:
    """OneFormer's mapped task token [1, C] for MODEL.TEST.TASK (None for a model without task_mlp); ValueError when
    that is "per_output", which needs one decoder pass per task."""
    if getattr(model, "task_mlp", None) is None:
        return None
    if model.test_task not in TEXT_OF_TASK:
        raise ValueError(
            f"an exported OneFormer graph holds one task token, and MODEL.TEST.TASK is {model.test_task!r}: set it to "
            f"one of {sorted(TEXT_OF_TASK)} (tools/export_model.py --task)."
        )
    with torch.no_grad():
        return model.conditioning([model.test_task])["task"].detach().clone()


def _is_mask_classification(outputs) -> bool:
    return isinstance(outputs, dict) and "pred_logits" in outputs and "pred_masks" in outputs


MASK_CLASSIFICATION_OUTPUTS = ("pred_logits", "pred_masks", "mask_logits", "sem_seg", "sem_seg_map")
PER_PIXEL_OUTPUTS = ("sem_seg_logits", "sem_seg", "sem_seg_map")


class OnnxExportWrapper(nn.Module):
    """image [B, 3, H, W] float -> a tuple of outputs named by :attr:`output_names` (any B, H, W).

    Mask classification (UniversalSegmentor), :data:`MASK_CLASSIFICATION_OUTPUTS`:
        pred_logits [B, Q, K+1] class logits (index K = no object), the network's output;
        pred_masks [B, Q, h, w] mask logits at the decoder's resolution (h, w = padded size / 4), the network's;
        mask_logits [B, Q, H, W] those bilinearly upsampled to the padded input and cropped to H x W: the input of
            the instance / panoptic post-processing (:mod:`universal_seg.export_postprocess`);
        sem_seg [B, K, H, W] semantic scores, sum over queries of p(class) * sigmoid(mask), as the model's
            "sem_seg";
        sem_seg_map int64 [B, H, W] argmax of sem_seg over the classes.
    Per-pixel heads (PerPixelSegmentor), :data:`PER_PIXEL_OUTPUTS`:
        sem_seg_logits [B, K, h, w] the head's logits; sem_seg [B, K, H, W] softmax of the logits upsampled to
        the padded input, cropped (the model's "sem_seg" without sliding windows); sem_seg_map int64 [B, H, W].

    Images are normalised and zero-padded (after normalisation) to the size divisibility at the bottom / right, as
    ``SegmentorBase.preprocess`` does; outputs equal the eager model's for an image whose output size is its input
    size (no test-time resize). A batch shares one padded size, so the images of a batch must have one size.
    OneFormer runs with its MODEL.TEST.TASK's token (see :class:`SemanticSegmentationWrapper`).

    Args:
        model: a built ``SegmentorBase`` (``backbone``, ``sem_seg_head``, ``pixel_mean``, ``pixel_std``,
            ``size_divisibility``) in eval mode.
        normalized_input: True when the input is already (x - pixel_mean) / pixel_std.
    """

    def __init__(self, model: nn.Module, normalized_input: bool = False):
        super().__init__()
        if getattr(model, "slide_window", None) is not None:
            raise ValueError(
                "the model runs sliding-window inference (MODEL.PER_PIXEL.SLIDE_WINDOW.ENABLED), which the "
                "exported graph does not: set MODEL.PER_PIXEL.SLIDE_WINDOW.ENABLED False to export the "
                "whole-image model (and run windows around it)."
            )
        self.semantic = SemanticSegmentationWrapper(model, normalized_input)
        self.mask_classification = not isinstance(model.sem_seg_head, PerPixelHead)
        self.output_names = MASK_CLASSIFICATION_OUTPUTS if self.mask_classification else PER_PIXEL_OUTPUTS

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """image: [B, 3, H, W] float. Returns the tensors named by ``output_names``, in that order."""
        sem = self.semantic
        height, width = image.shape[-2:]
        x = image if sem.normalized_input else (image - sem.pixel_mean) / sem.pixel_std
        d = max(sem.size_divisibility, 1)
        # (a zero pad is the identity: no size-dependent branch; the padded size as d * ceil(size / d) keeps the
        # exporter's symbolic size expressions short, which makes the export several times faster than with a modulo)
        x = F.pad(x, (0, (width + d - 1) // d * d - width, 0, (height + d - 1) // d * d - height))
        padded = x.shape[-2:]
        outputs = sem.sem_seg_head(sem.backbone(x), **sem.conditioning(x.shape[0]))
        if self.mask_classification:
            if not _is_mask_classification(outputs):
                raise TypeError("the model's head returns no pred_logits / pred_masks; it cannot be exported.")
            pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
            masks = F.interpolate(pred_masks, size=padded, mode="bilinear", align_corners=False)
            # (narrow, not a slice: the exporter sizes a slice min(height, padded height), narrow exactly height)
            masks = masks.narrow(2, 0, height).narrow(3, 0, width)
            probs = pred_logits.softmax(-1)[..., :-1]  # [B, Q, K]
            scores = torch.einsum("bqk,bqhw->bkhw", probs, masks.sigmoid())
            return pred_logits, pred_masks, masks, scores, scores.argmax(1)
        logits = outputs["sem_seg_logits"] if isinstance(outputs, dict) else outputs
        scores = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
        scores = scores.narrow(2, 0, height).narrow(3, 0, width)
        scores = scores.softmax(1)
        return logits, scores, scores.argmax(1)


def export_onnx(
    model: nn.Module,
    path: str,
    example_size: tuple[int, int] = (256, 320),
    normalized_input: bool = False,
    opset_version: int = 18,
) -> OnnxExportWrapper:
    """Exports :class:`OnnxExportWrapper` (``model`` on the CPU, eval mode) to the ONNX file ``path``.

    Input "image" [batch, 3, height, width] float32, all three dimensions symbolic; outputs named as in the
    wrapper's ``output_names``. The file names the symbolic dimensions (:data:`ONNX_AXIS_NAMES`) in the input and
    in every output, instead of the exporter's s0, s1, ...: each output's first dimension is "batch"; mask_logits
    [batch, Q, height, width], sem_seg [batch, K, height, width], sem_seg_map [batch, height, width]; pred_masks
    and sem_seg_logits at the network's resolution carry expressions of them (e.g. "8*(((height + 31)//32))": the
    height padded to 32, over 4). The export itself uses ``Dim.DYNAMIC`` (no constraints asked of the sizes) and
    renames the exporter's symbols afterwards (``ONNXProgram.rename_axes``, also inside expressions and the
    graph's intermediate shapes). MSDeformAttn is exported through :func:`gather_ms_deform_attn`. ``example_size``
    is the size of the example input the exporter runs (any size works afterwards; the example's height and
    width should not be 1 or equal each other's, which the exporter would take for a fixed relation; should it
    give the height and the width one symbol, a ValueError is raised instead of a file for square images only).
    The weights are stored inside the file. Returns the wrapper (for comparisons with the eager model).
    """
    wrapper = OnnxExportWrapper(model.eval(), normalized_input).eval()
    example = torch.rand((2, 3, *example_size), generator=torch.Generator().manual_seed(0)) * 255.0
    batch = height = width = torch.export.Dim.DYNAMIC
    with torch.no_grad(), onnx_ms_deform_attn():
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            dynamic_shapes=({0: batch, 2: height, 3: width},),
            input_names=["image"],
            output_names=list(wrapper.output_names),
            opset_version=opset_version,
            external_data=False,
        )
    program.rename_axes(_input_axis_names(program.model.graph.inputs[0].shape))
    program.save(path, external_data=False)
    return wrapper


# names of the image's dimensions 0, 2, 3 in the exported file (dimension 1 is the fixed 3 channels)
ONNX_AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}


def _input_axis_names(shape) -> dict:
    """{symbol the exporter gave a dimension of the input ``shape`` (onnx_ir): its name in ONNX_AXIS_NAMES}, for
    ``ONNXProgram.rename_axes`` (which renames the symbol in every value of the graph, also inside expressions).
    A dimension the exporter fixed to a number keeps it (the export's check at other sizes then fails)."""
    mapping = {}
    for axis, name in ONNX_AXIS_NAMES.items():
        symbol = shape[axis]
        if isinstance(symbol, int) or symbol.value is None:
            continue
        if symbol.value in mapping:
            raise ValueError(
                f"the exporter gave the image's {mapping[symbol.value]} and {name} one symbol ({symbol.value}): the "
                "graph would only hold inputs where they are equal; export with another example size."
            )
        mapping[symbol.value] = name
    return mapping


class FixedSizeTrace(nn.Module):
    """A traced module behind a shape check, scripted: the trace holds the level sizes of its example as constants
    (an input of another size would run and give wrong scores, or fail deep inside), so an image that is not
    [1, 3, height, width] raises a RuntimeError naming the traced size (``torch.jit.Error`` once scripted, with
    that message on its last line). Runs without autograd, so callers need no ``torch.no_grad()``."""

    def __init__(self, traced: nn.Module, height: int, width: int):
        super().__init__()
        self.traced = traced
        self.height, self.width = height, width
        self.message = (
            f"this TorchScript model was traced for images [1, 3, {height}, {width}]: resize or pad the image to "
            f"{height}x{width}, export again with --size H W, or use the ONNX export (any batch and size)"
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or image.shape[:2] != (1, 3) or image.shape[2:] != (self.height, self.width):
            raise RuntimeError(self.message)
        with torch.no_grad():
            return self.traced(image)


def trace_semantic(model: nn.Module, height: int, width: int, normalized_input: bool = False):
    """TorchScript trace of SemanticSegmentationWrapper(model) for one [1, 3, height, width] input (CPU/eval),
    scripted inside :class:`FixedSizeTrace` (other sizes raise; no autograd).

    Returns (scripted module, example input [1, 3, height, width]). The size is fixed in the trace.
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
    return torch.jit.script(FixedSizeTrace(traced, height, width)), example
