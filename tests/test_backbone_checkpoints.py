"""Backbones against independent truth: torchvision ResNet, the official Mask2Former Swin key list,
HuggingFace transformers SegFormer, timm ViT and timm EfficientFormerV2 (all randomly initialised)."""

import pickle
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torchvision
import transformers
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from universal_seg.modeling.backbone import (
    MixVisionTransformer,
    SwinTransformer,
    add_backbone_config,
    checkpoint_filter_vit,
    convert_mit_checkpoint,
    efficientformerv2,
    vit,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
REF = Path(__file__).resolve().parent / "data" / "mask2former_swin_tiny_coco_panoptic_state_dict.txt"


def _randomize_bn(model, gen):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


@pytest.mark.parametrize("depth", [50, 101])
def test_torchvision_resnet_converts_to_d2(tmp_path, depth):
    from convert_torchvision_to_d2 import convert_file

    gen = torch.Generator().manual_seed(0)
    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    with torch.no_grad():
        _randomize_bn(tv, gen)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    obj = convert_file(str(tmp_path / "tv.pth"), str(tmp_path / "d2.pkl"))
    assert obj["__author__"] and obj["matching_heuristics"] is True
    with open(tmp_path / "d2.pkl", "rb") as f:
        assert set(pickle.load(f)["model"]) == set(obj["model"])

    cfg = get_cfg()
    add_backbone_config(cfg)
    cfg.MODEL.BACKBONE.NAME, cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.STRIDE_IN_1X1 = "ResNetBackbone", depth, False
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    d2 = build_backbone(cfg, ShapeSpec(channels=3)).eval()
    result = d2.load_state_dict({k: torch.from_numpy(v) for k, v in obj["model"].items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    # the .pkl through detectron2's checkpointer (matching heuristics add the "backbone." prefix)
    holder = nn.Module()
    holder.backbone = build_backbone(cfg, ShapeSpec(channels=3)).eval()
    DetectionCheckpointer(holder).load(str(tmp_path / "d2.pkl"))
    for k, v in d2.state_dict().items():
        assert torch.equal(holder.backbone.state_dict()[k], v), k

    if depth == 101:
        return  # features compared on ResNet-50 only (runtime)
    x = torch.randn(2, 3, 96, 160, generator=gen)
    with torch.no_grad():
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        ref = {}
        for i, layer in enumerate([tv.layer1, tv.layer2, tv.layer3, tv.layer4]):
            y = layer(y)
            ref[f"res{i + 2}"] = y
        out = d2(x)
    for k in ref:
        assert out[k].shape == ref[k].shape
        torch.testing.assert_close(out[k], ref[k], rtol=1e-4, atol=1e-4 * ref[k].abs().max().item())


def _reference_backbone_keys():
    keys = {}
    for line in REF.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        k, shape = line.split("\t")
        if k.startswith("backbone."):
            keys[k] = shape
    return keys


def test_swin_t_names_and_shapes_equal_official_mask2former():
    cfg = get_cfg()
    add_backbone_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "SwinTransformerBackbone"
    model = build_backbone(cfg, ShapeSpec(channels=3))
    ours = {f"backbone.{k}": "x".join(map(str, v.shape)) for k, v in model.state_dict().items()}
    ref = _reference_backbone_keys()
    assert len(ref) == 189
    assert ours == ref


def test_swin_imagenet_converter_drops_head_and_loads(tmp_path):
    from convert_swin_to_d2 import convert_file

    model = SwinTransformer(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
    # an official-style ImageNet checkpoint: no per-level norms, a final norm, a classifier, stored masks
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("norm")}
    sd.update(
        {
            "norm.weight": torch.ones(256),
            "norm.bias": torch.zeros(256),
            "head.weight": torch.zeros(10, 256),
            "head.bias": torch.zeros(10),
            "layers.0.blocks.1.attn_mask": torch.zeros(64, 49, 49),
        }
    )
    torch.save({"model": sd}, tmp_path / "swin.pth")
    obj = convert_file(str(tmp_path / "swin.pth"), str(tmp_path / "swin.pkl"))
    assert obj["matching_heuristics"] is True
    result = model.load_state_dict({k: torch.from_numpy(v) for k, v in obj["model"].items()}, strict=False)
    assert not result.unexpected_keys
    assert sorted(result.missing_keys) == sorted(f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias"))


def _hf_segformer():
    config = transformers.SegformerConfig()  # MiT-B0 sizes
    assert list(config.hidden_sizes) == [32, 64, 160, 256] and list(config.depths) == [2, 2, 2, 2]
    return transformers.SegformerModel(config).eval()


def test_mit_b0_equals_huggingface_segformer(tmp_path):
    from convert_segformer import convert_file

    torch.manual_seed(0)
    hf = _hf_segformer()
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        for m in hf.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    torch.save(hf.state_dict(), tmp_path / "hf.pth")
    obj = convert_file(str(tmp_path / "hf.pth"), str(tmp_path / "mit.pkl"))
    ours = MixVisionTransformer(norm_eps=1e-5).eval()  # transformers' LayerNorms use the default eps 1e-5
    result = ours.load_state_dict({k: torch.from_numpy(v) for k, v in obj["model"].items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for hw in [(128, 160), (97, 131)]:
        x = torch.randn(2, 3, *hw)
        with torch.no_grad():
            hidden = hf(x, output_hidden_states=True).hidden_states
            out = ours(x)
        assert len(hidden) == 4
        for k, h in zip(["res2", "res3", "res4", "res5"], hidden):
            assert out[k].shape == h.shape
            assert (out[k] - h).abs().max().item() <= 1e-5


def test_mit_converter_accepts_nvlabs_layouts():
    ours = MixVisionTransformer()
    sd = ours.state_dict()
    imagenet = dict(sd, **{"head.weight": torch.zeros(1000, 256), "head.bias": torch.zeros(1000)})
    full = {
        "state_dict": {
            **{f"backbone.{k}": v for k, v in sd.items()},
            "decode_head.linear_pred.weight": torch.zeros(150, 256, 1, 1),
        }
    }
    for ckpt in (imagenet, full):
        conv = convert_mit_checkpoint(ckpt)
        assert set(conv) == set(sd)
        assert all(conv[k] is sd[k] for k in sd)
    with pytest.raises(KeyError, match="Not a MiT"):
        convert_mit_checkpoint({"conv1.weight": torch.zeros(1)})


def test_mit_converter_accepts_hub_huggingface_names():
    """The HF hub layout (segformer.encoder.block.{i}.{j}.attention.self.key ..., the names transformers' own
    load-time renaming table maps from) converts to the same weights as the transformers>=5 layout."""
    import re

    new = _hf_segformer().state_dict()
    # invert transformers' hub->v5 renaming by hand-written inverse patterns
    inverse = [
        (r"stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1."),
        (r"stages\.(\d+)\.blocks\.", r"encoder.block.\1."),
        (r"stages\.(\d+)\.layer_norm", r"encoder.layer_norm.\1"),
        ("attention.q_proj", "attention.self.query"),
        ("attention.k_proj", "attention.self.key"),
        ("attention.v_proj", "attention.self.value"),
        ("attention.sequence_reduction.sequence_reduction", "attention.self.sr"),
        ("attention.sequence_reduction.layer_norm", "attention.self.layer_norm"),
        ("attention.o_proj", "attention.output.dense"),
        ("mlp.fc1", "mlp.dense1"),
        ("mlp.fc2", "mlp.dense2"),
        ("layernorm_before", "layer_norm_1"),
        ("layernorm_after", "layer_norm_2"),
    ]
    old = {}
    for k, v in new.items():
        for pat, rep in inverse:
            k = re.sub(pat, rep, k)
        old["segformer." + k] = v
    a, b = convert_mit_checkpoint(new), convert_mit_checkpoint(old)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def timm_vit_tiny():
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True, dynamic_img_pad=True
    ).eval()


@pytest.mark.parametrize("hw", [(224, 224), (160, 288), (250, 333)])
def test_vit_tiny_equals_timm_forward_intermediates(timm_vit_tiny, hw):
    ours = vit("T", out_indices=(3, 11), feature_pyramid=False, drop_path_rate=0.0, out_norm=True).eval()
    result = ours.load_state_dict(checkpoint_filter_vit(timm_vit_tiny.state_dict(), ours), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        ref = timm_vit_tiny.forward_intermediates(x, indices=[3, 11], norm=True, intermediates_only=True)
        out = ours(x)
    for r, k in zip(ref, ["layer3", "layer11"]):
        assert out[k].shape == r.shape == (1, 192, -(-hw[0] // 16), -(-hw[1] // 16))
        assert (out[k] - r).abs().max().item() <= 1e-5


def _effv2_s0_with_biases():
    """Our S0 backbone with non-zero attention biases and batch-norm statistics (timm zero-initialises the biases)."""
    torch.manual_seed(0)
    ours = efficientformerv2("S0").eval()
    with torch.no_grad():
        for name, p in ours.model.named_parameters():
            if "attention_biases" in name:
                p.normal_()
    _randomize_bn(ours, torch.Generator().manual_seed(1))
    return ours


def test_efficientformerv2_equals_timm_at_224():
    ours = _effv2_s0_with_biases()
    ref = timm.create_model("efficientformerv2_s0", features_only=True, pretrained=False).eval()
    result = ref.load_state_dict(ours.model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours(torch.randn(1, 3, 256, 320))  # a run at another size first: it must leave no state behind
        out, r = ours(x), ref(x)
    for k, y in zip(["res2", "res3", "res4", "res5"], r):
        assert out[k].shape == y.shape
        assert (out[k] - y).abs().max().item() <= 1e-5


def test_efficientformerv2_other_size_equals_timm_built_for_it():
    """At 256x320 the 224-sized bias tables ([heads, 7*7] / [heads, 14*14]) are resized bicubically to the new
    grids (8x10 / 16x20): the result equals timm's model built for 256x320 (its own bias lookup for that grid)
    holding the same weights and the tables resized here with F.interpolate."""
    import torch.nn.functional as F

    ours = _effv2_s0_with_biases()
    ref = timm.create_model("efficientformerv2_s0", features_only=True, pretrained=False, img_size=(256, 320)).eval()
    ref_shapes = {k: v.shape for k, v in ref.state_dict().items()}
    state = {}
    for k, v in ours.model.state_dict().items():
        if k.endswith("attention_biases"):
            side = {49: 7, 196: 14}[v.shape[1]]
            grid = {7: (8, 10), 14: (16, 20)}[side]
            v = F.interpolate(v.reshape(1, -1, side, side), size=grid, mode="bicubic", align_corners=False)
            v = v.reshape(v.shape[1], -1)
        state[k] = v
    assert {k: v.shape for k, v in state.items()} == ref_shapes
    ref.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 256, 320)
    with torch.no_grad():
        out, r = ours(x), ref(x)
    for k, y in zip(["res2", "res3", "res4", "res5"], r):
        assert out[k].shape == y.shape
        assert (out[k] - y).abs().max().item() <= 1e-5
    assert out["res5"].shape == (2, 176, 8, 10)


def test_efficientformerv2_attention_layers_are_ours_and_keep_timm_names():
    from timm.models import efficientformer_v2 as effv2

    from universal_seg.modeling.backbone.efficientformerv2 import ResizableAttention2d, ResizableAttention2dDownsample

    ours = efficientformerv2("S0")
    kinds = {n: type(m) for n, m in ours.model.named_modules()}
    assert not any(issubclass(t, (effv2.Attention2d, effv2.Attention2dDownsample)) for t in kinds.values())
    assert kinds["stages_3.downsample.attn"] is ResizableAttention2dDownsample
    assert [n for n, t in kinds.items() if t is ResizableAttention2d] == [
        "stages_2.blocks.4.token_mixer",
        "stages_2.blocks.5.token_mixer",
        "stages_3.blocks.2.token_mixer",
        "stages_3.blocks.3.token_mixer",
    ]
    import timm

    ref = timm.create_model("efficientformerv2_s0", features_only=True, pretrained=False)
    assert [(k, v.shape) for k, v in ours.model.state_dict().items()] == [
        (k, v.shape) for k, v in ref.state_dict().items()
    ]
    assert [(k, v.shape) for k, v in ours.model.named_buffers()] == [(k, v.shape) for k, v in ref.named_buffers()]
