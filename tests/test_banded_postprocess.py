"""Banded inference from low-resolution mask logits (postprocess.banded_inference) against the full computation:
upsample the whole map, crop, then semantic / panoptic / instance inference."""

import pytest
import torch
import torch.nn.functional as F

import universal_seg.modeling.postprocess as postprocess
from universal_seg.modeling.postprocess import (
    MaskLogitBands,
    banded_inference,
    banded_rows_exact,
    confident_semantic_inference,
    instance_inference,
    panoptic_inference,
    semantic_inference,
)


def _full(low_res, padded_size, crop):
    up = F.interpolate(low_res[None], size=padded_size, mode="bilinear", align_corners=False)[0]
    return up[:, : crop[0], : crop[1]]


def _random_case(seed, q, k, low, pad_rows=0, pad_cols=0, scale=4):
    gen = torch.Generator().manual_seed(seed)
    h, w = low
    low_res = torch.randn(q, h, w, generator=gen) * 6 + torch.randn(q, 1, 1, generator=gen) * 3
    mask_cls = torch.randn(q, k + 1, generator=gen) * 2
    mask_cls[torch.rand(q, generator=gen) < 0.5, 0] += 8  # confident queries (kept by panoptic inference)
    padded = (h * scale, w * 4)
    crop = (padded[0] - pad_rows, padded[1] - pad_cols)
    return mask_cls, low_res, padded, crop


def _check(mask_cls, low_res, padded, crop, k, things, semantic_threshold=0.0, instance_things_only=False):
    full = _full(low_res, padded, crop)
    bands = MaskLogitBands(low_res, padded, crop)
    got = banded_inference(
        mask_cls, bands, k, semantic=True, semantic_object_threshold=semantic_threshold, panoptic=True,
        object_mask_threshold=0.5, overlap_threshold=0.6, thing_ids=things, instance=True, test_topk_per_image=20,
        instance_things_only=instance_things_only,
    )  # fmt: skip
    if semantic_threshold > 0:
        sem = confident_semantic_inference(mask_cls, full, semantic_threshold)
    else:
        sem = semantic_inference(mask_cls, full)
    assert got["sem_seg"].shape == sem.shape and torch.equal(got["sem_seg"], sem)
    seg, info = panoptic_inference(mask_cls, full, k, 0.5, 0.6, things)
    assert torch.equal(got["panoptic_seg"][0], seg) and got["panoptic_seg"][1] == info
    inst = instance_inference(mask_cls, full, k, 20, instance_things_only, things)
    mine = got["instances"]
    assert mine.image_size == inst.image_size
    assert torch.equal(mine.pred_masks, inst.pred_masks)
    assert torch.equal(mine.pred_boxes.tensor, inst.pred_boxes.tensor)
    assert torch.equal(mine.scores, inst.scores)  # bit for bit: the same blocks of the same values
    assert torch.equal(mine.pred_classes, inst.pred_classes)
    return info


def test_band_upsample_rows_equal_the_whole_upsample():
    """The claim banded inference rests on: bands of rows upsampled with one source row of halo are bit for bit
    the rows of the whole bilinear upsample (scale 4 and 2 in rows, any width ratio), at every band position."""
    torch.manual_seed(0)
    cases = [
        ((9, 7), 4, 28),
        ((16, 13), 4, 52),
        ((5, 11), 2, 37),
        ((33, 3), 4, 12),
        ((40, 37), 4, 148),
        ((20, 9), 4, 36),
    ]
    for (h, w), scale, width in cases:  # (both of PyTorch's kernels: H + W <= 128 or not)
        low_res = torch.randn(6, h, w) * 5
        padded = (h * scale, width)
        whole = F.interpolate(low_res[None], size=padded, mode="bilinear", align_corners=False)[0]
        bands = MaskLogitBands(low_res, padded, (padded[0] - 1, width - 3))
        for r0 in range(0, padded[0] - 1):
            for r1 in range(r0 + 1, min(padded[0] - 1, r0 + 9) + 1):
                got = bands.rows(r0, r1).view(6, r1 - r0, width - 3)
                assert torch.equal(got, whole[:, r0:r1, : width - 3]), (h, w, r0, r1)


@pytest.mark.parametrize("channels", [2, 5])
def test_band_upsample_on_a_channels_last_input_and_picked_queries(channels):
    """A channels-last input (PyTorch's channels-last kernel for more than 3 channels), rows of some queries only."""
    torch.manual_seed(1)
    low_res = torch.randn(1, channels, 30, 41).contiguous(memory_format=torch.channels_last)[0]
    padded = (120, 164)
    whole = F.interpolate(low_res[None], size=padded, mode="bilinear", align_corners=False)[0]
    bands = MaskLogitBands(low_res, padded, padded)
    for r0, r1 in [(0, 7), (5, 30), (40, 48), (100, 120)]:
        assert torch.equal(bands.rows(r0, r1).view(channels, -1, 164), whole[:, r0:r1])
        for queries in ([1], [0, 1], list(range(channels))[::-1]):
            picked = bands.rows(r0, r1, torch.tensor(queries)).view(len(queries), -1, 164)
            assert torch.equal(picked, whole[queries, r0:r1])


def test_banded_rows_exact_only_for_power_of_two_row_scales():
    assert (
        banded_rows_exact((8, 8), (32, 32))
        and banded_rows_exact((8, 8), (16, 31))
        and banded_rows_exact((8, 8), (8, 8))
    )
    assert not banded_rows_exact((8, 8), (24, 32)) and not banded_rows_exact((8, 8), (33, 32))
    with pytest.raises(ValueError):
        MaskLogitBands(torch.zeros(2, 8, 8), (24, 32), (24, 32))


@pytest.mark.parametrize("band_elements", [None, 1 << 14, 1 << 11])
def test_banded_inference_equals_full_on_random_logits(monkeypatch, band_elements):
    """Several sizes (odd ones, crops of the padding or none), one band or many (small bands, small blocks)."""
    if band_elements is not None:
        monkeypatch.setattr(postprocess, "_BAND_ELEMENTS", band_elements)
        monkeypatch.setattr(postprocess, "_BLOCK_ELEMENTS", band_elements // 4)
        monkeypatch.setattr(postprocess, "_SEMANTIC_BLOCK_ELEMENTS_ONEDNN", band_elements // 2)
    segments = 0
    cases = [(7, 9, 0, 0), (16, 16, 3, 5), (13, 31, 1, 0), (5, 64, 0, 7), (40, 11, 9, 2), (1, 1, 0, 0)]
    for seed, (h, w, pr, pc) in enumerate(cases):
        for q, k in [(12, 5), (3, 2)]:
            mask_cls, low_res, padded, crop = _random_case(seed, q, k, (h, w), pr, pc)
            info = _check(mask_cls, low_res, padded, crop, k, things=[0, 2])
            segments += len(info)
    assert segments >= 5  # (random logits: most queries lose by overlap)


def test_banded_inference_options(monkeypatch):
    """Confident semantic queries, instance things only, scale-2 rows, nothing kept by panoptic inference."""
    monkeypatch.setattr(postprocess, "_BAND_ELEMENTS", 1 << 11)
    mask_cls, low_res, padded, crop = _random_case(5, 10, 4, (11, 13), 2, 1)
    _check(mask_cls, low_res, padded, crop, 4, things=[0, 1], semantic_threshold=0.4, instance_things_only=True)
    mask_cls, low_res, padded, crop = _random_case(6, 10, 4, (11, 13), 0, 3, scale=2)
    _check(mask_cls, low_res, padded, crop, 4, things=[1])
    _check(mask_cls, low_res, padded, crop, 4, things=[], instance_things_only=True)  # no instances at all
    mask_cls[:, -1] = 50  # every query no-object: panoptic keeps none
    assert _check(mask_cls, low_res, padded, crop, 4, things=[1]) == []


def test_banded_inference_only_panoptic_upsamples_the_kept_queries(monkeypatch):
    monkeypatch.setattr(postprocess, "_BAND_ELEMENTS", 1 << 10)
    mask_cls, low_res, padded, crop = _random_case(8, 15, 3, (10, 9), 1, 2)
    full = _full(low_res, padded, crop)
    bands = MaskLogitBands(low_res, padded, crop)
    got = banded_inference(mask_cls, bands, 3, panoptic=True, object_mask_threshold=0.5, overlap_threshold=0.2)
    seg, info = panoptic_inference(mask_cls, full, 3, 0.5, 0.2)
    assert torch.equal(got["panoptic_seg"][0], seg) and got["panoptic_seg"][1] == info and info


# ------------------------------------------------------------------------------------------- real model logits
def _model(*opts):
    from detectron2.modeling import build_model

    import universal_seg.data  # noqa: F401
    import universal_seg.modeling  # noqa: F401
    from universal_seg.config import load_config

    root = __file__.rsplit("/tests/", 1)[0]
    cfg = load_config(
        f"{root}/configs/mini/panoptic/m2f_r18.yaml",
        ["MODEL.DEVICE", "cpu", "MODEL.MASK_FORMER.TEST.INSTANCE_ON", "True", *opts],
    )
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _both_paths(model, inputs):
    """model.inference on the same decoder outputs through the banded path and the whole upsample."""
    with torch.no_grad():
        images = model.preprocess(inputs)
        outputs = model.sem_seg_head(model.backbone(images.tensor))
        padded = tuple(images.tensor.shape[-2:])
        assert model._banded_inference_applies(outputs["pred_logits"], outputs["pred_masks"], padded)
        got = model.inference(outputs, inputs, images)
        model.banded_postprocess = False
        try:
            expected = model.inference(outputs, inputs, images)
        finally:
            model.banded_postprocess = True
    return got, expected


def _assert_same_results(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert list(a) == list(b)
        if "sem_seg" in b:
            assert torch.equal(a["sem_seg"], b["sem_seg"])
        if "panoptic_seg" in b:
            assert (
                torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0]) and a["panoptic_seg"][1] == b["panoptic_seg"][1]
            )
        if "instances" in b:
            x, y = a["instances"], b["instances"]
            assert x.image_size == y.image_size and torch.equal(x.pred_masks, y.pred_masks)
            assert torch.equal(x.pred_boxes.tensor, y.pred_boxes.tensor) and torch.equal(x.scores, y.scores)
            assert torch.equal(x.pred_classes, y.pred_classes)


def test_model_inference_banded_equals_whole_upsample_on_real_logits(monkeypatch):
    """The mini Mask2Former (random weights, every query kept): a batch of two odd-sized images (padding cropped),
    output size = image size (banded) and != image size (the whole upsample, resized), one band and many."""
    model = _model(
        "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.0", "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", "0.3"
    )
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen) for h, w in [(97, 131), (120, 64)]]
    inputs = [{"image": images[0]}, {"image": images[1], "height": 120, "width": 64}]
    got, expected = _both_paths(model, inputs)
    _assert_same_results(got, expected)
    assert sum(len(r["panoptic_seg"][1]) for r in expected) > 0
    resized = [{"image": images[0], "height": 50, "width": 77}, {"image": images[1]}]
    _assert_same_results(*_both_paths(model, resized))
    for band_elements in (1 << 14, 1 << 12):  # many bands, blocks across bands
        monkeypatch.setattr(postprocess, "_BAND_ELEMENTS", band_elements)
        monkeypatch.setattr(postprocess, "_BLOCK_ELEMENTS", 5000)
        monkeypatch.setattr(postprocess, "_SEMANTIC_BLOCK_ELEMENTS_ONEDNN", 30000)
        _assert_same_results(*_both_paths(model, inputs))


def test_model_semantic_only_resized_after_inference_and_confident_queries():
    """SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE False (semantic on the padded map, then resized), with confident
    queries only (SEMANTIC_OBJECT_THRESHOLD)."""
    model = _model(
        "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", "False", "MODEL.MASK_FORMER.TEST.INSTANCE_ON", "False",
        "MODEL.MASK_FORMER.TEST.SEMANTIC_ON", "True", "MODEL.MASK_FORMER.TEST.SEMANTIC_OBJECT_THRESHOLD", "0.3",
    )  # fmt: skip
    assert not model.sem_seg_postprocess_before_inference
    image = torch.randint(0, 256, (3, 75, 101), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    for size in ({}, {"height": 40, "width": 200}):
        _assert_same_results(*_both_paths(model, [{"image": image, **size}]))


def test_column_blocks_from_bands_are_the_full_functions_blocks():
    """_ColumnBlocks over bands of any sizes (blocks inside a band, across two, across several) yields the blocks of
    _column_blocks over the whole matrix, with the same values, each a strided (non-contiguous) view."""
    from universal_seg.modeling.postprocess import _column_blocks, _ColumnBlocks

    torch.manual_seed(0)
    whole = torch.randn(3, 97)
    for step, cuts in [(10, [0, 5, 40, 41, 97]), (30, [0, 7, 14, 21, 28, 35, 97]), (7, [0, 97]), (50, [0, 3, 97])]:
        expected = list(_column_blocks(3, 97, torch.device("cpu"), 3 * step))
        blocks = _ColumnBlocks(97, step)
        got = []
        for start, end in zip(cuts, cuts[1:]):
            band = torch.empty(3, end - start + 1)[:, : end - start]
            band.copy_(whole[:, start:end])
            got += list(blocks.take(band, start, end))
        assert [c for c, _ in got] == [slice(c.start, min(c.stop, 97)) for c in expected]
        for cols, block in got:
            assert torch.equal(block, whole[:, cols]) and block.stride(0) > block.shape[1]


@pytest.mark.parametrize("band_elements", [1 << 9, 1 << 11])
def test_banded_panoptic_on_the_tie_heavy_random_cases(monkeypatch, band_elements):
    """test_postprocess's random panoptic cases (exact score ties, saturated masks, logits whose sigmoid rounds to
    0.5) taken as scale-1 'low-resolution' logits, in bands of a few rows: the full function's outputs."""
    from test_postprocess import _random_panoptic_case

    monkeypatch.setattr(postprocess, "_BAND_ELEMENTS", band_elements)
    for seed in range(100):
        mask_cls, mask_pred, k, obj_t, ovl_t, things = _random_panoptic_case(seed)
        expected = panoptic_inference(mask_cls, mask_pred, k, obj_t, ovl_t, things)
        bands = MaskLogitBands(mask_pred, tuple(mask_pred.shape[-2:]), tuple(mask_pred.shape[-2:]))
        for others in (False, True):  # alone (the kept queries upsampled) or with the other tasks
            got = banded_inference(
                mask_cls, bands, k, panoptic=True, object_mask_threshold=obj_t, overlap_threshold=ovl_t,
                thing_ids=things, semantic=others, instance=others,
            )["panoptic_seg"]  # fmt: skip
            assert torch.equal(got[0], expected[0]) and got[1] == expected[1], seed


def test_band_rows_reuse_one_buffer_on_the_cpu_and_stay_exact():
    """Successive bands are written into the same storage (no fresh mapping per band), both the upsample and the
    cropped copy, and each is still bit for bit the rows of the whole upsample; under autograd a band is a fresh
    differentiable tensor."""
    torch.manual_seed(2)
    low_res = torch.randn(5, 12, 10) * 4
    padded, crop = (48, 40), (45, 37)
    whole = F.interpolate(low_res[None], size=padded, mode="bilinear", align_corners=False)[0]
    for size in (padded, crop):
        bands = MaskLogitBands(low_res, padded, size)
        pointers = []
        for r0 in range(0, size[0], 8):
            r1 = min(size[0], r0 + 8)
            band = bands.rows(r0, r1)
            pointers.append(band.untyped_storage().data_ptr())
            assert torch.equal(band.view(5, r1 - r0, size[1]), whole[:, r0:r1, : size[1]])
        # the first band has a halo row on one side only, so the buffer grows once, at the second band
        assert len(pointers) == 6 and len(set(pointers[1:])) == 1, (size, pointers)
    leaf = low_res.clone().requires_grad_(True)
    band = MaskLogitBands(leaf, padded, padded).rows(0, 8)
    assert band.requires_grad
    band.sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
