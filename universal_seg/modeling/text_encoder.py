"""Text side of OneFormer (Jain et al. 2023): CLIP's BPE tokenization and the small CLIP-style text transformer.

The tokenizer is open_clip's ``SimpleTokenizer`` (the package ships CLIP's BPE vocabulary); :func:`tokenize` adds
the start / end tokens and pads or truncates to a fixed length, as CLIP and the official OneFormer do. The text
encoder's parameter names are those of the official OneFormer checkpoints (``text_encoder.*``).
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import Linear
from .transformer_decoder.attention_layers import MultiheadAttention


@functools.lru_cache(maxsize=1)
def _bpe():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def tokenize(texts: list[str] | str, context_length: int = 77) -> torch.Tensor:
    """Texts -> int64 [n, context_length]: <start> + BPE ids of the lower-cased text + <end>, zero-padded; a text
    too long keeps its first ``context_length - 1`` tokens and ends with <end>."""
    if isinstance(texts, str):
        texts = [texts]
    if context_length < 2:
        raise ValueError(f"the token sequence length must be >= 2 (start and end tokens), got {context_length}.")
    bpe = _bpe()
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [bpe.sot_token_id, *bpe.encode(text)][: context_length - 1] + [bpe.eot_token_id]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x) (CLIP's activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: x += attn(ln_1 x) (causal); x += mlp(ln_2 x), mlp = c_fc (C -> 4C), QuickGELU, c_proj."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", Linear(4 * width, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        """x [B, L, C]; blocked bool [B * heads, L, L] (True = may not attend)."""
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, blocked)
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """CLIP-style causal text transformer: token ids [B, L] -> the features at each text's <end> token [B, width].

    <end> has the largest id of the vocabulary, so its position is ``argmax`` over the ids (CLIP's convention).
    ``heads = width // 64``; initialisation as CLIP (token embedding N(0, 0.02), positions N(0, 0.01), linear
    layers truncated N(0, 0.02), attention input projections xavier).
    """

    def __init__(self, context_length: int, width: int, layers: int, vocab_size: int):
        super().__init__()
        if width % 64:
            raise ValueError(f"MODEL.TEXT_ENCODER.WIDTH must be a multiple of 64 (heads = width / 64), got {width}.")
        self.context_length, self.heads = context_length, width // 64
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(ResidualAttentionBlock(width, self.heads) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        B, L = ids.shape
        if L != self.context_length:
            raise ValueError(f"text tokens have length {L}, the text encoder expects {self.context_length}.")
        x = self.token_embedding(ids) + self.positional_embedding
        causal = torch.ones(L, L, dtype=torch.bool, device=ids.device).triu(1)
        blocked = causal.expand(B * self.heads, L, L)
        for block in self.transformer.resblocks:
            x = block(x, blocked)
        x = self.ln_final(x)
        return x[torch.arange(B, device=ids.device), ids.argmax(dim=-1)]


def contrastive_loss(queries: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """OneFormer's symmetric query-text contrastive loss over the images of a batch.

    queries [B, N, C] and texts [B, N, C] are flattened per image to [B, N*C] and L2-normalised; with
    s = min(exp(logit_scale), 100), logits = s * q t^T [B, B]; loss = CE(logits, arange(B)) + CE(logits^T, arange(B))
    (each image's queries should match its own texts, and the reverse).
    """
    q = F.normalize(queries.float().flatten(1), dim=-1)
    t = F.normalize(texts.float().flatten(1), dim=-1)
    scale = logit_scale.exp().clamp(max=100.0)
    logits = scale * q @ t.t()
    labels = torch.arange(q.shape[0], device=q.device)
    return F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)
