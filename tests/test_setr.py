"""SETR (ViT-L/16 + Naive / PUP / MLA heads with auxiliary heads): parameter counts against the paper (and the
backbone's against its written-out count; exact totals are a separate regression pin), the head layouts, and one
training step plus (sliding-window) inference per config on CPU at a small input.

ViT-L is built once (random init) with the union of the configs' OUT_INDICES and shared by the three heads."""

import pytest
import torch
from conftest import load_cfg
from detectron2.modeling import build_backbone

import universal_seg.data  # noqa: F401
import universal_seg.modeling  # noqa: F401
from universal_seg.modeling.meta_arch import PerPixelSegmentor

CONFIGS = {name: f"configs/ade20k/semantic/setr_{name}_vit_l.yaml" for name in ("naive", "pup", "mla")}
# SETR paper (Table 2, T-Large): parameters in millions. PUP is the "about 318M" model.
PAPER_PARAMS_M = {"naive": 305.67, "pup": 318.31, "mla": 309.53}
# regression pin: what our modules gave with 150 classes and a 384-pixel (24x24 + cls) position table
REGRESSION_PIN_PARAMS = {"naive": 305_099_864, "pup": 316_832_344, "mla": 309_111_534}
# ViT-L/16 written out (D 1024, 24 blocks, MLP 4096, 577 tokens, no final norm: SETR's heads norm their inputs)
D, BLOCKS, MLP, TOKENS = 1024, 24, 4096, 24 * 24 + 1
VIT_L_PARAMS = (
    (16 * 16 * 3 * D + D)  # patch embedding conv
    + D
    + TOKENS * D  # cls token, position table
    + BLOCKS
    * (
        2 * 2 * D  # two LayerNorms
        + 3 * D * D
        + 3 * D  # qkv
        + D * D
        + D  # attention projection
        + D * MLP
        + MLP
        + MLP * D
        + D
    )
)  # MLP


def _params(name):
    with torch.device("meta"):  # full ViT-L config, no memory or init cost
        model = PerPixelSegmentor(load_cfg(CONFIGS[name]))
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.backbone.parameters())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_params_match_paper(name):
    """SETR paper Table 2 (T-Large), within 2%; the ViT-L backbone equals its written-out count exactly."""
    total, backbone = _params(name)
    assert backbone == VIT_L_PARAMS
    assert total / 1e6 == pytest.approx(PAPER_PARAMS_M[name], rel=0.02)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_regression_pin_params(name):
    """Regression pin (our own earlier output, not an independent truth): the exact parameter count."""
    assert _params(name)[0] == REGRESSION_PIN_PARAMS[name]


def test_head_layouts():
    with torch.device("meta"):
        naive = PerPixelSegmentor(load_cfg(CONFIGS["naive"])).sem_seg_head
        pup = PerPixelSegmentor(load_cfg(CONFIGS["pup"])).sem_seg_head
        mla = PerPixelSegmentor(load_cfg(CONFIGS["mla"])).sem_seg_head
    assert (naive.in_feature, naive.aux_in_features) == ("layer23", ["layer9", "layer14", "layer19"])
    assert len(naive.decode_head.up_convs) == 1 and naive.decode_head.up_convs[0][0].conv.kernel_size == (1, 1)
    assert len(pup.decode_head.up_convs) == 4 and pup.decode_head.up_convs[0][0].conv.kernel_size == (3, 3)
    assert len(pup.auxiliary_head) == 3 and pup.aux_loss_weight == 0.4
    assert mla.in_features == ["layer5", "layer11", "layer17", "layer23"] and len(mla.auxiliary_head) == 4
    assert mla.decode_head.conv_seg.in_channels == 512


@pytest.fixture(scope="module")
def vit_l():
    torch.manual_seed(0)
    cfg = load_cfg(CONFIGS["naive"], "MODEL.VIT.OUT_INDICES", "[5, 9, 11, 14, 17, 19, 23]")
    return build_backbone(cfg)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_train_step_and_slide_inference(vit_l, name):
    cfg = load_cfg(
        CONFIGS[name],
        "MODEL.SEM_SEG_HEAD.NORM",
        "BN",
        "MODEL.PER_PIXEL.SLIDE_WINDOW.CROP_SIZE",
        "[32, 32]",
        "MODEL.PER_PIXEL.SLIDE_WINDOW.STRIDE",
        "[24, 24]",
    )
    torch.manual_seed(0)
    model = PerPixelSegmentor(cfg, backbone=vit_l).train()
    vit_l.zero_grad(set_to_none=True)
    vit_l.requires_grad_(name == "naive")  # one full ViT-L backward is enough (and the slow part on CPU)
    inputs = [
        {"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8), "sem_seg": torch.randint(0, 150, (64, 64))}
        for _ in range(2)
    ]
    losses = model(inputs)
    assert set(losses) == {"loss_sem_seg"} | {f"loss_sem_seg_aux{i}" for i in range(4 if name == "mla" else 3)}
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    if name == "naive":
        assert vit_l.blocks[23].mlp.fc2.weight.grad is not None and vit_l.patch_embed.proj.weight.grad is not None
    assert all(p.grad is not None for p in model.sem_seg_head.parameters())
    model.eval()
    with torch.no_grad():
        out = model([{"image": inputs[0]["image"][:, :48], "height": 24, "width": 32}])[0]["sem_seg"]
    assert out.shape == (150, 24, 32)
    torch.testing.assert_close(out.sum(0), torch.ones(24, 32))
