"""The transformer MLP block shared by the ViT and Swin backbones."""

from torch import nn

from ..ops import Linear


class Mlp(nn.Module):
    """fc1 (dim -> hidden), GELU, dropout, fc2 (hidden -> dim), dropout: [..., dim] -> [..., dim].

    Parameter names ``fc1`` / ``fc2`` as in timm and the official checkpoints; the linear layers are
    :class:`universal_seg.ops.Linear` (oneDNN fp32 products on the CPU).
    """

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
