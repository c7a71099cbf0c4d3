"""One converter for MiT (SegFormer encoder) weights -> :class:`.mit.MixVisionTransformer` names (NVlabs names).

Accepted inputs (a state dict, or a checkpoint dict holding one under "state_dict" / "model"):
- NVlabs ImageNet ``mit_b*.pth``: already our names; the classifier ``head.*`` is dropped.
- NVlabs / mmseg full SegFormer: ``backbone.*`` kept (prefix removed), ``decode_head.*`` / ``auxiliary_head.*`` dropped.
- HuggingFace transformers, both the hub layout (``[segformer.]encoder.patch_embeddings.{i}``,
  ``encoder.block.{i}.{j}.attention.self.query/key/value``...) and the transformers>=5 layout
  (``[segformer.]stages.{i}.blocks.{j}.attention.q_proj/k_proj/v_proj``...); HF's separate key/value
  projections are concatenated into ``attn.kv`` ([2C, C], key first), decoder / classifier keys dropped.
"""

from __future__ import annotations

import re

import torch

from ...checkpoint import unwrap_state_dict

# HF suffix (after "blocks.{j}." / "block.{i}.{j}.") -> NVlabs suffix; kv handled separately.
_HF_BLOCK = {
    "layer_norm_1": "norm1",
    "layernorm_before": "norm1",
    "layer_norm_2": "norm2",
    "layernorm_after": "norm2",
    "attention.self.query": "attn.q",
    "attention.q_proj": "attn.q",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "attention.self.sr": "attn.sr",
    "attention.sequence_reduction.sequence_reduction": "attn.sr",
    "attention.self.layer_norm": "attn.norm",
    "attention.sequence_reduction.layer_norm": "attn.norm",
    "mlp.dense1": "mlp.fc1",
    "mlp.fc1": "mlp.fc1",
    "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
    "mlp.dense2": "mlp.fc2",
    "mlp.fc2": "mlp.fc2",
}
_HF_KEY = ("attention.self.key", "attention.k_proj")
_HF_VALUE = ("attention.self.value", "attention.v_proj")


def _is_hf(sd: dict) -> bool:
    return any(re.match(r"(segformer\.)?(encoder\.(patch_embeddings|block|layer_norm)|stages)\.", k) for k in sd)


def _convert_hf(sd: dict) -> dict:
    out, kv = {}, {}
    for k, v in sd.items():
        k = k[len("segformer.") :] if k.startswith("segformer.") else k
        m = re.match(
            r"(?:encoder\.patch_embeddings\.(\d+)|stages\.(\d+)\.patch_embeddings)\.(proj|layer_norm)\.(\w+)$", k
        )
        if m:
            i = int(m.group(1) or m.group(2))
            out[f"patch_embed{i + 1}.{'proj' if m.group(3) == 'proj' else 'norm'}.{m.group(4)}"] = v
            continue
        m = re.match(r"(?:encoder\.layer_norm\.(\d+)|stages\.(\d+)\.layer_norm)\.(\w+)$", k)
        if m:
            out[f"norm{int(m.group(1) or m.group(2)) + 1}.{m.group(3)}"] = v
            continue
        m = re.match(r"(?:encoder\.block\.(\d+)\.(\d+)|stages\.(\d+)\.blocks\.(\d+))\.(.+)\.(weight|bias)$", k)
        if not m:
            continue  # decode_head / classifier / anything outside the encoder
        i = int(m.group(1) or m.group(3))
        j = int(m.group(2) or m.group(4))
        name, param = m.group(5), m.group(6)
        prefix = f"block{i + 1}.{j}"
        if name in _HF_KEY or name in _HF_VALUE:
            kv.setdefault((prefix, param), [None, None])[0 if name in _HF_KEY else 1] = v
        elif name in _HF_BLOCK:
            out[f"{prefix}.{_HF_BLOCK[name]}.{param}"] = v
        else:
            raise KeyError(f"Unrecognised HuggingFace SegFormer key {k!r}; cannot convert this checkpoint.")
    for (prefix, param), (key, value) in kv.items():
        if key is None or value is None:
            raise KeyError(f"HuggingFace SegFormer checkpoint has only one of key/value for {prefix}.attn ({param}).")
        out[f"{prefix}.attn.kv.{param}"] = torch.cat([torch.as_tensor(key), torch.as_tensor(value)], dim=0)
    return out


def convert_mit_checkpoint(ckpt: dict) -> dict:
    """Any supported MiT / SegFormer checkpoint -> state dict with our (NVlabs) encoder names, e.g.
    ``block1.0.attn.kv.weight [2C, C]``; keys outside the encoder are dropped."""
    sd = unwrap_state_dict(ckpt)
    if _is_hf(sd):
        return _convert_hf(sd)
    if any(k.startswith("backbone.") for k in sd):
        return {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    if not any(k.startswith("patch_embed1.") for k in sd):
        raise KeyError(
            "Not a MiT / SegFormer checkpoint: found neither NVlabs (patch_embed1.*, backbone.*) "
            "nor HuggingFace (encoder.*, stages.*) encoder keys."
        )
    return {k: v for k, v in sd.items() if not k.startswith("head.")}
