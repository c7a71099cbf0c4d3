"""Shared by the HuggingFace checkpoint tests (tests/test_hf_*.py): a tiny Swin on both sides, the randomisation of
transformers' model (so that a swapped or mis-fused tensor shows) and the building of ours with that Swin."""

import math

import pytest
import torch
import transformers
from conftest import load_cfg
from detectron2.modeling import build_model
from torch import nn

from universal_seg.modeling.backbone import swin

# a small Swin (our variant table fixes the architecture, so the tests add this row to it while they build our model)
TINY_SWIN = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7, pretrain_img_size=224)


def swin_config(embed_dim, depths, num_heads, window_size) -> transformers.SwinConfig:
    """transformers' SwinConfig of these sizes (TINY_SWIN's by default), with the four stage outputs our backbone
    gives and no drop path."""
    return transformers.SwinConfig(
        embed_dim=embed_dim,
        depths=list(depths),
        num_heads=list(num_heads),
        window_size=window_size,
        drop_path_rate=0.0,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )


TINY_SWIN_ARGS = tuple(TINY_SWIN[k] for k in ("embed_dim", "depths", "num_heads", "window_size"))


# the decoder sizes of both tests' tiny models (DEC_LAYERS 5: the layers visit level 0 twice), as our config keys
# (TINY_OVERRIDES) and as transformers' keywords that Mask2FormerConfig and OneFormerConfig share (TINY_DECODER)
NUM_CLASSES, QUERIES, DIM, HEADS, DEC_LAYERS = 7, 10, 64, 4, 5
TINY_OVERRIDES = [
    "MODEL.SWIN.VARIANT", "tiny-test",
    "MODEL.SWIN.DROP_PATH_RATE", 0.0,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", NUM_CLASSES,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", DIM,
    "MODEL.SEM_SEG_HEAD.MASK_DIM", DIM,
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", 2,
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS", HEADS,
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD", 128,
    "MODEL.MASK_FORMER.HIDDEN_DIM", DIM,
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", QUERIES,
    "MODEL.MASK_FORMER.NHEADS", HEADS,
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", 128,
    "MODEL.MASK_FORMER.DEC_LAYERS", DEC_LAYERS,
]  # fmt: skip
TINY_DECODER = dict(
    num_labels=NUM_CLASSES,
    num_queries=QUERIES,
    hidden_dim=DIM,
    num_attention_heads=HEADS,
    encoder_layers=2,
    encoder_feedforward_dim=128,
    dim_feedforward=128,
    decoder_layers=DEC_LAYERS,
)


def hf_config(config_class, embed_dim, depths, num_heads, window_size, **decoder):
    """transformers' ``config_class`` (Mask2FormerConfig, OneFormerConfig) on :func:`swin_config`'s Swin of these
    sizes, with the ``decoder`` keywords."""
    return config_class(backbone_config=swin_config(embed_dim, depths, num_heads, window_size), **decoder)


def randomise(hf: nn.Module, unit_normal: tuple[str, ...] = ()) -> nn.Module:
    """Every parameter of ``hf`` drawn anew (transformers zero-initialises biases and the Swin position tables):
    matrices for unit-variance outputs, vectors N(0, 0.1), norm weights U(0.5, 1.5), deformable sampling offsets'
    biases N(0, 2) (points a few pixels from their references); parameters named ``*<suffix>`` for a suffix in
    ``unit_normal`` N(0, 1). Returns ``hf``."""
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(unit_normal) if unit_normal else False:
                p.normal_(0.0, 1.0)
            elif p.dim() >= 2:
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()))  # unit-variance outputs for unit-variance inputs
            else:
                p.normal_(0.0, 0.1)
        for m in hf.modules():
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                m.weight.uniform_(0.5, 1.5)
        for name, p in hf.named_parameters():
            if name.endswith("sampling_offsets.bias"):
                p.normal_(0.0, 2.0)  # sampling points a few pixels away from the reference points
    return hf


def build_ours(config: str, *opts):
    """Our model of ``config`` + ``opts`` (which name MODEL.SWIN.VARIANT "tiny-test"), in eval mode."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(swin.SWIN_VARIANTS, "tiny-test", TINY_SWIN)
        return build_model(load_cfg(config, *opts)).eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()
