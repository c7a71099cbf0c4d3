"""StructToken: slice attention against a direct computation, the CSE / SSE / PWE wiring, parameter counts of the
semantic ViT heads against the paper's block recipe counted by hand, and every variant x mode (semantic per-pixel
head, universal mask-classification decoder) building, training one step and inferring on CPU at 128 x 128."""

import math
from pathlib import Path

import pytest
import torch
from conftest import load_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Instances
from torch import nn

import universal_seg.data  # noqa: F401
import universal_seg.modeling  # noqa: F401
from universal_seg.modeling.meta_arch import PerPixelSegmentor, UniversalSegmentor
from universal_seg.modeling.transformer_decoder.structtoken import (
    CrossSliceExtraction,
    SelfSliceExtraction,
    StructTokenHead,
    slice_attention,
)
from universal_seg.modeling.transformer_decoder.structtoken.universal_decoder import masked_average

ROOT = Path(__file__).resolve().parents[1]
SEMANTIC = "configs/mini/semantic/structtoken_pwe_vit_t.yaml"
PANOPTIC = "configs/mini/panoptic/structtoken_pwe_r18.yaml"
VARIANTS = ("CSE", "SSE", "PWE")


# ------------------------------------------------------------------------------------------- slice attention
def direct_slice_attention(q, k, v):
    """softmax(q k^T / sqrt(N)) v with explicit loops over channels: q [Cq, N], k / v [Ck, N] -> [Cq, N]."""
    n = q.shape[1]
    out = torch.zeros_like(q)
    for i in range(q.shape[0]):
        scores = [sum(float(q[i, p]) * float(k[j, p]) for p in range(n)) / math.sqrt(n) for j in range(k.shape[0])]
        e = [math.exp(s - max(scores)) for s in scores]
        weights = [x / sum(e) for x in e]
        for p in range(n):
            out[i, p] = sum(w * float(v[j, p]) for j, w in enumerate(weights))
    return out


def test_slice_attention_hand_case():
    # N = 4 pixels: q . k = 2 for the matching channel and 0 otherwise, / sqrt(4) -> scores (1, 0)
    q = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]).view(1, 2, 2, 2)
    k = q.clone()
    v = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]).view(1, 2, 2, 2)
    a = math.e / (math.e + 1)
    expected = torch.stack([a * v[0, 0] + (1 - a) * v[0, 1], (1 - a) * v[0, 0] + a * v[0, 1]])
    torch.testing.assert_close(slice_attention(q, k, v)[0], expected)


def test_slice_attention_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, c, 3, 2, generator=g, dtype=torch.float64) for c in (3, 5, 5))
    got = slice_attention(q, k, v)
    for b in range(2):
        want = direct_slice_attention(q[b].flatten(1), k[b].flatten(1), v[b].flatten(1)).view(3, 3, 2)
        torch.testing.assert_close(got[b], want)


def _identity_projections(module, names):
    for n in names:
        setattr(module, n, nn.Identity())
    return module.eval()


def test_cse_is_token_query_feature_key_value_attention():
    s, f = torch.randn(1, 3, 2, 3, dtype=torch.float64), torch.randn(1, 4, 2, 3, dtype=torch.float64)
    cse = _identity_projections(CrossSliceExtraction(3, 4).double(), ("q", "k", "v", "out"))
    s_out, f_out = cse(s, f)
    want = s[0].flatten(1) + direct_slice_attention(s[0].flatten(1), f[0].flatten(1), f[0].flatten(1))
    torch.testing.assert_close(s_out[0].flatten(1), want)
    torch.testing.assert_close(f_out, f)


def test_sse_is_self_attention_over_concatenated_slices():
    s, f = torch.randn(1, 3, 2, 3, dtype=torch.float64), torch.randn(1, 4, 2, 3, dtype=torch.float64)
    sse = _identity_projections(SelfSliceExtraction(3, 4).double(), ("q", "k", "v", "out"))
    s_out, f_out = sse(s, f)
    x = torch.cat([s, f], 1)[0].flatten(1)
    want = x + direct_slice_attention(x, x, x)
    torch.testing.assert_close(torch.cat([s_out, f_out], 1)[0].flatten(1), want)
    assert s_out.shape == s.shape and f_out.shape == f.shape


def test_masked_average_weights_features_by_sigmoid_masks():
    masks = torch.tensor([[[[100.0, -100.0], [-100.0, -100.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # [1, 2, 2, 2]
    feats = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # [1, 1, 2, 2]
    torch.testing.assert_close(masked_average(masks, feats), torch.tensor([[[1.0], [2.5]]]), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------- parameter counts
def conv(cin, cout, k=1, groups=1):
    return cin // groups * cout * k * k + cout


def projection(c):  # 1x1, LN, 3x3 depthwise, LN, 1x1, LN
    return conv(c, c) + 2 * c + conv(c, c, 3, c) + 2 * c + conv(c, c) + 2 * c


def ffn(c):  # 1x1 c -> 4c, LN, 3x3 groups=c, LN, 1x1 4c -> c, LN
    return conv(c, 4 * c) + 8 * c + conv(4 * c, 4 * c, 3, c) + 8 * c + conv(4 * c, c) + 2 * c


def interaction(name, k, c):
    d = k + c
    return {
        "CSE": 2 * projection(k) + 2 * projection(c),
        "SSE": 4 * projection(d),
        "PWE": 2 * projection(d) + conv(d, d),
    }[name]


def expected_head_params(name, in_channels, channels, num_classes, token_hw, blocks=4):
    refine = 2 * (2 * num_classes + conv(num_classes, num_classes, 3))
    return (
        conv(in_channels, channels)
        + num_classes * token_hw[0] * token_hw[1]
        + blocks * (interaction(name, num_classes, channels) + ffn(num_classes))
        + (blocks - 1) * ffn(channels)
        + refine
    )  # the last block's features are never read, so it has no FFN on them


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("vit", ["t", "s", "b", "l"])
def test_semantic_head_param_count(variant, vit):
    cfg = load_cfg(f"configs/ade20k/semantic/structtoken_{variant.lower()}_vit_{vit}.yaml")
    dim = {"t": 192, "s": 384, "b": 768, "l": 1024}[vit]
    feature = cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES[0]
    from detectron2.layers import ShapeSpec

    head = StructTokenHead(cfg, {feature: ShapeSpec(channels=dim, stride=16)})
    hw = (40, 40) if vit == "l" else (32, 32)
    assert sum(p.numel() for p in head.parameters()) == expected_head_params(variant, dim, dim, 150, hw)


# ------------------------------------------------------------------------------------------- end to end
def _inputs(size=128, classes=(0, 7)):
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)
    sem = torch.full((size, size), classes[0], dtype=torch.long)
    sem[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = classes[1]
    sem[:4] = 255
    inst = Instances((size, size))
    inst.gt_classes = torch.tensor(classes)
    inst.gt_masks = torch.stack([sem == c for c in classes])
    return {"image": image, "sem_seg": sem, "instances": inst, "height": size, "width": size}


def _train_step(model, x):
    model.train()
    losses = model([x])
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    grads = [p.grad for p in model.sem_seg_head.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    return losses


@pytest.mark.parametrize("variant", VARIANTS)
def test_semantic_mode_trains_and_infers(variant):
    torch.manual_seed(0)
    model = build_model(load_cfg(SEMANTIC, "MODEL.STRUCTTOKEN.INTERACTION", variant))
    assert isinstance(model.sem_seg_head, StructTokenHead) and isinstance(model, PerPixelSegmentor)
    assert set(_train_step(model, _inputs())) == {"loss_sem_seg"}
    model.eval()
    with torch.no_grad():
        out = model([_inputs()])[0]
    assert set(out) == {"sem_seg"} and out["sem_seg"].shape == (21, 128, 128)
    torch.testing.assert_close(out["sem_seg"].sum(0), torch.ones(128, 128))


def test_semantic_head_on_pixel_decoder_features():
    cfg = load_cfg(
        PANOPTIC,
        "MODEL.META_ARCHITECTURE",
        "PerPixelSegmentor",
        "MODEL.SEM_SEG_HEAD.NAME",
        "StructTokenHead",
        "MODEL.STRUCTTOKEN.FEATURE_SOURCE",
        "pixel_decoder",
        "MODEL.STRUCTTOKEN.INTERACTION",
        "CSE",
        "MODEL.MASK_FORMER.TEST.PANOPTIC_ON",
        "False",
        "MODEL.MASK_FORMER.TEST.INSTANCE_ON",
        "False",
    )
    model = build_model(cfg)
    assert isinstance(model, PerPixelSegmentor) and model.sem_seg_head.pixel_decoder is not None
    _train_step(model, _inputs())
    model.eval()
    with torch.no_grad():
        logits = model.sem_seg_head(model.backbone(torch.zeros(1, 3, 128, 128)))["sem_seg_logits"]
    assert logits.shape == (1, 21, 32, 32)  # the mask features' stride 4


@pytest.mark.parametrize("variant", VARIANTS)
def test_universal_mode_trains_and_infers_panoptic(variant):
    torch.manual_seed(0)
    cfg = load_cfg(
        PANOPTIC,
        "MODEL.STRUCTTOKEN.INTERACTION",
        variant,
        "MODEL.MASK_FORMER.TRAIN_NUM_POINTS",
        "1024",
        "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD",
        "0.0",
        "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD",
        "0.0",
    )
    model = build_model(cfg)
    assert isinstance(model, UniversalSegmentor)
    losses = _train_step(model, _inputs())
    blocks = cfg.MODEL.STRUCTTOKEN.NUM_BLOCKS
    assert {f"loss_dice_{i}" for i in range(blocks)} | {"loss_ce", "loss_mask", "loss_dice"} <= set(losses)

    model.eval()
    predictor = model.sem_seg_head.predictor
    with torch.no_grad():
        raw = model.sem_seg_head(model.backbone(torch.zeros(1, 3, 128, 128)))
        assert raw["pred_logits"].shape == (1, 20, 22) and raw["pred_masks"].shape == (1, 20, 32, 32)
        assert raw["aux_outputs"] == []
        # every token's mask on everywhere, so the panoptic post-processing must produce segments
        predictor.refine.layers[-1].bias.fill_(10.0)
        out = model([_inputs()])[0]
    assert out["sem_seg"].shape == (21, 128, 128)
    assert len(out["instances"]) > 0 and out["instances"].pred_masks.shape[-2:] == (128, 128)
    pan, segments = out["panoptic_seg"]
    assert pan.shape == (128, 128) and pan.dtype == torch.int32 and segments
    thing_ids = set(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_dataset_id_to_contiguous_id.values())
    assert [s["id"] for s in segments] == list(range(1, len(segments) + 1))
    assert set(torch.unique(pan).tolist()) - {0} == {s["id"] for s in segments}
    for s in segments:
        assert 0 <= s["category_id"] < 21 and s["isthing"] == (s["category_id"] in thing_ids)


def test_universal_decoder_training_outputs_one_prediction_per_block():
    model = build_model(load_cfg(PANOPTIC, "MODEL.STRUCTTOKEN.NUM_BLOCKS", "2", "MODEL.MASK_FORMER.DEC_LAYERS", "3"))
    model.train()
    out = model.sem_seg_head(model.backbone(torch.zeros(1, 3, 64, 64)))
    assert len(out["aux_outputs"]) == 2
    assert all(a["pred_masks"].shape == out["pred_masks"].shape == (1, 20, 16, 16) for a in out["aux_outputs"])


# ------------------------------------------------------------------------------------------- configs
def test_every_structtoken_config_loads():
    paths = sorted((ROOT / "configs").rglob("structtoken_*.yaml"))
    assert len(paths) == 16  # base + 12 ADE20K semantic + COCO panoptic + 2 mini
    for path in paths:
        cfg = load_cfg(path.relative_to(ROOT))
        st = cfg.MODEL.STRUCTTOKEN
        assert st.INTERACTION in VARIANTS and st.NUM_BLOCKS == 4
        if cfg.MODEL.SEM_SEG_HEAD.NAME == "StructTokenHead":  # paper recipe: tokens at crop / 16
            assert list(st.TOKEN_SIZE) == [s // 16 for s in cfg.INPUT.CROP.SIZE]
        else:
            assert cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME == "StructTokenDecoder"
            assert cfg.MODEL.MASK_FORMER.DEC_LAYERS == st.NUM_BLOCKS + 1


# ------------------------------------------------------------------------------------------- config errors
def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="DEC_LAYERS"):
        build_model(load_cfg(PANOPTIC, "MODEL.MASK_FORMER.DEC_LAYERS", "10"))
    with pytest.raises(ValueError, match="MODEL.STRUCTTOKEN.INTERACTION"):
        build_model(load_cfg(SEMANTIC, "MODEL.STRUCTTOKEN.INTERACTION", "XYZ"))
    with pytest.raises(ValueError, match="MODEL.STRUCTTOKEN.FEATURE_SOURCE"):
        build_model(load_cfg(SEMANTIC, "MODEL.STRUCTTOKEN.FEATURE_SOURCE", "neck"))
    with pytest.raises(ValueError, match="IN_FEATURES"):
        build_model(load_cfg(SEMANTIC, "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res4']"))
