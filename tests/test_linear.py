"""universal_seg.ops.linear (fp32 CPU products through oneDNN as a 1x1 convolution) against F.linear in float64, and
the decoder's MultiheadAttention built on it against nn.MultiheadAttention."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from universal_seg.ops import Linear, linear, matmul
from universal_seg.ops.linear import _onednn_applies, matmul_uses_onednn


def reference(x, w, b):
    return F.linear(x.double(), w.double(), None if b is None else b.double())


@pytest.mark.parametrize("shape", [(2, 700, 256), (20, 64), (1, 64), (3, 5, 40, 96)])
@pytest.mark.parametrize("out_features,bias", [(192, True), (1024, False)])
def test_forward_and_backward_match_float64(shape, out_features, bias):
    torch.manual_seed(0)
    layer = Linear(shape[-1], out_features, bias=bias)
    x = torch.randn(shape, requires_grad=True)
    assert _onednn_applies(x, layer.weight)
    y = layer(x)
    assert y.shape == (*shape[:-1], out_features) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), reference(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y)
    y.backward(grad)
    xd = x.detach().double().requires_grad_()
    wd = layer.weight.detach().double().requires_grad_()
    bd = None if layer.bias is None else layer.bias.detach().double().requires_grad_()
    F.linear(xd, wd, bd).backward(grad.double())
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(layer.weight.grad.double(), wd.grad, rtol=1e-5, atol=1e-3)
    if bias:
        torch.testing.assert_close(layer.bias.grad.double(), bd.grad, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("n", [1, 127, 3001])
def test_matmul_matches_float64_product(n):
    torch.manual_seed(0)
    a, b = torch.randn(133, 100), torch.randn(100, n)
    assert matmul_uses_onednn(a, b)
    out = matmul(a, b)
    assert out.shape == (133, n) and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out.double(), a.double() @ b.double(), rtol=1e-5, atol=1e-4)
    # a non-contiguous right factor (a column slice) and a transposed left factor give the same product
    wide = torch.randn(100, n + 50)
    at = a.t().contiguous().t()
    expected = a.double() @ wide[:, 7 : 7 + n].double()
    torch.testing.assert_close(matmul(at, wide[:, 7 : 7 + n]).double(), expected, rtol=1e-5, atol=1e-4)


def test_matmul_falls_back_to_mm_where_onednn_does_not_apply():
    a, b = torch.randn(5, 4).double(), torch.randn(4, 7).double()
    assert not matmul_uses_onednn(a, b)
    assert torch.equal(matmul(a, b), torch.mm(a, b))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not matmul_uses_onednn(a, torch.randn(4, 500))


def test_non_contiguous_input():
    torch.manual_seed(0)
    w, b = torch.randn(64, 48), torch.randn(64)
    x = torch.randn(48, 300).t()  # [300, 48], column-major
    assert not x.is_contiguous() and _onednn_applies(x, w)
    torch.testing.assert_close(linear(x, w, b).double(), reference(x, w, b), rtol=1e-5, atol=1e-5)
    x = torch.randn(400, 2, 48)[:, 0]  # row stride 96
    torch.testing.assert_close(linear(x, w, b).double(), reference(x, w, b), rtol=1e-5, atol=1e-5)


def test_falls_back_to_f_linear_where_it_does_not_apply():
    w = torch.randn(8, 16)
    assert not _onednn_applies(torch.randn(16), w)  # a vector
    assert not _onednn_applies(torch.randn(500, 16).double(), w.double())
    assert not _onednn_applies(torch.randn(0, 16), w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _onednn_applies(torch.randn(500, 16), w)
        assert linear(torch.randn(500, 16), w).dtype == torch.bfloat16  # autocast's linear, as nn.Linear
    assert linear(torch.randn(0, 16), w).shape == (0, 8)


def test_traced_graph_keeps_a_linear_op():
    layer = Linear(16, 8).eval()
    traced = torch.jit.trace(layer, torch.randn(500, 16))
    kinds = {node.kind() for node in traced.graph.nodes()}
    assert "aten::linear" in kinds and "aten::conv2d" not in kinds and "aten::_convolution" not in kinds


def test_same_state_dict_as_nn_linear():
    layer = Linear(4, 3)
    assert isinstance(layer, nn.Linear)
    plain = nn.Linear(4, 3)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(256, 4)
    torch.testing.assert_close(layer(x), plain(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lk,with_mask", [(300, True), (40, False)])
def test_decoder_multihead_attention_matches_torch(lk, with_mask):
    """The decoder's MultiheadAttention (oneDNN projections + SDPA) against nn.MultiheadAttention with the same state
    dict, in float64 (reference) and fp32 (ours), with a boolean mask that blocks some positions per query and head."""
    from universal_seg.modeling.transformer_decoder.attention_layers import MultiheadAttention

    torch.manual_seed(0)
    B, Lq, C, H = 2, 150, 64, 8
    ours = MultiheadAttention(C, H).eval()
    ref = nn.MultiheadAttention(C, H, batch_first=True).double().eval()
    ref.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})  # strict: the same names
    nn.init.normal_(ours.in_proj_bias)  # non-zero biases, copied to the reference
    ref.in_proj_bias.data.copy_(ours.in_proj_bias.double())
    q, k, v = torch.randn(B, Lq, C), torch.randn(B, lk, C), torch.randn(B, lk, C)
    mask = torch.rand(B * H, Lq, lk) < 0.3 if with_mask else None
    if mask is not None:
        mask[:, :, 0] = False  # every query keeps one position
    with torch.no_grad():
        out = ours(q, k, v, mask)
        expected = ref(q.double(), k.double(), v.double(), attn_mask=mask, need_weights=False)[0]
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
