"""HuggingFace transformers ``OneFormerForUniversalSegmentation`` (Swin backbone) state dicts -> the state dict of
our ``UniversalSegmentor`` (``configs/coco/panoptic/oneformer_swin_t.yaml`` / ``oneformer_swin_l.yaml``), whose names
are the official SHI-Labs OneFormer names (``tests/data/oneformer_r50_coco_state_dict.txt`` for the R50 sibling).

The Swin backbone (``model.pixel_level_module.encoder.*``, both the hub / 4.x and the transformers >= 5 names) and
the pixel decoder (``model.pixel_level_module.decoder.*``) are named as in HF's Mask2Former: their rules are
:mod:`.hf_mask2former_convert`'s (``SWIN_RENAMES``, ``SWIN_FUSED``, ``PIXEL_DECODER_RENAMES``), as are the
conversion loop, the completeness checks in our names and the treatment of ``relative_position_index`` and
``swin.layernorm``. OneFormer's own parts:

- ``model.task_encoder.task_mlp.layers.{i}.0`` -> ``task_mlp.layers.{i}`` (the task-token MLP);
- the decoder ``model.transformer_module.decoder.*``: ``query_transformer`` -> ``sem_seg_head.predictor.
  class_transformer`` (same sub-names), ``query_input_projection`` -> ``class_input_proj``, ``layers.{i}.
  {cross_attn,self_attn,ffn}`` -> ``transformer_{cross_attention,self_attention,ffn}_layers.{i}`` (the
  self-attention's separate ``q/k/v_proj`` fused into ``in_proj_weight`` / ``in_proj_bias``, ``cat([q, k, v])``),
  ``mask_embed.layers.{i}.0`` -> ``mask_embed.layers.{i}``; ``class_embed`` and ``decoder_norm`` keep their names;
  ``model.transformer_module.{queries_embedder,level_embed}`` -> ``query_embed`` / ``level_embed``;
- the training-only text branch, when the file has it (``model.text_mapper.*``, HF's ``is_training``):
  ``text_encoder.transformer.layers.{i}.{layer_norm1,layer_norm2,mlp.fc1,mlp.fc2,self_attn}`` ->
  ``text_encoder.transformer.resblocks.{i}.{ln_1,ln_2,mlp.c_fc,mlp.c_proj,attn}``, ``text_projector.layers.{i}.0`` ->
  ``text_projector.layers.{i}``, ``prompt_ctx`` and the contrastive temperature ``criterion.logit_scale``. Without
  the text branch ``criterion.logit_scale`` is left out too (ours exists only with MODEL.TEXT_ENCODER.ENABLED):
  load such a file with MODEL.TEXT_ENCODER.ENABLED False (inference never runs the text branch).

HF's text encoder runs *without* its causal mask (``OneFormerTextTransformerLayer`` stores ``attn_mask`` and never
passes it to ``nn.MultiheadAttention``), where the official OneFormer and ours are causal (CLIP's): the weights are
the same, the text features (training only) are not; with the mask removed from ours they are equal
(``tests/test_hf_oneformer.py``).

Refused with a KeyError: DiNAT backbones (``shi-labs/oneformer_*_dinat_*``: we have no DiNAT), a Mask2Former
checkpoint (use :mod:`.hf_mask2former_convert`), any key no rule maps and a truncated file (the keys named).
Settings no tensor shape reveals come from ``config.json``: ``num_attention_heads`` is MODEL.MASK_FORMER.NHEADS and
SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS, ``pre_norm`` MODEL.MASK_FORMER.PRE_NORM, ``use_task_norm``
MODEL.ONE_FORMER.USE_TASK_NORM (8, 8, False and True in the official OneFormer recipe, as in our configs; both take
the text encoder's heads as width // 64); HF's ``conv_dim`` must equal ``hidden_dim`` (HF keeps the decoder's input
projections in a plain list, so a file never holds them, and our decoder then has none). ``criterion.logit_scale``
is float64 in HF (initialised from ``np.log``): it is written as float32, the dtype of ours.
"""

from __future__ import annotations

import re

import torch

from ..checkpoint import unwrap_state_dict
from .hf_mask2former_convert import (
    NUMBERED,
    PIXEL_DECODER_RENAMES,
    REQUIRED,
    SWIN_FUSED,
    SWIN_RENAMES,
    UNITS,
    _listing,
    convert_hf_state_dict,
)

_TM = r"model\.transformer_module\."
_DEC = _TM + r"decoder\."
_LAYER = _DEC + r"layers\.(\d+)\."
_OURS = "sem_seg_head.predictor."
_TEXT = r"model\.text_mapper\.text_encoder\."
_PARAM = r"\.(weight|bias)"

_RENAMES = [
    (r"model\.task_encoder\.task_mlp\.layers\.(\d+)\.0" + _PARAM, r"task_mlp.layers.\1.\2"),
    # decoder
    (_TM + r"queries_embedder\.weight", _OURS + "query_embed.weight"),
    (_TM + r"level_embed\.weight", _OURS + "level_embed.weight"),
    (_DEC + r"(class_embed|decoder_norm)" + _PARAM, _OURS + r"\1.\2"),
    (_DEC + r"query_input_projection" + _PARAM, _OURS + r"class_input_proj.\1"),
    (
        _DEC + r"query_transformer\.decoder\.layers\.(\d+)\.(self_attn|multihead_attn)\."
        r"(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
        _OURS + r"class_transformer.decoder.layers.\1.\2.\3",
    ),
    (
        _DEC + r"query_transformer\.decoder\.layers\.(\d+)\.(linear1|linear2|norm1|norm2|norm3)" + _PARAM,
        _OURS + r"class_transformer.decoder.layers.\1.\2.\3",
    ),
    (_DEC + r"query_transformer\.decoder\.norm" + _PARAM, _OURS + r"class_transformer.decoder.norm.\1"),
    (
        _LAYER + r"cross_attn\.multihead_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
        _OURS + r"transformer_cross_attention_layers.\1.multihead_attn.\2",
    ),
    (_LAYER + r"cross_attn\.norm" + _PARAM, _OURS + r"transformer_cross_attention_layers.\1.norm.\2"),
    (
        _LAYER + r"self_attn\.self_attn\.out_proj" + _PARAM,
        _OURS + r"transformer_self_attention_layers.\1.self_attn.out_proj.\2",
    ),
    (_LAYER + r"self_attn\.norm" + _PARAM, _OURS + r"transformer_self_attention_layers.\1.norm.\2"),
    (_LAYER + r"ffn\.(linear1|linear2|norm)" + _PARAM, _OURS + r"transformer_ffn_layers.\1.\2.\3"),
    (_DEC + r"mask_embed\.layers\.(\d+)\.0" + _PARAM, _OURS + r"mask_embed.layers.\1.\2"),
    # text branch (training only)
    (_TEXT + r"(token_embedding\.weight|positional_embedding|ln_final\.weight|ln_final\.bias)", r"text_encoder.\1"),
    (
        _TEXT + r"transformer\.layers\.(\d+)\.self_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
        r"text_encoder.transformer.resblocks.\1.attn.\2",
    ),
    (
        _TEXT + r"transformer\.layers\.(\d+)\.(layer_norm1|layer_norm2|mlp\.fc1|mlp\.fc2)" + _PARAM,
        lambda m: f"text_encoder.transformer.resblocks.{m.group(1)}.{_TEXT_LAYER[m.group(2)]}.{m.group(3)}",
    ),
    (r"model\.text_mapper\.text_projector\.layers\.(\d+)\.0" + _PARAM, r"text_projector.layers.\1.\2"),
    (r"model\.text_mapper\.prompt_ctx\.weight", "prompt_ctx.weight"),
    # the criterion: the CE class weights (a buffer, recomputed from our config, see the Mask2Former converter) and
    # the learned contrastive temperature
    (r"criterion\.(empty_weight|logit_scale)", r"criterion.\1"),
]
_TEXT_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
_RENAMES = SWIN_RENAMES + PIXEL_DECODER_RENAMES + [(re.compile(p), r) for p, r in _RENAMES]

_FUSED = [
    SWIN_FUSED,
    (
        re.compile(_LAYER + r"self_attn\.self_attn\.([qkv])_proj" + _PARAM),
        _OURS + r"transformer_self_attention_layers.\1.self_attn.in_proj{p}",
        lambda m: m.group(2),
    ),
]

_LN = ("weight", "bias")
_MHA = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
_UNITS = UNITS + [
    (
        re.compile(r"(sem_seg_head\.predictor\.class_transformer\.decoder\.layers\.\d+)\..*"),
        [f"{m}.{p}" for m in ("self_attn", "multihead_attn") for p in _MHA]
        + [f"{m}.{p}" for m in ("linear1", "linear2", "norm1", "norm2", "norm3") for p in _LN],
    ),
    (re.compile(r"(task_mlp\.layers\.\d+)\..*"), list(_LN)),
    (re.compile(r"(text_projector\.layers\.\d+)\..*"), list(_LN)),
    (
        re.compile(r"(text_encoder\.transformer\.resblocks\.\d+)\..*"),
        [f"attn.{p}" for p in _MHA] + [f"{m}.{p}" for m in ("ln_1", "ln_2", "mlp.c_fc", "mlp.c_proj") for p in _LN],
    ),
]
_NUMBERED = NUMBERED + [
    (
        re.compile(r"sem_seg_head\.predictor\.class_transformer\.decoder\.layers\.(\d+)\..*"),
        "sem_seg_head.predictor.class_transformer.decoder.layers.{i}",
    ),
    (re.compile(r"task_mlp\.layers\.(\d+)\..*"), "task_mlp.layers.{i}"),
    (re.compile(r"text_projector\.layers\.(\d+)\..*"), "text_projector.layers.{i}"),
    (re.compile(r"text_encoder\.transformer\.resblocks\.(\d+)\..*"), "text_encoder.transformer.resblocks.{i}"),
]
_REQUIRED = REQUIRED + [
    "task_mlp.layers.0.weight",
    "sem_seg_head.predictor.class_input_proj.weight",
    "sem_seg_head.predictor.class_input_proj.bias",
    "sem_seg_head.predictor.class_transformer.decoder.norm.weight",
    "sem_seg_head.predictor.class_transformer.decoder.norm.bias",
]
# every tensor of the text branch, once any is there
_TEXT_REQUIRED = [
    "text_encoder.token_embedding.weight",
    "text_encoder.positional_embedding",
    "text_encoder.ln_final.weight",
    "text_encoder.ln_final.bias",
    "text_encoder.transformer.resblocks.0.ln_1.weight",
    "text_projector.layers.0.weight",
    "criterion.logit_scale",
]

_DINAT = re.compile(r"model\.pixel_level_module\.encoder\.(?:\w+\.)?(?:encoder\.levels\.\d+\..*|.*\.rpb)")


def _check_foreign(sd: dict) -> None:
    dinat = [k for k in sd if _DINAT.fullmatch(k)]
    if dinat:
        raise KeyError(
            f"a HuggingFace OneFormer checkpoint with a DiNAT backbone ({_listing(dinat, 2)}): DiNAT "
            f"(shi-labs/oneformer_*_dinat_*) is not supported; convert a Swin one (shi-labs/oneformer_*_swin_*)."
        )
    if any(k.startswith("model.transformer_module.queries_features") for k in sd):
        raise KeyError(
            "a HuggingFace Mask2Former checkpoint (model.transformer_module.queries_features), not a OneFormer one: "
            "convert it with tools/convert_hf_mask2former.py."
        )
    if any(k.startswith("model.pixel_level_module.") for k in sd):
        return
    example = _listing(list(sd), 3) if sd else "nothing"
    if any(k.startswith("pixel_level_module.") for k in sd):
        hint = "it is a OneFormerModel; convert the OneFormerForUniversalSegmentation checkpoint (model.* names)"
    else:
        hint = "give the model.safetensors / pytorch_model.bin of a shi-labs/oneformer_*_swin_* model"
    raise KeyError(
        f"Not a HuggingFace OneFormerForUniversalSegmentation state dict: no model.pixel_level_module.* keys "
        f"(found {example}); {hint}."
    )


def convert_hf_oneformer_checkpoint(ckpt: dict) -> dict:
    """A HuggingFace ``OneFormerForUniversalSegmentation`` state dict with a Swin backbone (hub or transformers >= 5
    layout, or a dict holding one under "state_dict" / "model") -> our ``UniversalSegmentor`` state dict (official
    OneFormer names: ``task_mlp.layers.0.weight``, ``sem_seg_head.predictor.class_transformer.*`` ...), with the text
    branch when the file has it. Raises KeyError naming the keys when a key is not recognised, the checkpoint is
    incomplete or its backbone is DiNAT."""
    sd = unwrap_state_dict(ckpt)
    _check_foreign(sd)
    text = any(k.startswith("model.text_mapper.") for k in sd)
    if not text:  # the temperature of the contrastive loss: nothing to apply it to (see the module docstring)
        sd = {k: v for k, v in sd.items() if k != "criterion.logit_scale"}
    required = _REQUIRED + (_TEXT_REQUIRED if text else [])
    out = convert_hf_state_dict(
        sd,
        "OneFormer",
        _RENAMES,
        _FUSED,
        required,
        "only the Swin backbone of the shi-labs/oneformer_*_swin_* models is supported",
        units=_UNITS,
        numbered=_NUMBERED,
    )
    if "criterion.logit_scale" in out:  # HF's is float64 (initialised from np.log), ours float32
        out["criterion.logit_scale"] = torch.as_tensor(out["criterion.logit_scale"]).float()
    return out
