"""MSDeformAttn op: compiled CPU (and, when present, CUDA) kernels against the grid_sample reference."""

import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import make_ms_deform_attn_inputs

from universal_seg.ops import MSDeformAttn, _extension, ms_deform_attn, ms_deform_attn_reference, use_ms_deform_attn_op
from universal_seg.ops.ms_deform_attn_function import MSDeformAttnFunction

# Shapes covering odd channel counts, 1-4 levels, Lq != S, single points and many points.
SHAPES = [
    dict(N=1, M=1, D=1, shapes=((3, 4),), Lq=2, P=1),
    dict(N=2, M=3, D=5, shapes=((7, 9), (4, 5), (2, 3)), Lq=11, P=3),
    dict(N=1, M=2, D=7, shapes=((5, 6), (3, 3)), Lq=23, P=2),
    dict(N=2, M=2, D=3, shapes=((6, 5), (3, 4), (2, 2), (1, 1)), Lq=4, P=4),
    dict(N=1, M=4, D=33, shapes=((4, 4), (2, 2), (1, 2)), Lq=6, P=2),  # D > one CUDA warp
    dict(N=2, M=2, D=32, shapes=((5, 7), (3, 4), (2, 2)), Lq=9, P=4),  # the CPU kernels' compile-time D (Mask2Former)
]
CUDA = torch.cuda.is_available()


def _ext():
    ext = _extension.load_extension()
    assert ext is not None, "universal_seg._C must be built for these tests (bash scripts/setup.sh)"
    return ext


def _grads(fn, inputs, grad_out):
    value, ss, lsi, loc, attn = inputs
    out = fn(value, ss, lsi, loc, attn)
    return (out, *torch.autograd.grad(out, (value, loc, attn), grad_out))


def _to(inputs, dtype=None, device=None, loc_dtype=None):
    """Leaf copies: value in dtype, locations / weights in loc_dtype (default: dtype)."""
    value, ss, lsi, loc, attn = inputs
    value = value.detach().to(device=device, dtype=dtype).requires_grad_()
    loc, attn = [t.detach().to(device=device, dtype=loc_dtype or dtype).requires_grad_() for t in (loc, attn)]
    return value, ss.to(device), lsi.to(device), loc, attn


@pytest.mark.parametrize("cfg", SHAPES)
def test_forward_float64_equals_reference(cfg):
    inputs = make_ms_deform_attn_inputs(**cfg)
    torch.testing.assert_close(ms_deform_attn(*inputs), ms_deform_attn_reference(*inputs), rtol=0, atol=1e-10)


@pytest.mark.parametrize("cfg", SHAPES)
def test_forward_float32_equals_reference(cfg):
    inputs = make_ms_deform_attn_inputs(dtype=torch.float32, **cfg)
    torch.testing.assert_close(ms_deform_attn(*inputs), ms_deform_attn_reference(*inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", SHAPES)
def test_backward_float64_equals_reference_autograd(cfg):
    inputs = make_ms_deform_attn_inputs(requires_grad=True, **cfg)
    grad_out = torch.randn(cfg["N"], cfg["Lq"], cfg["M"] * cfg["D"], dtype=torch.float64)
    for ours, ref in zip(_grads(ms_deform_attn, inputs, grad_out), _grads(ms_deform_attn_reference, inputs, grad_out)):
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cfg", SHAPES)
def test_gradcheck_cpu_kernel(cfg):
    value, ss, lsi, loc, attn = make_ms_deform_attn_inputs(requires_grad=True, **cfg)
    _ext()

    def fn(v, loc, a):  # the compiled kernel, no fallback
        return MSDeformAttnFunction.apply(v, ss, lsi, loc, a)

    assert torch.autograd.gradcheck(fn, (value, loc, attn), eps=1e-6, atol=1e-6, rtol=1e-5)


# Run in a fresh process per instruction set (UNIVERSAL_SEG_CPU_ISA is read once per process): the forced variant
# is the one in use, and its forward (float64, float32, bfloat16) and backward (float64) equal the float64
# reference on the generic-D and the specialised-D (32) shapes, with points beyond the borders and a NaN location.
_ISA_CHECK = """
import sys, torch
from conftest import make_ms_deform_attn_inputs
from universal_seg import _C
from universal_seg.ops import ms_deform_attn, ms_deform_attn_reference
assert _C.cpu_isa() == sys.argv[1], (_C.cpu_isa(), sys.argv[1])
torch.set_num_threads(2)
for cfg in (dict(N=2, M=3, D=5, Lq=11, P=3), dict(N=2, M=2, D=32, shapes=((5, 7), (3, 4), (2, 2)), Lq=9, P=4)):
    value, ss, lsi, loc, attn = make_ms_deform_attn_inputs(requires_grad=True, **cfg)
    with torch.no_grad():  # a NaN location samples nothing, like a point far outside (the reference's input)
        loc[0, 0, 0, 0, 0, 0] = 5.0
        loc_nan = loc.detach().clone()
        loc_nan[0, 0, 0, 0, 0, 0] = float("nan")
    loc_nan.requires_grad_()
    ref = ms_deform_attn_reference(value, ss, lsi, loc, attn)
    ours = ms_deform_attn(value, ss, lsi, loc_nan, attn)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    grad_out = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (value, loc, attn), grad_out)
    our_grads = torch.autograd.grad(ours, (value, loc_nan, attn), grad_out)
    for a, b in zip(our_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        low = ms_deform_attn(value.detach().to(dtype), ss, lsi, loc.detach().float(), attn.detach().float())
        err = float((low.double() - ref).abs().max() / ref.abs().max())
        assert err < tol, (dtype, err)
print("ok", _C.cpu_isa())
"""


def _run_with_cpu_isa(isa: str) -> subprocess.CompletedProcess:
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, UNIVERSAL_SEG_CPU_ISA=isa, PYTHONPATH=os.pathsep.join([os.path.dirname(tests), tests]))
    cmd = [sys.executable, "-c", _ISA_CHECK, isa]
    return subprocess.run(cmd, cwd=tests, env=env, capture_output=True, text=True, timeout=300)


def test_every_cpu_isa_the_machine_supports_equals_the_float64_reference():
    isas = _ext().supported_cpu_isas()
    assert isas[0] == "default" and set(isas) <= {"default", "avx2", "avx512"}
    for isa in isas:
        proc = _run_with_cpu_isa(isa)
        assert proc.returncode == 0 and f"ok {isa}" in proc.stdout, f"{isa}:\n{proc.stderr[-3000:]}"


def test_unknown_or_unsupported_cpu_isa_is_refused_with_the_fix():
    ext = _ext()
    proc = _run_with_cpu_isa("avx9000")
    assert proc.returncode != 0
    assert "UNIVERSAL_SEG_CPU_ISA=avx9000 is not a known instruction set; unset it" in proc.stderr
    unsupported = [isa for isa in ("avx2", "avx512") if isa not in ext.supported_cpu_isas()]
    if unsupported:  # only on a CPU (or a non-x86 build) without them
        proc = _run_with_cpu_isa(unsupported[-1])
        assert proc.returncode != 0 and "cannot run the" in proc.stderr and "one of: default" in proc.stderr


def test_points_exactly_on_borders_and_outside():
    """x, y in {0, 1} are the level's outer edges (half a pixel beyond the outermost centres); beyond them the
    sample fades to zero, and a point fully outside contributes nothing."""
    value, ss, lsi, loc, attn = make_ms_deform_attn_inputs(N=1, M=1, D=2, shapes=((3, 4),), Lq=6, P=1)
    edges = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.5], [-0.5, 0.5], [0.5, 1.7]], dtype=torch.float64)
    loc = edges.view(1, 6, 1, 1, 1, 2).clone()
    attn = torch.ones(1, 6, 1, 1, 1, dtype=torch.float64)
    out = ms_deform_attn(value, ss, lsi, loc, attn)
    torch.testing.assert_close(out, ms_deform_attn_reference(value, ss, lsi, loc, attn), rtol=0, atol=1e-12)
    # hand-computed: corner (0, 0) at x = y = 0 is pixel (0, 0) weighted 1/4 (the other 3 neighbours are padding)
    torch.testing.assert_close(out[0, 0], value[0, 0, 0] / 4, rtol=0, atol=1e-12)
    torch.testing.assert_close(out[0, 4:], torch.zeros(2, 2, dtype=torch.float64), rtol=0, atol=0)


def test_non_finite_locations_give_zero_not_a_crash():
    value, ss, lsi, loc, attn = make_ms_deform_attn_inputs(N=1, M=2, D=4, Lq=3)
    loc = loc.clone()
    loc[0, 0] = float("nan")
    loc[0, 1] = float("inf")
    loc[0, 2] = -1e30
    out = ms_deform_attn(value, ss, lsi, loc, attn)
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_half_precision_against_float64_cpu(dtype, tol):
    """fp16 / bf16 values with fp32 locations / weights (as under AMP) and fp32 accumulation: relative error
    (to the output's scale) within tol."""
    cfg = SHAPES[1]
    inputs64 = make_ms_deform_attn_inputs(requires_grad=True, **cfg)
    grad_out = torch.randn(cfg["N"], cfg["Lq"], cfg["M"] * cfg["D"], dtype=torch.float64)
    ref = _grads(ms_deform_attn_reference, inputs64, grad_out)
    low = _grads(ms_deform_attn, _to(inputs64, dtype, loc_dtype=torch.float32), grad_out.to(dtype))
    assert low[0].dtype == dtype and low[1].dtype == dtype  # output and grad_value in the value dtype
    assert low[2].dtype == torch.float32 and low[3].dtype == torch.float32  # locations / weights stay fp32
    for ours, exact in zip(low, ref):
        err = (ours.double() - exact).abs().max() / exact.abs().max()
        assert err < tol, f"relative error {err:.2e} >= {tol}"


def test_invalid_inputs_raise_clear_errors():
    value, ss, lsi, loc, attn = make_ms_deform_attn_inputs()
    with pytest.raises(ValueError, match="level_start_index"):
        ms_deform_attn(value, ss, lsi + 1, loc, attn)
    with pytest.raises(ValueError, match="cover"):
        ms_deform_attn(value[:, :-1], ss, lsi, loc, attn)
    with pytest.raises(ValueError, match="attention_weights"):
        ms_deform_attn(value, ss, lsi, loc, attn[..., :-1])
    with pytest.raises(ValueError, match="sampling_locations"):
        ms_deform_attn(value, ss, lsi, loc[..., :1], attn)
    with pytest.raises(ValueError, match="value must be"):
        ms_deform_attn(value.long(), ss, lsi, loc, attn)
    with pytest.raises(ValueError, match="integer"):
        ms_deform_attn(value, ss.double(), lsi, loc, attn)


def test_compiled_kernel_checks_its_own_inputs():
    """Called directly, the extension refuses bad input with an error instead of reading out of bounds."""
    ext = _ext()
    value, ss, lsi, loc, attn = make_ms_deform_attn_inputs()
    with pytest.raises(RuntimeError, match="level_start_index"):
        ext.ms_deform_attn_forward(value, ss, lsi + 3, loc, attn)
    with pytest.raises(RuntimeError, match="S ="):
        ext.ms_deform_attn_forward(value[:, :5].contiguous(), ss, lsi, loc, attn)
    with pytest.raises(RuntimeError, match="contiguous"):
        ext.ms_deform_attn_forward(value.transpose(0, 1).contiguous().transpose(0, 1), ss, lsi, loc, attn)
    with pytest.raises(RuntimeError, match="sampling_locations and attention_weights must be"):
        ext.ms_deform_attn_forward(value.float(), ss, lsi, loc, attn)
    with pytest.raises(RuntimeError, match="grad_output"):
        ext.ms_deform_attn_backward(value, ss, lsi, loc, attn, torch.zeros(1, dtype=torch.float64))


def test_fallback_to_reference_warns_once_with_the_fix(monkeypatch):
    """Without the extension, results still come (from the reference) after one warning naming the build step."""
    import builtins

    real_import = builtins.__import__

    def no_extension(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "universal_seg" and fromlist and "_C" in fromlist:
            raise ImportError("simulated missing extension")
        return real_import(name, globals, locals, fromlist, level)

    _extension.load_extension.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_extension)
    monkeypatch.delitem(__import__("sys").modules, "universal_seg._C", raising=False)
    try:
        inputs = make_ms_deform_attn_inputs()
        with pytest.warns(RuntimeWarning, match="scripts/setup.sh"):
            out = ms_deform_attn(*inputs)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no second warning
            ms_deform_attn(*inputs)
        torch.testing.assert_close(out, ms_deform_attn_reference(*inputs), rtol=0, atol=0)
    finally:
        monkeypatch.undo()
        _extension.load_extension.cache_clear()
    assert _extension.load_extension() is not None


def test_module_init_matches_deformable_detr():
    """Hand-computed init for 4 heads: directions (1,0), (0,1), (-1,0), (0,-1) on the unit square, point i at
    distance i+1; attention weights zero (uniform softmax); projections with zero bias."""
    m = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    assert torch.count_nonzero(m.sampling_offsets.weight) == 0
    bias = m.sampling_offsets.bias.view(4, 2, 3, 2)
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    for head in range(4):
        for level in range(2):
            for point in range(3):
                torch.testing.assert_close(bias[head, level, point], directions[head] * (point + 1), atol=1e-6, rtol=0)
    assert torch.count_nonzero(m.attention_weights.weight) == 0 and torch.count_nonzero(m.attention_weights.bias) == 0
    assert torch.count_nonzero(m.value_proj.bias) == 0 and torch.count_nonzero(m.output_proj.bias) == 0
    # xavier_uniform bound sqrt(6 / (fan_in + fan_out))
    assert m.value_proj.weight.abs().max() <= (6 / 32) ** 0.5


def test_module_state_dict_names_match_official_checkpoints():
    m = MSDeformAttn(d_model=256, n_levels=3, n_heads=8, n_points=4)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    # from the official Mask2Former R50 checkpoint (pixel_decoder.transformer.encoder.layers.N.self_attn.*)
    assert shapes == {
        "sampling_offsets.weight": (192, 256),
        "sampling_offsets.bias": (192,),
        "attention_weights.weight": (96, 256),
        "attention_weights.bias": (96,),
        "value_proj.weight": (256, 256),
        "value_proj.bias": (256,),
        "output_proj.weight": (256, 256),
        "output_proj.bias": (256,),
    }


def test_module_forward_compiled_equals_reference():
    torch.manual_seed(0)
    m = MSDeformAttn(d_model=24, n_levels=2, n_heads=4, n_points=2).double()
    for p in m.parameters():  # move away from the init so offsets and weights are not trivial
        torch.nn.init.normal_(p, std=0.3)
    ss = torch.tensor([[6, 5], [3, 3]])
    lsi = torch.tensor([0, 30])
    x = torch.randn(2, 39, 24, dtype=torch.float64)
    ref_pts = torch.rand(2, 39, 2, 2, dtype=torch.float64)
    mask = torch.zeros(2, 39, dtype=torch.bool)
    mask[1, -5:] = True
    out = m(x, ref_pts, x, ss, lsi, mask)
    with use_ms_deform_attn_op(ms_deform_attn_reference):
        expected = m(x, ref_pts, x, ss, lsi, mask)
    assert out.shape == (2, 39, 24)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_module_forward_matches_written_out_formula(dtype, tol):
    """The layer against Deformable DETR's equations written out with plain ops (float32 with 200 queries also runs
    the oneDNN projections and the folded offset scaling): value = proj(x), weights = softmax over L*P,
    locations = reference + offset / (W_l, H_l), output = proj(sum of weighted bilinear samples)."""
    torch.manual_seed(0)
    M, L, P, C = 4, 2, 3, 32
    m = MSDeformAttn(d_model=C, n_levels=L, n_heads=M, n_points=P).to(dtype)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    ss = torch.tensor([[10, 12], [5, 8]])
    lsi = torch.tensor([0, 120])
    x = torch.randn(2, 160, C, dtype=dtype)
    query = torch.randn(2, 200, C, dtype=dtype)
    ref_pts = torch.rand(2, 200, L, 2, dtype=dtype)
    with torch.no_grad():
        out = m(query, ref_pts, x, ss, lsi)
        value = F.linear(x.double(), m.value_proj.weight.double(), m.value_proj.bias.double()).view(2, 160, M, C // M)
        off = F.linear(query.double(), m.sampling_offsets.weight.double(), m.sampling_offsets.bias.double())
        logits = F.linear(query.double(), m.attention_weights.weight.double(), m.attention_weights.bias.double())
        weights = torch.softmax(logits.view(2, 200, M, L * P), -1).view(2, 200, M, L, P)
        normalizer = torch.tensor([[12.0, 10.0], [8.0, 5.0]], dtype=torch.float64)  # (W_l, H_l)
        locations = ref_pts.double()[:, :, None, :, None, :] + off.view(2, 200, M, L, P, 2) / normalizer[:, None, :]
        sampled = ms_deform_attn_reference(value, ss, lsi, locations, weights)
        expected = F.linear(sampled, m.output_proj.weight.double(), m.output_proj.bias.double())
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


def test_module_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=30, n_heads=8)


def _cuda_toolkit_at_build_time() -> bool:
    if os.environ.get("UNIVERSAL_SEG_CUDA", "auto").lower() in ("0", "false", "no"):
        return False
    return bool(os.environ.get("CUDA_HOME") or shutil.which("nvcc"))


@pytest.mark.skipif(not _cuda_toolkit_at_build_time(), reason="no nvcc / CUDA_HOME: a CPU-only build is expected")
def test_cuda_kernels_are_compiled_in_when_nvcc_is_available():
    assert _ext().cuda_version() >= 11000, "nvcc is available but universal_seg._C has no CUDA kernels"


# ----------------------------------------------------------------------------------------------- CUDA
cuda_only = pytest.mark.skipif(not CUDA, reason="no CUDA device")


@cuda_only
@pytest.mark.parametrize("cfg", SHAPES)
def test_cuda_forward_backward_float64_equal_reference(cfg):
    assert _ext().cuda_version() > 0
    inputs = _to(make_ms_deform_attn_inputs(**cfg), device="cuda")
    grad_out = torch.randn(cfg["N"], cfg["Lq"], cfg["M"] * cfg["D"], dtype=torch.float64, device="cuda")
    for ours, ref in zip(_grads(ms_deform_attn, inputs, grad_out), _grads(ms_deform_attn_reference, inputs, grad_out)):
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)


@cuda_only
@pytest.mark.parametrize("cfg", SHAPES[:3])
def test_cuda_gradcheck(cfg):
    value, ss, lsi, loc, attn = _to(make_ms_deform_attn_inputs(**cfg), device="cuda")

    def fn(v, loc, a):
        return MSDeformAttnFunction.apply(v, ss, lsi, loc, a)

    assert torch.autograd.gradcheck(fn, (value, loc, attn), eps=1e-6, atol=1e-6, rtol=1e-5)


@cuda_only
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_cuda_low_precision_against_float64(dtype, tol):
    cfg = SHAPES[1]
    inputs64 = _to(make_ms_deform_attn_inputs(**cfg), device="cuda")
    grad_out = torch.randn(cfg["N"], cfg["Lq"], cfg["M"] * cfg["D"], dtype=torch.float64, device="cuda")
    ref = _grads(ms_deform_attn_reference, inputs64, grad_out)
    low = _grads(ms_deform_attn, _to(inputs64, dtype, loc_dtype=torch.float32), grad_out.to(dtype))
    for ours, exact in zip(low, ref):
        err = (ours.double() - exact).abs().max() / exact.abs().max()
        assert err < tol, f"{dtype}: relative error {err:.2e} >= {tol}"


@cuda_only
def test_cuda_matches_cpu_kernel_float32():
    cfg = dict(N=2, M=8, D=32, shapes=((16, 16), (8, 8), (4, 4)), Lq=50, P=4)
    cpu = make_ms_deform_attn_inputs(dtype=torch.float32, requires_grad=True, **cfg)
    gpu = _to(cpu, device="cuda")
    grad_out = torch.randn(2, 50, 256)
    for a, b in zip(_grads(ms_deform_attn, cpu, grad_out), _grads(ms_deform_attn, gpu, grad_out.cuda())):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-4, atol=1e-4)


# Channel counts and dtypes covering both CUDA layouts: the 16-byte vector one (D a multiple of 4 fp32 / 8 half /
# 2 fp64 channels; one to several chunks per thread) and the scalar one (odd D), plus a misaligned value.
LAYOUTS = [
    dict(N=2, M=8, D=32, shapes=((9, 11), (5, 6), (3, 3)), Lq=37, P=4),  # Mask2Former's head size
    dict(N=1, M=2, D=256, shapes=((6, 5), (3, 3)), Lq=9, P=2),  # more chunks than one warp holds
    dict(N=2, M=3, D=8, shapes=((7, 9), (4, 5)), Lq=13, P=3),  # groups of 1-2 threads
    dict(N=1, M=4, D=6, shapes=((5, 6), (3, 3)), Lq=10, P=2),  # not a multiple of the vector: scalar layout
]


@cuda_only
@pytest.mark.parametrize("cfg", LAYOUTS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_cuda_layouts_against_float64_reference(cfg, dtype, tol):
    inputs64 = make_ms_deform_attn_inputs(**cfg)
    grad_out = torch.randn(cfg["N"], cfg["Lq"], cfg["M"] * cfg["D"], dtype=torch.float64)
    ref = _grads(ms_deform_attn_reference, _to(inputs64), grad_out)
    loc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    ours = _grads(ms_deform_attn, _to(inputs64, dtype, device="cuda", loc_dtype=loc_dtype), grad_out.to("cuda", dtype))
    for a, exact in zip(ours, ref):
        err = (a.double().cpu() - exact).abs().max() / exact.abs().max()
        assert err < tol, f"{dtype} D={cfg['D']}: relative error {err:.2e} >= {tol}"


@cuda_only
def test_cuda_misaligned_value_takes_the_scalar_path():
    cfg = LAYOUTS[0]
    value, ss, lsi, loc, attn = make_ms_deform_attn_inputs(dtype=torch.float32, **cfg)
    flat = torch.cat([torch.zeros(1), value.flatten()]).cuda()
    shifted = flat[1:].view(value.shape)  # contiguous, but 4 bytes past a 16-byte boundary
    assert shifted.data_ptr() % 16 != 0 and shifted.is_contiguous()
    out = ms_deform_attn(shifted, ss, lsi, loc.cuda(), attn.cuda())
    torch.testing.assert_close(out.cpu(), ms_deform_attn_reference(value, ss, lsi, loc, attn), rtol=1e-5, atol=1e-5)


@cuda_only
def test_cuda_level_table_on_gpu_or_cpu_gives_the_same_result():
    value, ss, lsi, loc, attn = _to(make_ms_deform_attn_inputs(dtype=torch.float32, **LAYOUTS[0]), device="cuda")
    on_cpu = ms_deform_attn(value, ss.cpu(), lsi.cpu(), loc, attn)
    torch.testing.assert_close(ms_deform_attn(value, ss, lsi, loc, attn), on_cpu, rtol=0, atol=0)


@cuda_only
def test_cuda_call_with_cpu_level_table_does_not_synchronise():
    """The hot path (CPU level table, as the pixel decoder passes it) makes no host synchronisation: forward and
    backward of the op and of the MSDeformAttn layer run under torch's sync debug mode set to "error"."""
    inputs = make_ms_deform_attn_inputs(dtype=torch.float32, **LAYOUTS[0])
    ss, lsi = inputs[1], inputs[2]  # CPU tables
    value, _, _, loc, attn = _to(inputs, device="cuda")
    layer = MSDeformAttn(d_model=64, n_levels=3, n_heads=8, n_points=4).cuda()
    S = int(ss.prod(1).sum())
    x = torch.randn(2, S, 64, device="cuda", requires_grad=True)
    ref_pts = torch.rand(2, S, 3, 2, device="cuda")
    ms_deform_attn(value, ss, lsi, loc, attn)  # first call: loads the extension, checks the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = ms_deform_attn(value, ss, lsi, loc, attn)
        torch.autograd.grad(out.sum(), (value, loc, attn))
        y = layer(x, ref_pts, x, ss, lsi)
        torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda_only
def test_cuda_inconsistent_cpu_level_table_raises_on_the_host():
    value, ss, lsi, loc, attn = _to(make_ms_deform_attn_inputs(dtype=torch.float32), device="cuda")
    with pytest.raises(ValueError, match="level_start_index"):
        ms_deform_attn(value, ss.cpu(), lsi.cpu() + 1, loc, attn)
    with pytest.raises(ValueError, match="cover"):
        ms_deform_attn(value[:, :-1], ss.cpu(), lsi.cpu(), loc, attn)


@cuda_only
@pytest.mark.parametrize("bad", ["starts", "short_value"])
def test_cuda_inconsistent_gpu_level_table_stops_the_kernel(bad):
    """A level table on the GPU is checked by the kernel: an inconsistent one raises (a device-side assertion,
    which poisons the CUDA context, hence the subprocess) instead of reading out of bounds."""
    import subprocess
    import sys

    code = f"""
import torch
from conftest import make_ms_deform_attn_inputs
from universal_seg.ops import ms_deform_attn
value, ss, lsi, loc, attn = [t.cuda() for t in make_ms_deform_attn_inputs(dtype=torch.float32)]
if {bad!r} == "starts":
    lsi = lsi + 5
else:
    value = value[:, :-3].contiguous()
ms_deform_attn(value, ss, lsi, loc, attn)
torch.cuda.synchronize()
print("NO ERROR")
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "NO ERROR" not in proc.stdout
    assert proc.returncode != 0 and "device-side assert" in proc.stderr, proc.stderr[-2000:]


@cuda_only
def test_cuda_backward_refuses_deterministic_mode():
    value, ss, lsi, loc, attn = _to(make_ms_deform_attn_inputs(dtype=torch.float32), device="cuda")
    out = ms_deform_attn(value, ss, lsi, loc, attn)
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        with pytest.raises(RuntimeError, match="ms_deform_attn_backward_cuda"):
            torch.autograd.grad(out.sum(), value, retain_graph=True)
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match="ms_deform_attn_backward_cuda"):
            torch.autograd.grad(out.sum(), value)
    finally:
        torch.use_deterministic_algorithms(previous)


@cuda_only
def test_cuda_device_is_covered_by_the_build():
    from universal_seg.ops._extension import check_cuda_device
    from universal_seg.ops.cuda_arch import parse_targets

    major, minor = torch.cuda.get_device_capability()
    built = parse_targets(_ext().cuda_targets())
    image = check_cuda_device("cuda")
    exact = [f"sm_{ma}{mi}{sfx}" for kind, ma, mi, sfx in built if kind == "sm" and (ma, mi) == (major, minor)]
    if exact:  # e.g. the GPU suite's build for the local GPU (sm_90 or sm_90a)
        assert image in exact
    else:  # older machine code of the same major version, or PTX
        assert image.startswith(f"sm_{major}") or image.startswith("compute_"), (image, built)
