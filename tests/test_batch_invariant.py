"""universal_seg.ops.batch_invariant and the batch invariance of ops.linear: an image's result in a CPU batch is bit for
bit its result alone.

Truths: the same op on each image alone (the definition of batch invariance); for the written-out copy of PyTorch's
convolution backend rule, PyTorch's own dispatch (F.conv2d equals aten.mkldnn_convolution bit for bit exactly when
it went to oneDNN).
"""

import os

import pytest
import torch
import torch.nn.functional as F

from universal_seg.config import load_config
from universal_seg.ops import linear
from universal_seg.ops.batch_invariant import BatchInvariantMode, batch_invariant, pytorch_conv_uses_onednn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def per_image(func, x, *args, **kwargs):
    return [func(x[i : i + 1], *args, **kwargs) for i in range(x.shape[0])]


@pytest.mark.parametrize(
    "shape,kernel,groups,threads,expected",
    [
        ((1, 512, 5, 7), 3, 1, 2, False),  # one image, 17920 values, 3x3: native
        ((2, 512, 5, 7), 3, 1, 2, True),  # a batch: oneDNN
        ((1, 64, 40, 56), 3, 1, 2, True),  # more than 20480 values
        ((1, 32, 5, 7), 5, 1, 2, True),  # a kernel above 3x3
        ((1, 32, 5, 7), 3, 32, 2, True),  # grouped
        ((4, 256, 40, 56), 1, 1, 1, False),  # one thread, unstrided 1x1, batch below 16
    ],
)
def test_written_out_conv_rule_matches_pytorchs_dispatch(shape, kernel, groups, threads, expected):
    torch.manual_seed(0)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    w = torch.randn(shape[1], shape[1] // groups, kernel, kernel) * 0.05
    pad = (kernel // 2, kernel // 2)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert pytorch_conv_uses_onednn(x.shape, w.shape, 1, 1, groups) is expected
        # the truth: which kernel PyTorch's dispatch ran, as its profiler records it (comparing outputs with a
        # direct oneDNN call is no proof: on some CPUs the native 1x1 kernel gives oneDNN's bits)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = F.conv2d(x, w, None, 1, pad, 1, groups)
        onednn = torch.ops.aten.mkldnn_convolution(x, w, None, pad, (1, 1), (1, 1), groups)
    finally:
        torch.set_num_threads(old)
    ran = {e.name for e in prof.events()}
    assert ("aten::mkldnn_convolution" in ran) is expected
    assert ("aten::_slow_conv2d_forward" in ran) is not expected
    if expected:
        assert torch.equal(out, onednn)


def test_mode_makes_small_convolutions_batch_invariant():
    """A 512-channel 3x3 convolution of a 5x7 map (Mask2Former R18's res5 on a 160x224 image): batched it goes to
    oneDNN, alone to PyTorch's native kernel; under the mode the batch runs image by image, bit for bit."""
    torch.manual_seed(0)
    x = torch.randn(4, 512, 5, 7).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(512, 512, 3, 3) * 0.05, torch.randn(512)
    alone = per_image(F.conv2d, x, w, b, padding=1)
    plain = F.conv2d(x, w, b, padding=1)
    assert any(not torch.equal(plain[i : i + 1], a) for i, a in enumerate(alone))  # the problem the mode solves
    with BatchInvariantMode():
        out = F.conv2d(x, w, b, padding=1)
        big = F.conv2d(x.repeat(1, 1, 8, 8), w, b, padding=1)  # oneDNN both ways: left batched
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(out[i : i + 1], a) for i, a in enumerate(alone))
    assert all(
        torch.equal(big[i : i + 1], F.conv2d(x[i : i + 1].repeat(1, 1, 8, 8), w, b, padding=1)) for i in range(4)
    )


def test_mode_makes_channels_last_group_norm_batch_invariant():
    torch.manual_seed(0)
    x = torch.randn(4, 64, 40, 56).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(64), torch.randn(64)
    alone = per_image(F.group_norm, x, 32, w, b)
    if torch.get_num_threads() > 1:  # the kernel splits the N*H*W rows over the threads
        plain = F.group_norm(x, 32, w, b)
        assert any(not torch.equal(plain[i : i + 1], a) for i, a in enumerate(alone))
    module = torch.nn.GroupNorm(32, 64).eval()
    module.weight.data.copy_(w)
    module.bias.data.copy_(b)
    with BatchInvariantMode(), torch.no_grad():
        out, out_module = F.group_norm(x, 32, w, b), module(x)
    assert out.is_contiguous(memory_format=torch.channels_last) and torch.equal(out, out_module)
    assert all(torch.equal(out[i : i + 1], a) for i, a in enumerate(alone))


def test_mode_is_entered_only_for_cpu_batches_in_eager_mode():
    assert isinstance(batch_invariant(torch.zeros(2, 3, 8, 8)), BatchInvariantMode)
    assert not isinstance(batch_invariant(torch.zeros(1, 3, 8, 8)), BatchInvariantMode)
    assert not isinstance(batch_invariant(torch.zeros(2, 3, 8, 8, device="meta")), BatchInvariantMode)


@pytest.mark.parametrize("rows", [1, 20, 100, 700])
def test_linear_rows_do_not_depend_on_the_other_rows(rows):
    """Mask2Former R50's decoder products are [B, 100, 256]: one image had 100 rows, below the old 128-row threshold
    (MKL), a batch of two 200 (oneDNN). Now every size takes oneDNN's kernel, whose rows are independent."""
    torch.manual_seed(0)
    x, w, b = torch.randn(4, rows, 256), torch.randn(512, 256) * 0.05, torch.randn(512)
    out = linear(x, w, b)
    assert all(torch.equal(out[i], linear(x[i : i + 1], w, b)[0]) for i in range(4))
    torch.testing.assert_close(out.double(), F.linear(x.double(), w.double(), b.double()), rtol=1e-5, atol=1e-5)


def test_mask2former_r50_batch_equals_alone_bit_for_bit():
    """Mask2Former R50 (100 queries, folded FrozenBN, untrained): two images of one size, batched and alone, give
    the same network outputs and post-processed results bit for bit."""
    from detectron2.modeling import build_model

    import universal_seg.data  # noqa: F401
    import universal_seg.modeling  # noqa: F401

    cfg = load_config(os.path.join(ROOT, "configs", "coco", "panoptic", "m2f_r50.yaml"), ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images = [torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8) for _ in range(2)]
    inputs = [{"image": x, "height": 96, "width": 128} for x in images]
    raw = []
    handle = model.sem_seg_head.register_forward_hook(
        lambda m, a, out: raw.extend(zip(out["pred_logits"], out["pred_masks"]))
    )
    try:
        with torch.no_grad():
            batched = model(inputs)
            alone = [model([x])[0] for x in inputs]
    finally:
        handle.remove()
    for (bl, bm), (sl, sm) in zip(raw[:2], raw[2:]):
        assert torch.equal(bl, sl) and torch.equal(bm, sm)
    for b, s in zip(batched, alone):
        assert torch.equal(b["sem_seg"], s["sem_seg"]) and torch.equal(b["panoptic_seg"][0], s["panoptic_seg"][0])
        assert b["panoptic_seg"][1] == s["panoptic_seg"][1]


def test_tokens_to_map_is_channels_last_contiguous_for_every_batch_size():
    """For one image the old transpose + reshape view had batch stride C, which PyTorch reads as NCHW; a level split
    off a batch of token sequences was not contiguous for B > 1."""
    from universal_seg.layers import tokens_to_map

    for b in (1, 3):
        tokens = torch.randn(b, 20 + 12, 8)
        level = tokens.split([20, 12], dim=1)[0]  # [B, 4*5, C], as the pixel decoder splits its levels
        out, old = tokens_to_map(level, 4, 5), level.transpose(1, 2).reshape(b, 8, 4, 5)
        assert out.is_contiguous(memory_format=torch.channels_last) and torch.equal(out, old)
        w = torch.randn(6, 8, 3, 3)  # a convolution's output keeps the layout PyTorch detected in its input
        assert F.conv2d(out, w, padding=1).is_contiguous(memory_format=torch.channels_last)
        if b == 1:
            assert F.conv2d(old, w, padding=1).is_contiguous()  # the old view: read as NCHW


def test_segformer_b0_batch_equals_alone_bit_for_bit():
    from detectron2.modeling import build_model

    import universal_seg.modeling  # noqa: F401

    cfg = load_config(os.path.join(ROOT, "configs", "ade20k", "semantic", "segformer_b0.yaml"), ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    inputs = [{"image": torch.randint(0, 256, (3, 160, 224), dtype=torch.uint8)} for _ in range(3)]
    with torch.no_grad():
        batched = model(inputs)
        alone = [model([x])[0] for x in inputs]
    assert all(torch.equal(b["sem_seg"], s["sem_seg"]) for b, s in zip(batched, alone))
