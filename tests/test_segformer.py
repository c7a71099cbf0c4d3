"""SegFormer (MiT + All-MLP head): equality with HuggingFace transformers after weight conversion, official
checkpoint names, paper parameter counts and GFLOPs, and one training / inference step of the mini config."""

import pytest
import torch
import transformers
from conftest import load_cfg
from detectron2.modeling import build_model
from torch import nn

import universal_seg.data  # noqa: F401
import universal_seg.modeling  # noqa: F401
from universal_seg.modeling.heads import convert_segformer_checkpoint
from universal_seg.modeling.meta_arch import PerPixelSegmentor

MINI = "configs/mini/semantic/segformer_b0.yaml"
# paper Table 1: encoder + decoder parameters (M) with 150 ADE20K classes
PAPER_PARAMS_M = {0: 3.4 + 0.4, 1: 13.1 + 0.6, 2: 24.2 + 3.3, 3: 44.0 + 3.3, 4: 60.8 + 3.3, 5: 81.4 + 3.3}


def _features_logits(model, x):
    return model.sem_seg_head(model.backbone(x))["sem_seg_logits"]


@pytest.fixture(scope="module")
def hf_segformer():
    torch.manual_seed(0)
    config = transformers.SegformerConfig(num_labels=21)  # MiT-B0 sizes, decoder_hidden_size 256
    assert list(config.hidden_sizes) == [32, 64, 160, 256] and config.decoder_hidden_size == 256
    hf = transformers.SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():  # non-trivial norm parameters and BN statistics
        for m in hf.modules():
            if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return hf


def _ours_for_hf():
    model = build_model(load_cfg(MINI)).eval()
    for m in model.backbone.modules():  # transformers' LayerNorms use the default eps 1e-5 (NVlabs: 1e-6)
        if isinstance(m, nn.LayerNorm):
            m.eps = 1e-5
    return model


@pytest.mark.parametrize("layout", ["transformers5", "hub"])
def test_equals_huggingface_segformer(hf_segformer, layout):
    sd = hf_segformer.state_dict()
    if layout == "hub":  # the hub checkpoints' decode-head names (encoder names are covered by the MiT tests)
        sd = {k.replace("decode_head.linear_projections.", "decode_head.linear_c."): v for k, v in sd.items()}
    model = _ours_for_hf()
    result = model.load_state_dict(convert_segformer_checkpoint({"state_dict": sd}), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    torch.manual_seed(1)
    for hw in [(128, 160), (96, 96)]:
        x = torch.randn(2, 3, *hw)
        with torch.no_grad():
            expected = hf_segformer(pixel_values=x).logits  # [B, K, H/4, W/4]
            got = _features_logits(model, x)
        assert got.shape == expected.shape == (2, 21, hw[0] // 4, hw[1] // 4)
        assert (got - expected).abs().max().item() <= 1e-4


def test_fused_head_equals_the_paper_order_on_hf_weights(hf_segformer):
    """The fused All-MLP head (per-stage composed 1x1 convs, no 4E -> E conv at 1/4) against the paper's order on
    the same HF-converted weights: logits within 1e-4 in eval, and in training mode (batch-statistics BN) the same
    loss gradients for every head parameter."""
    model = _ours_for_hf()
    model.load_state_dict(convert_segformer_checkpoint({"state_dict": hf_segformer.state_dict()}), strict=True)
    head = model.sem_seg_head
    torch.manual_seed(2)
    for hw in [(128, 160), (96, 96)]:
        x = torch.randn(2, 3, *hw)
        with torch.no_grad():
            feats = model.backbone(x)
            head.fused = False
            reference = head(feats)["sem_seg_logits"]
            head.fused = True
            fused = head(feats)["sem_seg_logits"]
        assert (fused - reference).abs().max().item() <= 1e-4

    head.train()
    head.dropout.p = 0.0  # the same function in both orders (dropout draws differ otherwise)
    feats = {k: v.detach() for k, v in model.backbone(torch.randn(2, 3, 96, 128)).items()}
    grads = {}
    for fused in (False, True):
        head.fused = fused
        head.zero_grad()
        head(feats)["sem_seg_logits"].square().mean().backward()
        grads[fused] = {n: p.grad.clone() for n, p in head.named_parameters()}
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, rtol=1e-4, atol=1e-5, msg=name)


def test_nvlabs_names_convert_to_ours():
    """An NVlabs / mmseg SegFormer state dict (backbone.*, decode_head.* with the unused conv_seg) loads strictly."""
    model = build_model(load_cfg(MINI))
    ours = model.state_dict()
    nvlabs = {}
    for k, v in ours.items():
        if k.startswith("sem_seg_head."):
            nvlabs["decode_head." + k[len("sem_seg_head.") :]] = v
        else:
            nvlabs[k] = v
    assert "decode_head.linear_fuse.bn.running_var" in nvlabs and "backbone.block1.0.attn.kv.weight" in nvlabs
    assert {"decode_head.linear_c1.proj.weight", "decode_head.linear_pred.weight"} <= set(nvlabs)
    nvlabs["decode_head.conv_seg.weight"] = torch.zeros(21, 256, 1, 1)
    nvlabs["decode_head.conv_seg.bias"] = torch.zeros(21)
    converted = convert_segformer_checkpoint({"state_dict": nvlabs})
    assert set(converted) == set(ours)
    with pytest.raises(KeyError, match="decode_head"):
        convert_segformer_checkpoint({"backbone.patch_embed1.proj.weight": torch.zeros(1)})


@pytest.mark.parametrize("variant", range(6))
def test_params_match_paper(variant):
    with torch.device("meta"):  # no memory, no init cost
        model = PerPixelSegmentor(load_cfg(f"configs/ade20k/semantic/segformer_b{variant}.yaml"))
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert n == pytest.approx(PAPER_PARAMS_M[variant], rel=0.05)


def test_b0_gflops_at_512_match_paper():
    """fvcore counts one multiply-add as one flop; paper: 8.4 GFLOPs (the paper's operation order, fused = False).
    The fused head executes fewer: the 4E -> E conv at 1/4 resolution (4 E^2 (H/4)(W/4) multiply-adds) is gone,
    and the per-stage weight compositions W_i A_i and W_i b_i (E^2 sum_i C_i + 4 E^2) are added."""
    from fvcore.nn import FlopCountAnalysis

    model = build_model(load_cfg("configs/ade20k/semantic/segformer_b0.yaml")).eval()
    n = sum(p.numel() for p in model.parameters())
    assert n / 1e6 == pytest.approx(3.8, rel=0.05)

    class Logits(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return _features_logits(self.m, x)

    def count(fused):
        model.sem_seg_head.fused = fused
        flops = FlopCountAnalysis(Logits(model), torch.zeros(1, 3, 512, 512))
        flops.unsupported_ops_warnings(False)
        flops.uncalled_modules_warnings(False)
        return flops.total()

    paper_order, fused = count(False), count(True)
    assert paper_order / 1e9 == pytest.approx(8.4, rel=0.05)
    E, channels = 256, [32, 64, 160, 256]  # MiT-B0 stage widths, decoder embedding E
    saved = 4 * E * E * 128 * 128 - E * E * sum(channels) - 4 * E * E
    assert paper_order - fused == pytest.approx(saved, rel=1e-6)


def test_ade20k_recipe():
    cfg = load_cfg("configs/ade20k/semantic/segformer_b2.yaml")
    s = cfg.SOLVER
    assert (s.OPTIMIZER, s.BASE_LR, s.WEIGHT_DECAY) == ("ADAMW", 6e-4, 0.01)
    assert s.BASE_LR * s.BACKBONE_MULTIPLIER == pytest.approx(6e-5)  # encoder 6e-5, head x10
    assert (s.LR_SCHEDULER_NAME, s.POLY_LR_POWER, s.WARMUP_ITERS, s.MAX_ITER, s.IMS_PER_BATCH) == (
        "WarmupPolyLR",
        1.0,
        1500,
        160000,
        16,
    )
    assert tuple(cfg.INPUT.CROP.SIZE) == (512, 512) and cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 150
    assert cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM == 768 and cfg.MODEL.MIT.VARIANT == "B2"


def test_mini_b0_train_step_and_inference():
    torch.manual_seed(0)
    model = build_model(load_cfg(MINI)).train()
    inputs = [
        {"image": torch.randint(0, 255, (3, 128, 128), dtype=torch.uint8), "sem_seg": torch.randint(0, 21, (128, 128))}
        for _ in range(2)
    ]
    losses = model(inputs)
    assert set(losses) == {"loss_sem_seg"} and torch.isfinite(losses["loss_sem_seg"])
    losses["loss_sem_seg"].backward()
    assert model.backbone.patch_embed1.proj.weight.grad is not None
    model.eval()
    with torch.no_grad():
        out = model([{"image": inputs[0]["image"]}])[0]["sem_seg"]
    assert out.shape == (21, 128, 128)
