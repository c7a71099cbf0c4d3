"""Mask2Former model: official checkpoint compatibility, safe loading, decoder and pixel-decoder behaviour."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_cfg
from detectron2.modeling import build_model

import universal_seg.data  # noqa: F401
import universal_seg.modeling  # noqa: F401
from universal_seg.checkpoint import UniversalSegCheckpointer, UnsafeCheckpointError, load_pickle_safely
from universal_seg.modeling.pixel_decoder.msdeform import DeformableEncoder

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data"  # official checkpoint key lists (copied from shared/reference)


def reference_shapes(name):
    path = REFERENCE / name
    shapes = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        shapes[key] = tuple(int(s) for s in shape.split("x")) if shape else ()
    return shapes


@pytest.mark.parametrize(
    "config,reference",
    [
        ("configs/coco/panoptic/m2f_r50.yaml", "mask2former_r50_coco_panoptic_state_dict.txt"),
        ("configs/ade20k/semantic/m2f_r50.yaml", "mask2former_r50_ade20k_semantic_state_dict.txt"),
        ("configs/coco/panoptic/m2f_swin_t.yaml", "mask2former_swin_tiny_coco_panoptic_state_dict.txt"),
    ],
)
def test_state_dict_equals_official_checkpoint(config, reference):
    model = build_model(load_cfg(config))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ref = reference_shapes(reference)
    assert sorted(set(ref) - set(ours)) == [], "missing keys"
    assert sorted(set(ours) - set(ref)) == [], "unexpected keys"
    assert {k: ours[k] for k in ref if ours[k] != ref[k]} == {}, "shape mismatches"


def _official_like_pkl(model, path):
    """A detectron2 model-zoo style pickle: {"model": {name: numpy array}, "__author__": ...}."""
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "universal_seg test"}, f)
    return state


def test_pkl_checkpoint_loads_with_no_missing_or_unexpected_keys(tmp_path):
    cfg = load_cfg("configs/coco/panoptic/m2f_r50.yaml")
    source, target = build_model(cfg), build_model(cfg)
    state = _official_like_pkl(source, tmp_path / "model.pkl")
    result = UniversalSegCheckpointer(target)._load_model(
        UniversalSegCheckpointer(target)._load_file(str(tmp_path / "model.pkl"))
    )
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in target.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), state[k])


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pkl_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.zeros(2)}, "__author__": "x", "payload": _Exploit()}, f)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load posix.system"):
        load_pickle_safely(str(path))


def test_malicious_pth_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": _Exploit()}, f)  # torch.load reads plain pickles too
    model = torch.nn.Linear(2, 2)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        UniversalSegCheckpointer(model)._load_file(str(path))


def test_eval_fast_path_equals_full_computation():
    """In eval mode intermediate masks are computed on resized mask features (linearity of resizing); the result
    must equal the training-mode computation that resizes full-resolution masks."""
    cfg = load_cfg(
        "configs/coco/panoptic/m2f_r50.yaml",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
        "7",
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES",
        "12",
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    head = model.sem_seg_head
    features = model.backbone(torch.randn(1, 3, 128, 160))
    with torch.no_grad():
        head.train()
        full = head(features)
        head.eval()
        fast = head(features)
    torch.testing.assert_close(fast["pred_logits"], full["pred_logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast["pred_masks"], full["pred_masks"], rtol=1e-4, atol=1e-4)
    assert len(full["aux_outputs"]) == cfg.MODEL.MASK_FORMER.DEC_LAYERS - 1 and fast["aux_outputs"] == []


def test_pixel_decoder_outputs_and_reference_points():
    cfg = load_cfg("configs/coco/panoptic/m2f_r50.yaml")
    model = build_model(cfg)
    features = model.backbone(torch.randn(2, 3, 96, 128))
    mask_features, ms = model.sem_seg_head.pixel_decoder(features)
    assert mask_features.shape == (2, 256, 24, 32)
    assert [tuple(f.shape) for f in ms] == [(2, 256, 3, 4), (2, 256, 6, 8), (2, 256, 12, 16)]
    # hand-computed pixel centres of a 2 x 3 level: x in {1/6, 1/2, 5/6}, y in {1/4, 3/4}
    ref = DeformableEncoder.reference_points([(2, 3)], batch=1, device="cpu")
    expected = torch.tensor([[x, y] for y in (0.25, 0.75) for x in (1 / 6, 0.5, 5 / 6)])
    torch.testing.assert_close(ref[0, :, 0], expected)


def test_mask_logits_any_layout_matches_einsum():
    from universal_seg.modeling.transformer_decoder.mask2former import mask_logits

    torch.manual_seed(0)
    embed, features = torch.randn(2, 7, 16), torch.randn(2, 16, 12, 20)  # 240 pixels: the oneDNN path applies
    expected = torch.einsum("bqc,bchw->bqhw", embed.double(), features.double())
    for layout in (torch.contiguous_format, torch.channels_last):
        out = mask_logits(embed, features.contiguous(memory_format=layout))
        assert out.shape == (2, 7, 12, 20)
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_pixel_decoder_levels_are_channels_last_views_equal_to_the_plain_computation():
    """For one image the encoder's levels are channels-last views of its output (so the CPU upsampling in the FPN
    step writes channels-last without converting), and the FPN result equals the straightforward computation on
    contiguous NCHW copies of those levels."""
    import torch.nn.functional as F

    cfg = load_cfg("configs/coco/panoptic/m2f_r50.yaml")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    decoder = model.sem_seg_head.pixel_decoder
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, 96, 128).contiguous(memory_format=torch.channels_last))
        mask_features, ms = decoder(features)
        for level in ms:
            up = F.interpolate(level, scale_factor=2.0, mode="bilinear", align_corners=False)
            assert up.is_contiguous(memory_format=torch.channels_last)
        # written out: encoder memory -> NCHW levels -> FPN on the finest backbone feature -> mask features
        srcs, pos = [], []
        for idx, name in enumerate(reversed(decoder.transformer_in_features)):
            srcs.append(decoder.input_proj[idx](features[name]))
            pos.append(decoder.pe_layer(features[name]))
        memory, shapes = decoder.transformer(srcs, pos)
        chunks = memory.split([h * w for h, w in shapes], dim=1)
        levels = [c.transpose(1, 2).reshape(1, -1, h, w).contiguous() for c, (h, w) in zip(chunks, shapes)]
        for got, expected in zip(ms, levels):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
        y = levels[-1]
        for idx, name in enumerate(reversed(decoder.in_features[: decoder.num_fpn_levels])):
            lateral = decoder.lateral_convs[idx](features[name])
            y = decoder.output_convs[idx](lateral + F.interpolate(y, size=lateral.shape[-2:], mode="bilinear"))
        torch.testing.assert_close(mask_features, decoder.mask_features(y), rtol=1e-5, atol=1e-5)
