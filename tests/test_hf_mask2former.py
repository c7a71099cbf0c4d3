"""HuggingFace transformers Mask2Former checkpoints (Mask2FormerForUniversalSegmentation, Swin backbone): the converted
state dict loads strictly into our model, and transformers, the independent oracle, computes the same class and mask
logits from the same pixels (randomly initialised models with non-trivial norm and bias parameters, so a swapped or
mis-fused tensor shows)."""

import math
import sys

import pytest
import torch
import transformers
from conftest import ROOT
from hf_tiny import (
    DEC_LAYERS,
    DIM,
    NUM_CLASSES,
    QUERIES,
    TINY_DECODER,
    TINY_OVERRIDES,
    TINY_SWIN_ARGS,
    build_ours,
    hf_config,
    max_diff,
    randomise,
)

import universal_seg.modeling  # noqa: F401
from universal_seg.checkpoint import UniversalSegCheckpointer
from universal_seg.modeling.backbone import swin
from universal_seg.modeling.hf_mask2former_convert import convert_hf_mask2former_checkpoint

sys.path.insert(0, str(ROOT / "tools"))
REF = ROOT / "tests" / "data" / "mask2former_swin_tiny_coco_panoptic_state_dict.txt"
CONFIG = "configs/coco/panoptic/m2f_swin_t.yaml"


@pytest.fixture(scope="module")
def hf_tiny():
    torch.manual_seed(0)
    config = hf_config(
        transformers.Mask2FormerConfig,
        *TINY_SWIN_ARGS,
        **TINY_DECODER,
        feature_size=DIM,
        mask_feature_size=DIM,
    )
    return randomise(transformers.Mask2FormerForUniversalSegmentation(config).eval())


def _build_ours(*opts):
    return build_ours(CONFIG, *TINY_OVERRIDES, *opts)


def _hf_outputs(hf, x):
    with torch.no_grad():
        out = hf(pixel_values=x, output_auxiliary_logits=True)
    aux = [(a["class_queries_logits"], a["masks_queries_logits"]) for a in out.auxiliary_logits]
    return out.class_queries_logits, out.masks_queries_logits, aux


def _our_outputs(model, x):
    with torch.no_grad():
        out = model.sem_seg_head(model.backbone(x))
    aux = [(a["pred_logits"], a["pred_masks"]) for a in out["aux_outputs"]]
    return out["pred_logits"], out["pred_masks"], aux


@pytest.mark.parametrize("hw", [(128, 160), (97, 131)])  # 97 x 131: no multiple of 32 (nor of the patch size 4)
def test_outputs_equal_huggingface(hf_tiny, tmp_path, hw):
    """The tool's .pkl of transformers' own model.safetensors loads strictly (MODEL.WEIGHTS' checkpointer), and class
    logits [B, Q, K+1] and mask logits [B, Q, ceil(H/4), ceil(W/4)] equal transformers' for the final layer (eval)
    and for every auxiliary layer (train mode, dropout and drop-path 0, where our decoder computes the intermediate
    masks in HF's order). Measured: at most 2e-5 on mask logits of standard deviation 2.7 (float32 rounding).

    Both implementations pad the same way at any size (patch embedding to a multiple of 4, windows to a multiple of
    the window size, patch merging to even sizes; transformers' SwinBackbone always partitions windows, as the
    official Swin does), so a size that is no multiple of 32 gives the same outputs too. In eval mode our decoder
    computes the attention masks of the intermediate layers as embed . resize(mask_features) instead of
    resize(embed . mask_features) and thresholds logit < 0 instead of sigmoid < 0.5: mathematically the same mask;
    a logit within rounding of 0 could flip one pixel of one query's attention mask, which these inputs do not hit.
    """
    from convert_hf_mask2former import convert_file

    hf_tiny.save_pretrained(tmp_path)  # the file a user has: hub names (transformers renames them back on saving)
    obj = convert_file(str(tmp_path / "model.safetensors"), str(tmp_path / "m2f.pkl"))
    assert obj["matching_heuristics"] is False
    model = _build_ours()
    UniversalSegCheckpointer(model).load(str(tmp_path / "m2f.pkl"))  # strict: no missing / unexpected tensors
    state = model.state_dict()
    assert all(torch.equal(torch.as_tensor(obj["model"][k]), state[k]) for k in obj["model"] if k in state)

    torch.manual_seed(1)
    x = torch.randn(2, 3, *hw)
    expected = _hf_outputs(hf_tiny, x)
    got = _our_outputs(model, x)
    h4, w4 = -(-hw[0] // 4), -(-hw[1] // 4)
    assert got[0].shape == (2, QUERIES, NUM_CLASSES + 1) and got[1].shape == (2, QUERIES, h4, w4)
    assert expected[1].std() > 1.0 and expected[0].std() > 0.1  # outputs far from trivial
    assert max_diff(got[0], expected[0]) <= 1e-4
    assert max_diff(got[1], expected[1]) <= 1e-4

    model.train()
    got = _our_outputs(model, x)
    assert len(got[2]) == len(expected[2]) == DEC_LAYERS - 1
    for (gc, gm), (ec, em) in zip(got[2] + [got[:2]], expected[2] + [expected[:2]]):
        assert max_diff(gc, ec) <= 1e-4
        assert max_diff(gm, em) <= 1e-4


def _hub_layout(sd: dict) -> dict:
    """The names of the hub files (transformers 4.x SwinBackbone) from transformers >= 5 module names: what
    transformers' own load-time renaming maps from, inverted by hand; the 4.x files also store
    relative_position_index (and lack SwinModel's final norm)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("model.pixel_level_module.encoder.swin.layernorm."):
            continue  # SwinModel's final norm, absent from the 4.x SwinBackbone
        k = k.replace("model.pixel_level_module.encoder.swin.", "model.pixel_level_module.encoder.")
        for new, old in [
            ("attention.q_proj", "attention.self.query"),
            ("attention.k_proj", "attention.self.key"),
            ("attention.v_proj", "attention.self.value"),
            ("attention.o_proj", "attention.output.dense"),
            ("attention.relative_position_bias.", "attention.self."),
            ("mlp.fc1", "intermediate.dense"),
            ("mlp.fc2", "output.dense"),
        ]:
            if ".blocks." in k:
                k = k.replace(new, old)
        out[k] = v
        if k.endswith("relative_position_bias_table"):
            ws = (math.isqrt(v.shape[0]) + 1) // 2
            index = swin.WindowAttention(v.shape[1] * 2, ws, v.shape[1]).relative_position_index
            out[k.replace("relative_position_bias_table", "relative_position_index")] = index
    return out


def test_hub_layout_converts_to_the_same_weights(hf_tiny):
    """A 4.x hub file and the module names of transformers >= 5 (model.state_dict()) give the same weights."""
    new = hf_tiny.state_dict()
    hub = _hub_layout(new)
    assert "model.pixel_level_module.encoder.encoder.layers.0.blocks.0.attention.self.query.weight" in hub
    a, b = convert_hf_mask2former_checkpoint(new), convert_hf_mask2former_checkpoint(hub)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_full_size_swin_tiny_names_and_shapes_equal_the_official_checkpoint():
    """facebook/mask2former-swin-tiny-coco-panoptic's architecture (built on the meta device: no memory, no init)
    converts to exactly the official key list and shapes of configs/coco/panoptic/m2f_swin_t.yaml's model."""
    config = hf_config(transformers.Mask2FormerConfig, 96, (2, 2, 6, 2), (3, 6, 12, 24), 7, num_labels=133)
    with torch.device("meta"):
        hf = transformers.Mask2FormerForUniversalSegmentation(config)
    converted = convert_hf_mask2former_checkpoint(hf.state_dict())
    lines = [line.split("\t") for line in REF.read_text().splitlines() if not line.startswith("#")]
    ref = {k: [int(n) for n in shape.split("x")] for k, shape in lines}
    assert set(converted) == set(ref)
    assert all(list(converted[k].shape) == ref[k] for k in ref)


def test_foreign_and_truncated_state_dicts_are_refused(hf_tiny):
    sd = hf_tiny.state_dict()
    with pytest.raises(KeyError, match=r"Not a HuggingFace Mask2FormerForUniversalSegmentation state dict"):
        convert_hf_mask2former_checkpoint({"backbone.patch_embed.proj.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match=r"it is a Mask2FormerModel \(no class_predictor\)"):
        convert_hf_mask2former_checkpoint({k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")})

    truncated = dict(list(sd.items())[: len(sd) // 2])  # a file cut in the middle of the pixel decoder
    with pytest.raises(KeyError, match=r"incomplete \(truncated\?\): \d+ tensors of our model not in it: "):
        convert_hf_mask2former_checkpoint(truncated)
    without = {k: v for k, v in sd.items() if not k.startswith("class_predictor.")}
    with pytest.raises(KeyError, match=r"sem_seg_head\.predictor\.class_embed\.bias"):
        convert_hf_mask2former_checkpoint(without)
    key = "model.transformer_module.decoder.layers.2.self_attn.k_proj.weight"
    with pytest.raises(KeyError, match=r"only part of the query / key / value .*transformer_self_attention_layers\.2"):
        convert_hf_mask2former_checkpoint({k: v for k, v in sd.items() if k != key})
    layer = "model.transformer_module.decoder.layers.1."
    with pytest.raises(KeyError, match=r"transformer_ffn_layers\.1\.\*"):
        convert_hf_mask2former_checkpoint({k: v for k, v in sd.items() if not k.startswith(layer)})
    with pytest.raises(KeyError, match=r"has 1 key with no counterpart in our model: model\.transformer_module\.extra"):
        convert_hf_mask2former_checkpoint({**sd, "model.transformer_module.extra": torch.zeros(1)})
    resnet = {**sd, "model.pixel_level_module.encoder.embedder.conv.weight": torch.zeros(1)}
    with pytest.raises(KeyError, match=r"only the Swin backbone"):
        convert_hf_mask2former_checkpoint(resnet)


def test_the_tool_refuses_a_foreign_or_corrupt_file_in_one_line(tmp_path, capsys):
    """Before: tools/convert_hf_*.py ended in a KeyError or safetensors traceback for a file of another model or a
    damaged one. Now: ``error: <file>: <why>`` and exit status 2, no output file."""
    import importlib.util

    from universal_seg.checkpoint import converter_main

    spec = importlib.util.spec_from_file_location("_convert_hf_m2f", ROOT / "tools" / "convert_hf_mask2former.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    foreign, corrupt, out = tmp_path / "foreign.pth", tmp_path / "cut.safetensors", tmp_path / "out.pkl"
    torch.save({"foo.bar": torch.zeros(1)}, foreign)
    corrupt.write_bytes(b"not a safetensors file")
    for path, why in [(foreign, "no model.pixel_level_module.* keys"), (corrupt, "header")]:
        with pytest.raises(SystemExit) as stop:
            converter_main("test", tool.convert_file, "input", [str(path), str(out)])
        lines = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and why in lines[0]
        assert not out.exists()
