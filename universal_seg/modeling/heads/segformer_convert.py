"""Full SegFormer checkpoints (MiT encoder + All-MLP head) -> the state dict of a PerPixelSegmentor with
``MiTBackbone`` + :class:`.segformer.SegFormerHead` (``backbone.*`` + ``sem_seg_head.*``).

The encoder goes through :func:`universal_seg.modeling.backbone.mit_convert.convert_mit_checkpoint`; this file adds
the decode head:
- NVlabs / mmseg: ``decode_head.linear_c{1-4}.proj``, ``decode_head.linear_fuse.conv/.bn``,
  ``decode_head.linear_pred`` keep their names (the unused ``decode_head.conv_seg`` is dropped);
- HuggingFace ``SegformerForSemanticSegmentation``: ``decode_head.linear_c.{i}.proj`` (hub) or
  ``decode_head.linear_projections.{i}.proj`` (transformers>=5) -> ``linear_c{i+1}.proj``;
  ``linear_fuse`` -> ``linear_fuse.conv``; ``batch_norm`` -> ``linear_fuse.bn``; ``classifier`` -> ``linear_pred``.
"""

from __future__ import annotations

import re

from ...checkpoint import unwrap_state_dict
from ..backbone.mit_convert import convert_mit_checkpoint

_NVLABS_HEAD = re.compile(r"(linear_c[1-4]\.proj|linear_fuse\.conv|linear_fuse\.bn|linear_pred)\.\w+$")
_HF_HEAD = [
    (
        re.compile(r"(?:linear_c|linear_projections)\.(\d+)\.proj\.(\w+)$"),
        lambda m: f"linear_c{int(m.group(1)) + 1}.proj.{m.group(2)}",
    ),
    (re.compile(r"linear_fuse\.(\w+)$"), lambda m: f"linear_fuse.conv.{m.group(1)}"),
    (re.compile(r"batch_norm\.(\w+)$"), lambda m: f"linear_fuse.bn.{m.group(1)}"),
    (re.compile(r"classifier\.(\w+)$"), lambda m: f"linear_pred.{m.group(1)}"),
]


def convert_segformer_head(state_dict: dict) -> dict:
    """``decode_head.*`` entries of an NVlabs / mmseg or HuggingFace SegFormer state dict -> SegFormerHead names
    (``linear_c1.proj.weight``, ``linear_fuse.bn.running_mean``, ``linear_pred.bias`` ...)."""
    out = {}
    for k, v in state_dict.items():
        if not k.startswith("decode_head."):
            continue
        name = k[len("decode_head.") :]
        if name.startswith("conv_seg."):  # mmseg's BaseDecodeHead classifier, unused by SegFormerHead
            continue
        if _NVLABS_HEAD.fullmatch(name):
            out[name] = v
            continue
        for pattern, rename in _HF_HEAD:
            m = pattern.fullmatch(name)
            if m:
                out[rename(m)] = v
                break
        else:
            raise KeyError(f"Unrecognised SegFormer decode-head key {k!r}; cannot convert this checkpoint.")
    return out


def convert_segformer_checkpoint(ckpt: dict) -> dict:
    """An NVlabs / mmseg or HuggingFace SegFormer checkpoint (or a dict holding one under "state_dict" / "model")
    -> ``{"backbone.<MiT name>": ..., "sem_seg_head.<SegFormerHead name>": ...}`` for ``model.load_state_dict``."""
    sd = unwrap_state_dict(ckpt)
    head = convert_segformer_head(sd)
    if not head:
        raise KeyError(
            "Not a full SegFormer checkpoint: no decode_head.* keys (an encoder-only MiT checkpoint "
            "loads into the backbone through convert_mit_checkpoint)."
        )
    out = {f"backbone.{k}": v for k, v in convert_mit_checkpoint(sd).items()}
    out.update({f"sem_seg_head.{k}": v for k, v in head.items()})
    return out
