"""Blocks shared by more than one model family: norms, stochastic depth, the transformer MLP, convs with a folded
frozen BN, padding, weight init (timm's public blocks where they are identical: ``DropPath``, ``drop_path``,
``LayerNorm2d``).

Family-specific layers stay in their family's module; anything a second family needs moves here, so no family
imports another family's internals. The linear layer with oneDNN CPU products and MSDeformAttn live in
:mod:`universal_seg.ops`.
"""

from .drop import DropPath, drop_path, linear_drop_path_rates
from .frozen_bn import FoldedFrozenBNConv2d, fold_frozen_batchnorm
from .mlp import Mlp
from .norm import LayerNorm2d
from .padding import ceil_div, pad_to_multiple
from .tokens import tokens_to_map
from .weight_init import init_transformer_weights

__all__ = [
    "DropPath",
    "FoldedFrozenBNConv2d",
    "LayerNorm2d",
    "Mlp",
    "ceil_div",
    "drop_path",
    "fold_frozen_batchnorm",
    "init_transformer_weights",
    "linear_drop_path_rates",
    "pad_to_multiple",
    "tokens_to_map",
]
