"""HuggingFace transformers ``Mask2FormerForUniversalSegmentation`` (Swin backbone) state dicts -> the state dict of
our ``UniversalSegmentor`` (``configs/coco/panoptic/m2f_swin_t.yaml`` and its Swin-S/B/L siblings), whose names are
the official facebookresearch Mask2Former names (``tests/data/mask2former_swin_tiny_coco_panoptic_state_dict.txt``).

Two HF naming schemes are accepted, both with the ``model.`` prefix of the ``...ForUniversalSegmentation`` class:

- the files (``facebook/mask2former-swin-*`` on the hub, written by transformers 4.x; ``save_pretrained`` of
  transformers >= 5 writes the same names): the Swin backbone at ``model.pixel_level_module.encoder.{embeddings,
  encoder}.*`` with ``attention.self.query/key/value``, ``attention.output.dense``, ``intermediate.dense``,
  ``output.dense`` (4.x also stored ``relative_position_index``; 5.x adds ``swin.layernorm``);
- the module names of transformers >= 5 (``model.state_dict()``): ``...encoder.swin.{embeddings,encoder}.*`` with
  ``attention.q_proj/k_proj/v_proj/o_proj``, ``attention.relative_position_bias.relative_position_bias_table``,
  ``mlp.fc1/fc2``.

HF stores separate query / key / value projections where we have one fused tensor: Swin's ``attn.qkv`` and the
decoder self-attention's ``in_proj_weight`` / ``in_proj_bias`` are ``cat([q, k, v])`` (the order of
``nn.MultiheadAttention`` and of the official Swin). Everything else is a rename (e.g. ``hidden_states_norms.stage{k}``
-> ``backbone.norm{k-1}``, ``adapter_1.0`` / ``adapter_1.1`` -> ``adapter_1`` / ``adapter_1.norm``,
``queries_features`` -> ``query_feat``, ``queries_embedder`` -> ``query_embed``, ``class_predictor`` ->
``class_embed``, ``mask_embedder.{i}.0`` -> ``mask_embed.layers.{i}``).

Every key is accounted for: a key no rule maps, a fused projection with a part missing and a layer with a tensor
missing are each a ``KeyError`` naming the keys. Not carried over, on purpose: the Swin ``relative_position_index``
buffers (``_STORED_INDEX``: recomputed from the table size, and checked against the stored ones) and, from
transformers >= 5 only, ``swin.layernorm`` (``DROPPED``: the final norm of ``SwinModel``, which ``SwinBackbone``
never applies and the hub files do not hold).

Settings the tensor shapes do not reveal must come from the checkpoint's ``config.json`` into our config: HF's one
``num_attention_heads`` is both ``MODEL.MASK_FORMER.NHEADS`` and
``MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS``, and ``pre_norm`` is ``MODEL.MASK_FORMER.PRE_NORM``
(8, 8 and False in the facebook models, as in our configs).
"""

from __future__ import annotations

import math
import re

import torch

from ..checkpoint import unwrap_state_dict

_SWIN = r"model\.pixel_level_module\.encoder\.(?:swin\.)?"
_BLOCK = _SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\."
_OURS_BLOCK = r"backbone.layers.\1.blocks.\2."
_PIX = r"model\.pixel_level_module\.decoder\."
_OURS_PIX = "sem_seg_head.pixel_decoder."
_DEC = r"model\.transformer_module\.decoder\.layers\.(\d+)\."
_OURS_DEC = "sem_seg_head.predictor."
_PARAM = r"\.(weight|bias)"

# (HF name pattern, our name: a template for match.expand, or a function of the match) renames; patterns are full
# matches, tried in order. The Swin backbone and pixel decoder tables are shared with hf_oneformer_convert.py (HF's
# OneFormer nests the same SwinBackbone and an identically named pixel decoder under model.pixel_level_module)
SWIN_RENAMES = [
    (_SWIN + r"embeddings\.patch_embeddings\.projection" + _PARAM, r"backbone.patch_embed.proj.\1"),
    (_SWIN + r"embeddings\.norm" + _PARAM, r"backbone.patch_embed.norm.\1"),
    (_BLOCK + r"layernorm_before" + _PARAM, _OURS_BLOCK + r"norm1.\3"),
    (_BLOCK + r"layernorm_after" + _PARAM, _OURS_BLOCK + r"norm2.\3"),
    (
        _BLOCK + r"attention\.(?:self|relative_position_bias)\.relative_position_bias_table",
        _OURS_BLOCK + "attn.relative_position_bias_table",
    ),
    (_BLOCK + r"attention\.(?:output\.dense|o_proj)" + _PARAM, _OURS_BLOCK + r"attn.proj.\3"),
    (_BLOCK + r"(?:intermediate\.dense|mlp\.fc1)" + _PARAM, _OURS_BLOCK + r"mlp.fc1.\3"),
    (_BLOCK + r"(?:output\.dense|mlp\.fc2)" + _PARAM, _OURS_BLOCK + r"mlp.fc2.\3"),
    (
        _SWIN + r"encoder\.layers\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)",
        r"backbone.layers.\1.downsample.\2",
    ),
    (
        # the per-stage output norms: stage1..stage4 (SwinBackbone's out_features) are our norm0..norm3
        r"model\.pixel_level_module\.encoder\.hidden_states_norms\.stage(\d+)" + _PARAM,
        lambda m: f"backbone.norm{int(m.group(1)) - 1}.{m.group(2)}",
    ),
]
PIXEL_DECODER_RENAMES = [
    (_PIX + r"level_embed", _OURS_PIX + "transformer.level_embed"),
    (_PIX + r"input_projections\.(\d+)\.([01])" + _PARAM, _OURS_PIX + r"input_proj.\1.\2.\3"),
    (
        _PIX
        + r"encoder\.layers\.(\d+)\.self_attn\.(sampling_offsets|attention_weights|value_proj|output_proj)"
        + _PARAM,
        _OURS_PIX + r"transformer.encoder.layers.\1.self_attn.\2.\3",
    ),
    (
        _PIX + r"encoder\.layers\.(\d+)\.self_attn_layer_norm" + _PARAM,
        _OURS_PIX + r"transformer.encoder.layers.\1.norm1.\2",
    ),
    (_PIX + r"encoder\.layers\.(\d+)\.fc1" + _PARAM, _OURS_PIX + r"transformer.encoder.layers.\1.linear1.\2"),
    (_PIX + r"encoder\.layers\.(\d+)\.fc2" + _PARAM, _OURS_PIX + r"transformer.encoder.layers.\1.linear2.\2"),
    (
        _PIX + r"encoder\.layers\.(\d+)\.final_layer_norm" + _PARAM,
        _OURS_PIX + r"transformer.encoder.layers.\1.norm2.\2",
    ),
    (_PIX + r"mask_projection" + _PARAM, _OURS_PIX + r"mask_features.\1"),
    (_PIX + r"(adapter|layer)_(\d+)\.0" + _PARAM, _OURS_PIX + r"\1_\2.\3"),  # conv (detectron2 Conv2d with norm)
    (_PIX + r"(adapter|layer)_(\d+)\.1" + _PARAM, _OURS_PIX + r"\1_\2.norm.\3"),  # its GroupNorm
]
SWIN_RENAMES = [(re.compile(p), r) for p, r in SWIN_RENAMES]
PIXEL_DECODER_RENAMES = [(re.compile(p), r) for p, r in PIXEL_DECODER_RENAMES]
_RENAMES = [
    (r"model\.transformer_module\.queries_embedder\.weight", _OURS_DEC + "query_embed.weight"),
    (r"model\.transformer_module\.queries_features\.weight", _OURS_DEC + "query_feat.weight"),
    (r"model\.transformer_module\.level_embed\.weight", _OURS_DEC + "level_embed.weight"),
    (r"model\.transformer_module\.input_projections\.(\d+)" + _PARAM, _OURS_DEC + r"input_proj.\1.\2"),
    (_DEC + r"self_attn\.out_proj" + _PARAM, _OURS_DEC + r"transformer_self_attention_layers.\1.self_attn.out_proj.\2"),
    (_DEC + r"self_attn_layer_norm" + _PARAM, _OURS_DEC + r"transformer_self_attention_layers.\1.norm.\2"),
    (
        _DEC + r"cross_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
        _OURS_DEC + r"transformer_cross_attention_layers.\1.multihead_attn.\2",
    ),
    (_DEC + r"cross_attn_layer_norm" + _PARAM, _OURS_DEC + r"transformer_cross_attention_layers.\1.norm.\2"),
    (_DEC + r"fc1" + _PARAM, _OURS_DEC + r"transformer_ffn_layers.\1.linear1.\2"),
    (_DEC + r"fc2" + _PARAM, _OURS_DEC + r"transformer_ffn_layers.\1.linear2.\2"),
    (_DEC + r"final_layer_norm" + _PARAM, _OURS_DEC + r"transformer_ffn_layers.\1.norm.\2"),
    (r"model\.transformer_module\.decoder\.layernorm" + _PARAM, _OURS_DEC + r"decoder_norm.\1"),
    (
        r"model\.transformer_module\.decoder\.mask_predictor\.mask_embedder\.(\d+)\.0" + _PARAM,
        _OURS_DEC + r"mask_embed.layers.\1.\2",
    ),
    (r"class_predictor" + _PARAM, _OURS_DEC + r"class_embed.\1"),
    # the no-object class weight of the CE loss: a buffer in both models (ours is recomputed from the config and never
    # loaded, see SegmentorBase.config_buffer_keys; kept so the key list equals the official checkpoints')
    (r"criterion\.empty_weight", "criterion.empty_weight"),
]
_RENAMES = SWIN_RENAMES + PIXEL_DECODER_RENAMES + [(re.compile(p), r) for p, r in _RENAMES]

# separate q / k / v projections: (HF pattern, our fused name with {param} = "weight" / "bias" and {p} = "_weight" /
# "_bias", which of q / k / v the match is)
SWIN_FUSED = (
    re.compile(_BLOCK + r"attention\.(?:self\.(query|key|value)|([qkv])_proj)" + _PARAM),
    r"backbone.layers.\1.blocks.\2.attn.qkv.{param}",
    lambda m: (m.group(3) or m.group(4))[0],
)
_FUSED = [
    SWIN_FUSED,
    (
        re.compile(_DEC + r"self_attn\.([qkv])_proj" + _PARAM),
        _OURS_DEC + r"transformer_self_attention_layers.\1.self_attn.in_proj{p}",
        lambda m: m.group(2),
    ),
]

# HF keys with no counterpart in our model (everything else must map):
# Swin's relative_position_index: a buffer fully determined by the window size (non-persistent in transformers >= 5,
# stored in the 4.x hub files); ours is recomputed from the table size and compared with the stored one
_STORED_INDEX = re.compile(_BLOCK + r"attention\.(?:self|relative_position_bias)\.relative_position_index")
# SwinModel's final LayerNorm (transformers >= 5 nests a SwinModel in SwinBackbone): SwinBackbone returns the per-stage
# hidden_states_norms instead and never applies it; the hub files do not hold it (transformers lists it in
# SwinBackbone._keys_to_ignore_on_load_missing), so it is random in every HF-loaded model
DROPPED = re.compile(r"model\.pixel_level_module\.encoder\.swin\.layernorm" + _PARAM)

# tensors every unit of our model holds once any of its tensors is present (a truncated file leaves units incomplete);
# in our names, so shared with OneFormer, whose decoder is a Mask2Former decoder
_LN = ("weight", "bias")
UNITS = [
    (
        re.compile(r"(backbone\.layers\.\d+\.blocks\.\d+)\..*"),
        ["norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.qkv.weight", "attn.proj.weight"]
        + ["attn.proj.bias", "attn.relative_position_bias_table", "attn.relative_position_index"]
        + ["mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"],
    ),
    (re.compile(r"(backbone\.layers\.\d+\.downsample)\..*"), ["reduction.weight", "norm.weight", "norm.bias"]),
    (re.compile(r"(backbone\.norm\d+)\..*"), list(_LN)),
    (
        re.compile(r"(sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.\d+)\..*"),
        [
            f"{m}.{p}"
            for m in (
                "self_attn.sampling_offsets",
                "self_attn.attention_weights",
                "self_attn.value_proj",
                "self_attn.output_proj",
                "norm1",
                "linear1",
                "linear2",
                "norm2",
            )
            for p in _LN
        ],
    ),
    (re.compile(r"(sem_seg_head\.pixel_decoder\.input_proj\.\d+)\..*"), ["0.weight", "0.bias", "1.weight", "1.bias"]),
    (
        re.compile(r"(sem_seg_head\.predictor\.transformer_self_attention_layers\.\d+)\..*"),
        ["self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias"]
        + ["norm.weight", "norm.bias"],
    ),
    (
        re.compile(r"(sem_seg_head\.predictor\.transformer_cross_attention_layers\.\d+)\..*"),
        ["multihead_attn.in_proj_weight", "multihead_attn.in_proj_bias", "multihead_attn.out_proj.weight"]
        + ["multihead_attn.out_proj.bias", "norm.weight", "norm.bias"],
    ),
    (
        re.compile(r"(sem_seg_head\.predictor\.transformer_ffn_layers\.\d+)\..*"),
        [f"{m}.{p}" for m in ("linear1", "linear2", "norm") for p in _LN],
    ),
    (re.compile(r"(sem_seg_head\.predictor\.mask_embed\.layers\.\d+)\..*"), list(_LN)),
]
# tensors every Mask2Former with a Swin backbone has (REQUIRED: those OneFormer has too)
REQUIRED = [
    "backbone.patch_embed.proj.weight",
    "sem_seg_head.pixel_decoder.transformer.level_embed",
    "sem_seg_head.pixel_decoder.mask_features.weight",
    "sem_seg_head.predictor.query_embed.weight",
    "sem_seg_head.predictor.level_embed.weight",
    "sem_seg_head.predictor.decoder_norm.weight",
    "sem_seg_head.predictor.class_embed.weight",
    "sem_seg_head.predictor.class_embed.bias",
]
_REQUIRED = REQUIRED + ["sem_seg_head.predictor.query_feat.weight"]
# numbered parts whose indices must run 0..n-1 with no gap: (pattern whose last group is the index, the name of
# part i, with {0} ... the other groups)
NUMBERED = [
    (re.compile(r"backbone\.layers\.(\d+)\..*"), "backbone.layers.{i}"),
    (re.compile(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\..*"), "backbone.layers.{0}.blocks.{i}"),
    (re.compile(r"backbone\.norm(\d+)\..*"), "backbone.norm{i}"),
    (
        re.compile(r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\..*"),
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.{i}",
    ),
    (re.compile(r"sem_seg_head\.pixel_decoder\.input_proj\.(\d+)\..*"), "sem_seg_head.pixel_decoder.input_proj.{i}"),
] + [
    (re.compile(rf"sem_seg_head\.predictor\.{name}\.(\d+)\..*"), f"sem_seg_head.predictor.{name}.{{i}}")
    for name in (
        "transformer_self_attention_layers",
        "transformer_cross_attention_layers",
        "transformer_ffn_layers",
        "mask_embed.layers",
    )
]


def _listing(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _count(items, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def swin_relative_position_index(window_size: int) -> torch.Tensor:
    """[ws*ws, ws*ws] int64: the index into the relative-position table of every (query, key) pair of a window
    (the buffer of :class:`.backbone.swin.WindowAttention`)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return rel[..., 0] * (2 * window_size - 1) + rel[..., 1]


def _check_foreign(sd: dict) -> None:
    if any(k.startswith("model.pixel_level_module.") for k in sd):
        return
    example = _listing(list(sd), 3) if sd else "nothing"
    if any(k.startswith("pixel_level_module.") for k in sd):
        hint = (
            "it is a Mask2FormerModel (no class_predictor); convert the Mask2FormerForUniversalSegmentation checkpoint"
        )
    else:
        hint = "give the model.safetensors / pytorch_model.bin of a facebook/mask2former-swin-* model"
    raise KeyError(
        f"Not a HuggingFace Mask2FormerForUniversalSegmentation state dict: no model.pixel_level_module.* keys "
        f"(found {example}); {hint}."
    )


def convert_hf_mask2former_checkpoint(ckpt: dict) -> dict:
    """A HuggingFace ``Mask2FormerForUniversalSegmentation`` state dict with a Swin backbone (hub or transformers >= 5
    layout, or a dict holding one under "state_dict" / "model") -> our ``UniversalSegmentor`` state dict (official
    Mask2Former names: ``backbone.layers.0.blocks.0.attn.qkv.weight``, ``sem_seg_head.predictor.class_embed.weight``
    ...). Raises KeyError naming the keys when a key is not recognised or the checkpoint is incomplete."""
    sd = unwrap_state_dict(ckpt)
    _check_foreign(sd)
    return convert_hf_state_dict(
        sd,
        "Mask2Former",
        _RENAMES,
        _FUSED,
        _REQUIRED,
        "only the Swin backbone of the facebook/mask2former-swin-* models is supported",
    )


def convert_hf_state_dict(
    sd: dict,
    model: str,
    renames: list,
    fused: list,
    required: list,
    backbone_hint: str,
    units: list = UNITS,
    numbered: list = NUMBERED,
) -> dict:
    """The conversion shared by the HF Mask2Former and OneFormer converters: ``renames`` / ``fused`` (tables as
    ``_RENAMES`` / ``_FUSED``) applied to every key of ``sd``, the Swin relative_position_index buffers recomputed
    and checked, ``DROPPED`` keys left out; the result checked against ``required``, ``units`` and ``numbered``
    (tables as ``UNITS`` / ``NUMBERED``, in our names). ``model`` names the checkpoint in the errors;
    ``backbone_hint`` is added when unknown keys are backbone keys."""
    out, parts, stored_index, unknown = {}, {}, {}, []
    for key, value in sd.items():
        if not _convert_key(key, value, out, parts, stored_index, renames, fused) and not DROPPED.fullmatch(key):
            unknown.append(key)
    if unknown:
        swin = any(k.startswith("model.pixel_level_module.encoder.") for k in unknown)
        hint = f" ({backbone_hint})" if swin else ""
        raise KeyError(
            f"the HuggingFace {model} checkpoint has {_count(unknown, 'key')} with no counterpart in our model"
            f"{hint}: {_listing(unknown)}."
        )
    for name, got in parts.items():
        if len(got) != 3:
            raise KeyError(
                f"the checkpoint has only part of the query / key / value projections fused into {name} "
                f"({_listing(key for key, _ in got.values())}): it is truncated or not a HuggingFace {model} one."
            )
        out[name] = torch.cat([torch.as_tensor(got[i][1]) for i in range(3)], dim=0)
    for name in [k for k in out if k.endswith("attn.relative_position_bias_table")]:
        index_name = name.replace("relative_position_bias_table", "relative_position_index")
        window = (math.isqrt(out[name].shape[0]) + 1) // 2
        out[index_name] = swin_relative_position_index(window)
        key, stored = stored_index.pop(index_name, (None, None))
        if key is not None and not torch.equal(torch.as_tensor(stored).reshape(-1).long(), out[index_name].reshape(-1)):
            raise KeyError(f"{key} is not the relative-position index of a {window}x{window} window.")
    if stored_index:
        unmatched = _listing(key for key, _ in stored_index.values())
        raise KeyError(f"the checkpoint has relative_position_index buffers without their tables: {unmatched}.")
    _check_complete(out, required, model, units, numbered)
    return out


def _convert_key(key: str, value, out: dict, parts: dict, stored_index: dict, renames: list, fused: list) -> bool:
    """Renames ``key`` into ``out``, collects it for fusion in ``parts`` or keeps it in ``stored_index`` (a stored
    relative_position_index, by our name); False for a key no rule knows."""
    for pattern, target in renames:
        m = pattern.fullmatch(key)
        if m:
            out[target(m) if callable(target) else m.expand(target)] = value
            return True
    for pattern, target, part in fused:
        m = pattern.fullmatch(key)
        if m:
            param = m.groups()[-1]
            parts.setdefault(m.expand(target).format(param=param, p="_" + param), {})["qkv".index(part(m))] = (
                key,
                value,
            )
            return True
    m = _STORED_INDEX.fullmatch(key)
    if m:
        stored_index[f"backbone.layers.{m.group(1)}.blocks.{m.group(2)}.attn.relative_position_index"] = (key, value)
        return True
    return False


def _check_complete(out: dict, required: list, model: str, units_of: list, numbered: list) -> None:
    """KeyError naming our tensors that a truncated checkpoint leaves out (``required``, and see UNITS, NUMBERED)."""
    missing = [k for k in required if k not in out]
    units = {}
    for key in out:
        for pattern, members in units_of:
            m = pattern.fullmatch(key)
            if m:
                units[m.group(1)] = members
                break
    missing += [
        f"{unit}.{member}" for unit, members in units.items() for member in members if f"{unit}.{member}" not in out
    ]
    for pattern, template in numbered:
        indices = {}
        for key in out:
            m = pattern.fullmatch(key)
            if m:
                indices.setdefault(m.groups()[:-1], set()).add(int(m.groups()[-1]))
        for parent, found in indices.items():
            gaps = sorted(set(range(max(found) + 1)) - found)
            missing += [template.format(*parent, i=i) + ".*" for i in gaps]
    if missing:
        raise KeyError(
            f"the HuggingFace {model} checkpoint is incomplete (truncated?): {_count(missing, 'tensor')} of our "
            f"model not in it: {_listing(missing)}."
        )
