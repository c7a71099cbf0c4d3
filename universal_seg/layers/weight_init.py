"""Weight initialisation shared by the transformer backbones."""

from torch import nn


def init_transformer_weights(m: nn.Module) -> None:
    """The ViT-family init (Swin, MiT): truncated-normal(0.02) Linear weights with zero bias; LayerNorm 1 / 0."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
