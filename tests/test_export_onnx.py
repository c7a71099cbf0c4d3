"""ONNX export (universal_seg.export.export_onnx, tools/export_model.py --format onnx) against ONNX Runtime (CPU).

Truth: the eager meta-architecture's own outputs ("sem_seg", "panoptic_seg", "instances", with the compiled
MSDeformAttn op) and its head's outputs, at two input sizes and batch sizes of one exported file; the grid_sample
reference for the gather formulation of MSDeformAttn. Weights are random (seeded): the parity does not depend on
training. Exports are the slow part (the exporter reasons about symbolic sizes), so each model is exported once.
"""

import importlib.util
import os
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import ROOT, load_cfg, make_ms_deform_attn_inputs
from detectron2.modeling import build_model

import universal_seg.data  # noqa: F401  (dataset metadata: thing classes)
import universal_seg.modeling  # noqa: F401
from universal_seg.export import OnnxExportWrapper, export_onnx, gather_ms_deform_attn
from universal_seg.export_postprocess import instance_postprocess, panoptic_postprocess
from universal_seg.modeling.position_encoding import PositionEmbeddingSine
from universal_seg.ops.ms_deform_attn_reference import ms_deform_attn_reference

TOL = 1e-4
# (batch, height, width) of the two checks: the export example's size, then another batch and a size that is not a
# multiple of the size divisibility (padding inside the graph)
EXAMPLE = (64, 96)
CHECKS = [(1, 64, 96), (2, 88, 53)]


def _images(batch, height, width, seed):
    """uint8-valued float images [B, 3, H, W] (what the eager model sees from a uint8 image)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, height, width), generator=g).float()


def _run(session, images):
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"image": images.numpy()})))


def _declared(value: onnx.ValueInfoProto) -> tuple:
    """The dimensions an ONNX input / output declares: dim_param (a name or an expression) or dim_value."""
    return tuple(d.dim_param if d.HasField("dim_param") else d.dim_value for d in value.type.tensor_type.shape.dim)


# outputs whose last two dimensions are the input's (the others are at the decoder's or the head's resolution)
FULL_SIZE_OUTPUTS = ("mask_logits", "sem_seg", "sem_seg_map")


def assert_axes_named(path: str) -> dict[str, tuple]:
    """The file at ``path`` (read by onnx) declares the input image as [batch, 3, height, width] and every output
    with the first dimension batch and, for FULL_SIZE_OUTPUTS, the last two height, width; returns {output name:
    declared dimensions}."""
    model = onnx.load(path)
    assert {v.name: _declared(v) for v in model.graph.input} == {"image": ("batch", 3, "height", "width")}
    outputs = {v.name: _declared(v) for v in model.graph.output}
    for name, dims in outputs.items():
        assert dims[0] == "batch", (name, dims)
        if name in FULL_SIZE_OUTPUTS:
            assert dims[-2:] == ("height", "width"), (name, dims)
        else:  # no exporter symbol (s0, s1, ...) left in an expression either
            assert all(
                isinstance(d, int) or set(re.findall(r"[A-Za-z_]\w*", d)) <= {"height", "width"} for d in dims[1:]
            )
    return outputs


def assert_shapes_as_declared(declared: dict[str, tuple], got: dict, batch: int, height: int, width: int) -> None:
    """Every output ONNX Runtime returned for a [batch, 3, height, width] input has the shape its declaration
    (names and expressions such as 8*(((height + 31)//32)), evaluated at those sizes) gives."""
    sizes = {"batch": batch, "height": height, "width": width, "Min": min, "Max": max}
    for name, dims in declared.items():
        expected = tuple(d if isinstance(d, int) else eval(d, {"__builtins__": {}}, sizes) for d in dims)
        assert got[name].shape == expected, (name, dims)


# ----------------------------------------------------------------------------------------------- the op alone
def test_gather_formulation_equals_grid_sample_reference():
    """float64, locations beyond the borders (zero padding), three levels: the gather formulation reproduces
    the grid_sample reference."""
    args = make_ms_deform_attn_inputs(N=2, M=3, D=5, shapes=((7, 9), (4, 5), (2, 3)), Lq=11, P=3)
    torch.testing.assert_close(gather_ms_deform_attn(*args), ms_deform_attn_reference(*args), atol=1e-12, rtol=0)
    args32 = [a.float() if a.is_floating_point() else a for a in args]
    out = gather_ms_deform_attn(*args32)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ms_deform_attn_reference(*args32), atol=1e-5, rtol=1e-5)


class _Op(torch.nn.Module):
    def forward(self, value, spatial_shapes, level_start_index, locations, weights):
        return gather_ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)


def test_gather_formulation_onnxruntime_with_other_level_sizes(tmp_path):
    """One exported op serves level tables it was not exported with (the sizes are data, not constants)."""
    dyn = torch.export.Dim.DYNAMIC
    example = make_ms_deform_attn_inputs(N=1, shapes=((6, 8), (3, 4)), Lq=7, dtype=torch.float32)
    path = str(tmp_path / "op.onnx")
    with torch.no_grad():
        torch.onnx.export(
            _Op(),
            tuple(example),
            path,
            dynamo=True,
            dynamic_shapes=({0: dyn, 1: dyn}, None, None, {0: dyn, 1: dyn}, {0: dyn, 1: dyn}),
            input_names=["value", "spatial_shapes", "level_start_index", "locations", "weights"],
            external_data=False,
        )
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for n, shapes, lq in [(1, ((6, 8), (3, 4)), 7), (2, ((5, 11), (2, 3)), 13)]:
        args = make_ms_deform_attn_inputs(N=n, shapes=shapes, Lq=lq, dtype=torch.float32, seed=n)
        names = ["value", "spatial_shapes", "level_start_index", "locations", "weights"]
        got = session.run(None, {k: a.numpy() for k, a in zip(names, args)})[0]
        np.testing.assert_allclose(got, ms_deform_attn_reference(*args).numpy(), atol=1e-5, rtol=1e-5)


def test_unmasked_sine_encoding_equals_cumulative_formulation():
    """The 1-D-table encoding used without padding (and by the export) equals the cumulative-sum formulation."""
    module = PositionEmbeddingSine(16)
    for h, w in [(1, 1), (5, 7), (12, 3)]:
        x = torch.empty(2, 3, h, w)
        assert torch.equal(module._encode_unmasked(x), module._encode(x, None))


def test_axis_names_refuse_a_symbol_shared_by_height_and_width():
    """The rename maps the exporter's symbols of the input's dimensions 0, 2, 3 to batch, height, width; a symbol
    tying height to width (a graph for square images only) is refused, a dimension fixed to a number is left."""
    import onnx_ir as ir

    from universal_seg.export import _input_axis_names

    shape = ir.Shape([ir.SymbolicDim("s7"), 3, ir.SymbolicDim("s0"), ir.SymbolicDim("s12")])
    assert _input_axis_names(shape) == {"s7": "batch", "s0": "height", "s12": "width"}
    assert _input_axis_names(ir.Shape([ir.SymbolicDim("s7"), 3, 64, ir.SymbolicDim("s12")])) == {
        "s7": "batch",
        "s12": "width",
    }
    with pytest.raises(ValueError, match="gave the image's height and width one symbol"):
        _input_axis_names(ir.Shape([ir.SymbolicDim("s7"), 3, ir.SymbolicDim("s1"), ir.SymbolicDim("s1")]))


# ---------------------------------------------------------------------------------------------- whole models
def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MINI = "configs/mini/panoptic/m2f_r18.yaml"
# Exports take time per layer, and repeated layers export alike: one encoder layer and three decoder layers (one per
# feature level of the round robin, plus the prediction before the first) cover every kind of layer.
FEWER_LAYERS = ["MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.MASK_FORMER.DEC_LAYERS", "4"]
# thresholds opened so that the untrained model has panoptic segments to compare
MINI_OPTS = [
    "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.0", "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", "0.5",
    *FEWER_LAYERS,
]  # fmt: skip


@pytest.fixture(scope="module")
def mini_export(tmp_path_factory):
    """The mini Mask2Former (random weights saved as a .pth) exported by tools/export_model.py --format onnx."""
    torch.manual_seed(0)
    cfg = load_cfg(MINI, *MINI_OPTS)
    model = build_model(cfg).eval()
    folder = tmp_path_factory.mktemp("onnx")
    weights = str(folder / "mini.pth")
    torch.save({"model": model.state_dict()}, weights)
    out = str(folder / "mini.onnx")
    tool = _load_tool("export_model")
    code = tool.main(
        ["--config-file", str(ROOT / MINI), "--format", "onnx", "--output", out, "--size", *map(str, EXAMPLE)]
        + ["MODEL.WEIGHTS", weights, *MINI_OPTS]
    )
    assert code == 0
    return model, ort.InferenceSession(out, providers=["CPUExecutionProvider"]), out


def test_mini_mask2former_onnx_axes_are_named(mini_export):
    """The exported file names the image's symbolic dimensions batch, height, width (not the exporter's s0, s1, ...)
    in its input and its outputs; the decoder-resolution masks are expressions of height and width."""
    declared = assert_axes_named(mini_export[2])
    assert declared["pred_logits"] == ("batch", 20, 22)
    assert declared["pred_masks"][:2] == ("batch", 20) and all(isinstance(d, str) for d in declared["pred_masks"][2:])


@pytest.mark.parametrize("check", CHECKS)
def test_mini_mask2former_onnx_equals_eager(mini_export, check):
    """Every output of the exported mini Mask2Former equals the eager model's: the network outputs (head, compiled
    op), the semantic scores and map of the meta-architecture, and panoptic / instance results of the numpy
    post-processing on the exported outputs equal the eager post-processing's."""
    model, session, path = mini_export
    batch, height, width = check
    images = _images(batch, height, width, seed=height)
    got = _run(session, images)
    assert_shapes_as_declared(assert_axes_named(path), got, batch, height, width)
    with torch.no_grad():
        eager = model([{"image": im, "height": height, "width": width} for im in images])
        head = OnnxExportWrapper(model)(images)
    assert got["pred_logits"].shape == (batch, 20, 22) and got["mask_logits"].shape == (batch, 20, height, width)
    for name, expected in zip(("pred_logits", "pred_masks", "mask_logits"), head):
        np.testing.assert_allclose(got[name], expected.numpy(), atol=TOL, rtol=TOL, err_msg=name)
    thing_ids = set(model.metadata.thing_dataset_id_to_contiguous_id.values())
    segments_seen = 0
    for i, result in enumerate(eager):
        np.testing.assert_allclose(got["sem_seg"][i], result["sem_seg"].numpy(), atol=TOL, rtol=TOL)
        np.testing.assert_array_equal(got["sem_seg_map"][i], result["sem_seg"].argmax(0).numpy())
        panoptic, segments = panoptic_postprocess(
            got["pred_logits"][i], got["mask_logits"][i], 0.0, 0.5, thing_ids=thing_ids
        )
        # ONNX Runtime sums in other orders than eager (which runs a CPU batch image by image, batch-invariant), so a
        # pixel where two queries' scores tie within rounding may go to the other one: at most 0.1% of the pixels
        differ = panoptic != result["panoptic_seg"][0].numpy()
        assert differ.mean() <= 1e-3, f"image {i}: {differ.sum()} panoptic pixels differ"
        assert segments == result["panoptic_seg"][1]
        segments_seen += len(segments)
        inst = instance_postprocess(got["pred_logits"][i], got["mask_logits"][i], 20, True, thing_ids)
        np.testing.assert_array_equal(inst["pred_classes"], result["instances"].pred_classes.numpy())
        np.testing.assert_array_equal(inst["pred_masks"], result["instances"].pred_masks.numpy())
        np.testing.assert_allclose(inst["scores"], result["instances"].scores.numpy(), atol=TOL, rtol=TOL)
    assert segments_seen > 0


ONEFORMER_MINI = "configs/mini/panoptic/oneformer_r18.yaml"


def test_oneformer_onnx_holds_one_tasks_token_and_equals_eager(tmp_path, capsys):
    """OneFormer exports one graph per task (--task sets MODEL.TEST.TASK; the token is a constant of the graph).
    Before, every OneFormer config was refused. The panoptic graph's outputs equal the eager model's run with
    "task": "panoptic" on a batch of 2 at another size, and differ from its run with the semantic token (the
    token is in the graph). Without --task the per_output config is refused, and --task without OneFormer too."""
    tool = _load_tool("export_model")
    config = str(ROOT / ONEFORMER_MINI)
    out = str(tmp_path / "oneformer_panoptic.onnx")
    assert tool.main(["--config-file", config, "--format", "onnx", "--output", out]) == 2
    assert "pass --task semantic, instance or panoptic" in capsys.readouterr().err
    m2f = ["--config-file", str(ROOT / MINI), "--format", "onnx", "--output", out, "--task", "panoptic"]
    assert tool.main(m2f) == 2 and "--task is for OneFormer configs" in capsys.readouterr().err
    torch.manual_seed(0)
    model = build_model(load_cfg(ONEFORMER_MINI, *MINI_OPTS)).eval()
    weights = str(tmp_path / "oneformer.pth")
    torch.save({"model": model.state_dict()}, weights)
    argv = ["--config-file", config, "--format", "onnx", "--output", out, "--size", *map(str, EXAMPLE)]
    assert tool.main([*argv, "--task", "panoptic", "MODEL.WEIGHTS", weights, *MINI_OPTS]) == 0
    batch, height, width = CHECKS[1]
    images = _images(batch, height, width, seed=1)
    got = _run(ort.InferenceSession(out, providers=["CPUExecutionProvider"]), images)
    with torch.no_grad():
        eager = {
            task: model([{"image": im, "height": height, "width": width, "task": task} for im in images])
            for task in ("panoptic", "semantic")
        }
    thing_ids = set(model.metadata.thing_dataset_id_to_contiguous_id.values())
    for i, result in enumerate(eager["panoptic"]):
        np.testing.assert_allclose(got["sem_seg"][i], result["sem_seg"].numpy(), atol=TOL, rtol=TOL)
        assert np.abs(got["sem_seg"][i] - eager["semantic"][i]["sem_seg"].numpy()).max() > 100 * TOL
        panoptic, segments = panoptic_postprocess(
            got["pred_logits"][i], got["mask_logits"][i], 0.0, 0.5, thing_ids=thing_ids
        )
        assert (panoptic != result["panoptic_seg"][0].numpy()).mean() <= 1e-3 and segments == result["panoptic_seg"][1]


# CGRSeg pools the 1/32 level to half its size: sizes where that is at least 2 (an example size whose derived sizes
# are 1 lets the exporter fix them)
PER_PIXEL_EXAMPLE = (128, 160)
PER_PIXEL_CHECKS = [(1, 128, 160), (2, 152, 117)]
PER_PIXEL = {
    "segformer_b0": ("configs/ade20k/semantic/segformer_b0.yaml", PER_PIXEL_CHECKS),
    "cgrseg_t": ("configs/ade20k/semantic/cgrseg_t.yaml", PER_PIXEL_CHECKS),
    # the ViT's 14x14 position table is resized to the patch grid in the graph: 224x224 is its own size (eager
    # skips the resize there), 152x117 another (before, the graph held the example's grid and failed there)
    "structtoken_vit_t": ("configs/mini/semantic/structtoken_pwe_vit_t.yaml", [(1, 224, 224), (2, 152, 117)]),
}


@pytest.mark.parametrize("name", sorted(PER_PIXEL))
def test_per_pixel_onnx_equals_eager(name, tmp_path):
    """SegFormer-B0, CGRSeg-T and StructToken ViT-T: one export, two sizes and batch sizes; logits, scores and map
    equal eager's."""
    torch.manual_seed(0)
    config, checks = PER_PIXEL[name]
    model = build_model(load_cfg(config)).eval()
    path = str(tmp_path / f"{name}.onnx")
    export_onnx(model, path, PER_PIXEL_EXAMPLE)
    declared = assert_axes_named(path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch, height, width in checks:
        images = _images(batch, height, width, seed=width)
        got = _run(session, images)
        assert_shapes_as_declared(declared, got, batch, height, width)
        with torch.no_grad():
            eager = model([{"image": im} for im in images])
            logits = OnnxExportWrapper(model)(images)[0]
        np.testing.assert_allclose(got["sem_seg_logits"], logits.numpy(), atol=TOL, rtol=TOL)
        for i, result in enumerate(eager):
            np.testing.assert_allclose(got["sem_seg"][i], result["sem_seg"].numpy(), atol=TOL, rtol=TOL)
            assert_map_is_eagers_argmax_outside_ties(
                got["sem_seg_map"][i], got["sem_seg"][i], result["sem_seg"].numpy()
            )


def assert_map_is_eagers_argmax_outside_ties(got_map: np.ndarray, got: np.ndarray, scores: np.ndarray) -> None:
    """got_map [H, W] (argmax of ONNX's scores ``got`` [K, H, W]) equals the argmax of eager's ``scores`` wherever
    eager's top two classes are further apart than twice the largest ONNX-eager score difference at that pixel (there
    the argmax cannot flip); such pixels are at least 99.9%, and elsewhere (near-ties) the class picked scores within
    that margin of eager's best."""
    margin = 2 * np.abs(got - scores).max(0)  # [H, W]
    top2 = np.sort(scores, axis=0)[-2:]
    decided = top2[1] - top2[0] > margin
    assert decided.mean() >= 0.999
    np.testing.assert_array_equal(got_map[decided], scores.argmax(0)[decided])
    picked = np.take_along_axis(scores, got_map[None].astype(np.int64), 0)[0]
    assert (picked >= top2[1] - margin).all()


def test_r50_mask2former_onnx_equals_eager(tmp_path):
    """Mask2Former R50 (COCO panoptic config, 100 queries, 133 classes; FEWER_LAYERS) at a small size, two sizes:
    every output equals PyTorch eager on the same path (OnnxExportWrapper, compiled MSDeformAttn, standard memory
    layout).

    Compared with the meta-architecture itself (channels-last on the CPU) the untrained R50's scores differ by up
    to 1e-3: its many near-zero mask logits flip the decoder's thresholded attention masks (logit < 0) under
    last-bit differences of the layout; the mini model above is compared with the meta-architecture directly."""
    torch.manual_seed(0)
    model = build_model(load_cfg("configs/coco/panoptic/m2f_r50.yaml", *FEWER_LAYERS)).eval()
    path = str(tmp_path / "r50.onnx")
    wrapper = export_onnx(model, path, EXAMPLE)
    declared = assert_axes_named(path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch, height, width in CHECKS:
        images = _images(batch, height, width, seed=batch)
        got = _run(session, images)
        assert_shapes_as_declared(declared, got, batch, height, width)
        with torch.no_grad():
            expected = dict(zip(wrapper.output_names, wrapper(images)))
        assert got["pred_logits"].shape == (batch, 100, 134)
        for name in ("pred_logits", "pred_masks", "mask_logits", "sem_seg"):
            np.testing.assert_allclose(got[name], expected[name].numpy(), atol=TOL, rtol=TOL, err_msg=name)
        np.testing.assert_array_equal(got["sem_seg_map"], expected["sem_seg_map"].numpy())


def test_sliding_window_model_is_refused():
    """The graph runs the whole image: a model configured for sliding windows is refused, naming the key."""
    model = build_model(
        load_cfg(
            "configs/mini/semantic/structtoken_pwe_vit_t.yaml",
            *[
                "MODEL.PER_PIXEL.SLIDE_WINDOW.ENABLED",
                "True",
                "MODEL.PER_PIXEL.SLIDE_WINDOW.CROP_SIZE",
                "[64, 64]",
            ],
            *["MODEL.PER_PIXEL.SLIDE_WINDOW.STRIDE", "[32, 32]"],
        )
    ).eval()
    with pytest.raises(ValueError, match="SLIDE_WINDOW.ENABLED False"):
        OnnxExportWrapper(model)


@pytest.mark.parametrize(
    "size_in, size_out", [((8, 10), (4, 5)), ((7, 13), (3, 4)), ((5, 6), (5, 6)), ((1, 3), (1, 2))]
)
def test_adaptive_pool_by_matrices_equals_adaptive_avg_pool2d(size_in, size_out):
    """CGRSeg's exportable adaptive pooling has PyTorch's bins, also when they overlap (sizes not divisible)."""
    from universal_seg.modeling.heads.cgrseg_modules import adaptive_avg_pool2d_by_matrices

    x = torch.randn(2, 3, *size_in, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.adaptive_avg_pool2d(x, size_out)
    torch.testing.assert_close(adaptive_avg_pool2d_by_matrices(x, size_out), expected, atol=1e-6, rtol=1e-6)
