"""tools/export_model.py, tools/analyze_model.py, tools/benchmark.py and the demo's AsyncPredictor, on the CPU with
the mini config (small inputs). Truth: the eager meta-architecture's own "sem_seg" output, parameter counts from
the module, hand-computed FLOPs, input order and sizes."""

import importlib.util
import os
import re
import sys

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import universal_seg.data  # noqa: F401
import universal_seg.modeling  # noqa: F401
from universal_seg.config import add_universal_seg_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "mini", "panoptic", "m2f_r18.yaml")


def load_tool(name: str):
    """Imports tools/<name>.py (or demo/<name>.py) as a module."""
    folder = "demo" if name == "predictor" else "tools"
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", os.path.join(ROOT, folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mini_cfg(*opts):
    cfg = get_cfg()
    add_universal_seg_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts])
    return cfg


@pytest.fixture(scope="module")
def mini_weights(tmp_path_factory):
    """A randomly initialised mini model and its weights saved as a .pth file."""
    torch.manual_seed(0)
    model = build_model(mini_cfg()).eval()
    path = tmp_path_factory.mktemp("weights") / "mini.pth"
    torch.save({"model": model.state_dict()}, path)
    return model, str(path)


def test_export_torchscript_equals_eager_sem_seg(tmp_path, mini_weights):
    """The saved TorchScript file reproduces the eager model's "sem_seg" (compiled MSDeformAttn) on a real-valued
    uint8 image of the export size."""
    model, weights = mini_weights
    export_model = load_tool("export_model")
    out = str(tmp_path / "mini.ts")
    assert (
        export_model.main(
            [
                "--config-file",
                CONFIG,
                "--format",
                "torchscript",
                "--output",
                out,
                "--size",
                "128",
                "160",
                "MODEL.WEIGHTS",
                weights,
            ]
        )
        == 0
    )
    traced = torch.jit.load(out)
    image = torch.randint(0, 256, (3, 128, 160), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = model([{"image": image, "height": 128, "width": 160}])[0]["sem_seg"]
    exported = traced(image.float()[None])  # a plain call: the saved module runs without autograd itself
    assert exported.shape == (1, 21, 128, 160) and not exported.requires_grad
    torch.testing.assert_close(exported[0], eager, atol=1e-4, rtol=1e-4)
    # the trace holds no opaque Python call: the reference op was recorded
    assert "PythonOp" not in str(traced.inlined_graph)
    # the level sizes are constants of the trace: any other input shape is refused, naming the traced size
    for shape in [(1, 3, 160, 128), (2, 3, 128, 160), (1, 3, 128, 168)]:
        with pytest.raises(torch.jit.Error, match=r"traced for images \[1, 3, 128, 160\]: resize or pad"):
            traced(torch.zeros(shape))


def test_export_that_fails_its_check_leaves_no_file(tmp_path, mini_weights, capsys):
    """The file is written under a temporary name and renamed only once the check passes: a rejected export (here
    a tolerance no float export can meet) leaves neither the output nor a temporary file."""
    _, weights = mini_weights
    export_model = load_tool("export_model")
    out = tmp_path / "out" / "mini.ts"
    argv = ["--config-file", CONFIG, "--output", str(out), "--size", "64", "96", "--check-tolerance", "-1"]
    assert export_model.main(argv + ["MODEL.WEIGHTS", weights]) == 1
    assert f"{out} was not written." in capsys.readouterr().err
    assert list((tmp_path / "out").iterdir()) == []


def test_export_with_non_finite_outputs_is_not_written(tmp_path, mini_weights, capsys):
    """Weights with NaN class biases give NaN outputs. Before, |exported - eager| was NaN, NaN > --check-tolerance
    is False (and max() over the outputs dropped it), so both formats saved the file; now the export is rejected,
    naming the non-finite outputs, and a file already at --output is left as it was."""
    model, _ = mini_weights
    export_model = load_tool("export_model")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["sem_seg_head.predictor.class_embed.bias"].fill_(float("nan"))
    torch.save({"model": state}, tmp_path / "nan_m2f.pth")
    segformer_config = os.path.join(ROOT, "configs", "mini", "semantic", "segformer_b0.yaml")
    cfg = get_cfg()
    add_universal_seg_config(cfg)
    cfg.merge_from_file(segformer_config)
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    state = build_model(cfg).state_dict()
    state["sem_seg_head.linear_pred.bias"].fill_(float("nan"))
    torch.save({"model": state}, tmp_path / "nan_segformer.pth")
    for fmt, config, weights in [
        ("torchscript", CONFIG, "nan_m2f.pth"),
        ("onnx", segformer_config, "nan_segformer.pth"),
    ]:
        out = tmp_path / f"model.{fmt}"
        out.write_bytes(b"the previous export")
        argv = ["--config-file", config, "--format", fmt, "--output", str(out), "--size", "64", "96"]
        assert export_model.main(argv + ["MODEL.WEIGHTS", str(tmp_path / weights)]) == 1, fmt
        err = capsys.readouterr().err
        assert f"holds NaN or infinite values (check the weights, MODEL.WEIGHTS): {out} was not written." in err, err
        assert out.read_bytes() == b"the previous export"
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "model.torchscript", "nan_m2f.pth", "nan_segformer.pth"]


def test_missing_or_mismatched_weights_are_one_line_errors(tmp_path, capsys):
    """A mistyped MODEL.WEIGHTS path and a checkpoint of another model are one line (exit 2), before any work."""
    export_model = load_tool("export_model")
    predict = load_tool("predict")
    missing = str(tmp_path / "model_fianl.pth")
    other = tmp_path / "other.pth"
    torch.save({"model": {"backbone.stem.conv1.weight": torch.zeros(1)}}, other)
    for weights, expected in [
        (missing, f"error: checkpoint {missing!r} (MODEL.WEIGHTS) does not exist; check the path."),
        (str(other), f"error: {other}: "),
    ]:
        assert (
            export_model.main(["--config-file", CONFIG, "--output", str(tmp_path / "m.ts"), "MODEL.WEIGHTS", weights])
            == 2
        )
        assert capsys.readouterr().err.strip().startswith(expected)
        argv = ["--config-file", CONFIG, "--input", os.path.join(ROOT, "datasets", "mini", "images"), "--output"]
        assert predict.main(argv + [str(tmp_path / "pred"), "--opts", "MODEL.WEIGHTS", weights]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith(expected)
    assert not (tmp_path / "m.ts").exists()


def test_bad_size_or_output_is_one_line_before_the_model_is_built(tmp_path, capsys, monkeypatch):
    """--size 0 0, an --output in a folder that cannot be written, under a file, or that is a folder: one
    'error:' line, exit 2, for both formats, before any model is built (building one fails this test)."""
    export_model = load_tool("export_model")

    def no_build(cfg):
        raise AssertionError("the model was built before the arguments were checked")

    monkeypatch.setattr(export_model, "build_model", no_build)
    (tmp_path / "a_file").write_text("x")
    good = str(tmp_path / "m.ts")
    cases = [
        (["--size", "0", "0", "--output", good], "error: --size must be two positive integers H W (got 0 0)."),
        (["--size", "64", "-8", "--output", good], "error: --size must be two positive integers H W (got 64 -8)."),
        (["--output", str(tmp_path / "a_file" / "m.ts")], "which is not a folder; choose another path."),
        (["--output", str(tmp_path)], f"is a folder; give a file name, e.g. --output {tmp_path / 'model.'}"),
    ]
    if os.path.isdir("/proc/self"):  # Linux: no file can be created in /proc, even by root
        cases.append((["--output", "/proc/m.ts"], "folder '/proc' is not writable"))
    for fmt in ("torchscript", "onnx"):
        for argv, message in cases:
            assert export_model.main(["--config-file", CONFIG, "--format", fmt, *argv]) == 2, (fmt, argv)
            err = capsys.readouterr().err
            assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and message in err, (fmt, err)
    assert sorted(os.listdir(tmp_path)) == ["a_file"]  # no output, no temporary file
    # configs the exported graph cannot hold: before, a traceback after building (OneFormer without one task: 217
    # lines for ONNX),
    # or for TorchScript a silent export of the whole-image model of a sliding-window config
    oneformer = os.path.join(ROOT, "configs", "mini", "panoptic", "oneformer_r18.yaml")
    segformer = os.path.join(ROOT, "configs", "mini", "semantic", "segformer_b0.yaml")
    for config, opts, message in (
        (oneformer, [], "an exported graph holds one task token; pass --task semantic, instance or panoptic"),
        (segformer, ["MODEL.PER_PIXEL.SLIDE_WINDOW.ENABLED", "True"], "add MODEL.PER_PIXEL.SLIDE_WINDOW.ENABLED False"),
        (segformer, ["MODEL.SEM_SEG_HEAD.NUM_CLASES", "3"], "NUM_CLASES"),  # was exit status 1, unlike the others
        (str(tmp_path / "missing.yaml"), [], "missing.yaml"),
    ):
        for fmt in ("torchscript", "onnx"):
            assert export_model.main(["--config-file", config, "--format", fmt, "--output", good, *opts]) == 2
            err = capsys.readouterr().err
            assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and message in err, (fmt, err)


def test_onnx_export_specialised_to_a_tiny_example_is_not_written(tmp_path, capsys):
    """--size 1 1: the exporter fixes the feature sizes of the example. Before, the check's second input padded to
    the same 32x32 cell, passed, and the file failed at every other size in ONNX Runtime; now the check runs at
    a size with other feature-map sizes, fails, and no file is written."""
    export_model = load_tool("export_model")
    segformer = os.path.join(ROOT, "configs", "mini", "semantic", "segformer_b0.yaml")
    out = tmp_path / "m.onnx"
    argv = ["--config-file", segformer, "--format", "onnx", "--output", str(out), "--size", "1", "1"]
    assert export_model.main(argv) == 1
    assert "it was specialised to the example's size: export at a larger --size" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def _small_msdeform_case():
    from universal_seg.ops import MSDeformAttn

    torch.manual_seed(0)
    layer = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2).eval()
    shapes = torch.tensor([[8, 8], [4, 4]])
    starts = torch.tensor([0, 64])
    x = torch.randn(1, 80, 32)
    ref = torch.rand(1, 80, 2, 2)
    return layer, (x, ref, x, shapes, starts)


def test_onnx_map_check_tells_near_ties_from_wrong_classes():
    """Before: any pixel whose class differed rejected the export, so the README's SegFormer-B0 export (150 classes,
    untrained: near-tied scores) was never written. Hand-made case, one image of 4 pixels, 3 classes, exported
    scores off by 0.01 (margin 0.02): pixel 0 same class; pixel 1 a tie flipped (0.50 / 0.49); pixel 2 a decided
    pixel (0.9 / 0.1) with the wrong class; pixel 3 a flip to a class 0.05 below the best (beyond the margin)."""
    export_model = load_tool("export_model")
    eager = np.array([[0.9, 0.50, 0.9, 0.60], [0.1, 0.49, 0.1, 0.55], [0.0, 0.01, 0.0, 0.0]], np.float32)
    eager = eager.reshape(1, 3, 1, 4)
    got = eager + np.float32(0.01)
    eager_map = eager.argmax(1)  # [[0, 0, 0, 0]]
    got_map = np.array([[[0, 1, 1, 1]]])
    assert export_model.map_mismatches(got_map, got, eager_map, eager) == (2, 1)
    assert export_model.map_mismatches(eager_map, got, eager_map, eager) == (0, 0)


def test_export_reference_switch_is_restored_and_equal():
    from universal_seg.export import reference_ms_deform_attn, traceable_ms_deform_attn
    from universal_seg.ops import active_ms_deform_attn_op, ms_deform_attn

    layer, args = _small_msdeform_case()
    assert active_ms_deform_attn_op() is ms_deform_attn
    with torch.no_grad():
        compiled = layer(*args)
        with reference_ms_deform_attn():
            assert active_ms_deform_attn_op() is traceable_ms_deform_attn
            reference = layer(*args)
    assert active_ms_deform_attn_op() is ms_deform_attn
    torch.testing.assert_close(reference, compiled, atol=1e-5, rtol=1e-5)


def test_export_reference_switch_does_not_leak_to_other_threads():
    """While the main thread is inside the export context, a thread running a forward at the same time calls the
    compiled op; the op each thread called is recorded by spies installed through use_ms_deform_attn_op (the
    override applies to its own thread only, so the other thread installs its own spy the same way)."""
    import threading

    from universal_seg.export import reference_ms_deform_attn, traceable_ms_deform_attn
    from universal_seg.ops import active_ms_deform_attn_op, ms_deform_attn, use_ms_deform_attn_op

    layer, args = _small_msdeform_case()
    calls = []  # (thread name, op)
    lock = threading.Lock()

    def spy(name, op):
        def call(*op_args):
            with lock:
                calls.append((name, op))
            return op(*op_args)

        return call

    inside = threading.Barrier(2, timeout=60)  # both threads are inside their contexts
    done = threading.Barrier(2, timeout=60)  # both have run their forward
    seen, errors = {}, []

    def worker():
        try:
            inside.wait()
            seen["worker"] = active_ms_deform_attn_op()
            # the compiled op as this thread would call it, wrapped by a spy
            with use_ms_deform_attn_op(spy("worker", active_ms_deform_attn_op())), torch.no_grad():
                layer(*args)
            done.wait()
        except Exception as e:  # reported by the main thread
            errors.append(e)
            inside.abort()
            done.abort()

    thread = threading.Thread(target=worker, name="worker")
    thread.start()
    with reference_ms_deform_attn():
        seen["main"] = active_ms_deform_attn_op()
        with use_ms_deform_attn_op(spy("main", active_ms_deform_attn_op())), torch.no_grad():
            inside.wait()
            layer(*args)
            done.wait()
    thread.join(timeout=60)
    assert not errors, errors
    assert seen == {"main": traceable_ms_deform_attn, "worker": ms_deform_attn}
    assert sorted(calls, key=lambda c: c[0]) == [("main", traceable_ms_deform_attn), ("worker", ms_deform_attn)]
    assert active_ms_deform_attn_op() is ms_deform_attn


def test_use_ms_deform_attn_op_rejects_non_callable():
    from universal_seg.ops import use_ms_deform_attn_op

    with pytest.raises(TypeError, match="callable"):
        with use_ms_deform_attn_op("reference"):
            pass


def test_analyze_model_parameters_and_flops(capsys):
    analyze = load_tool("analyze_model")
    assert analyze.main(["--config-file", CONFIG, "--tasks", "parameter", "--max-depth", "1"]) == 0
    printed = capsys.readouterr().out
    total = float(re.search(r"total parameters: ([0-9.]+) M", printed).group(1))
    model = build_model(mini_cfg())
    assert total == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6, abs=1e-3)

    from fvcore.nn import FlopCountAnalysis

    h = w = 128
    network = analyze.NetworkOnly(model.eval())
    flops = FlopCountAnalysis(network, torch.randn(1, 3, h, w)).set_op_handle(
        analyze.MS_DEFORM_ATTN_OP, analyze.ms_deform_attn_flop_jit, analyze.SDPA_OP, analyze.sdpa_flop_jit
    )
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    by_op = flops.by_operator()
    # stem: 7x7 conv, 3 -> 64 channels, stride 2: one multiply-add per weight per output pixel, plus its affine
    # GroupNorm (fvcore: 5 flops per element)
    out_pixels = 64 * (h // 2) * (w // 2)
    assert flops.by_module()["backbone.stem.conv1"] == 7 * 7 * 3 * out_pixels + 5 * out_pixels
    # MSDeformAttn: 3 encoder layers, queries = all positions at strides 8, 16, 32; 8 heads x 16 channels,
    # 3 levels x 4 points, 5 multiply-adds per sample and channel
    queries = sum((h // s) * (w // s) for s in (8, 16, 32))
    assert by_op["PythonOp.MSDeformAttnFunction"] == 3 * 5 * queries * 8 * 3 * 4 * 16
    assert by_op["scaled_dot_product_attention"] > 0

    assert (
        analyze.main(
            ["--config-file", CONFIG, "--tasks", "flop", "activation", "--size", "128", "128", "--max-depth", "1"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    gflops = float(re.search(r"total flops: ([0-9.]+) GFLOPs", printed).group(1))
    assert gflops == pytest.approx(flops.total() / 1e9, abs=1e-3)
    assert re.search(r"total activations: [0-9.]+ M activations", printed)


@pytest.mark.parametrize("task, extra", [("inference", []), ("train", ["--synthetic"]), ("train", [])])
def test_benchmark_reports_median_rate_and_memory(capsys, task, extra):
    benchmark = load_tool("benchmark")
    opts = ["INPUT.IMAGE_SIZE", "128"] if task == "train" else []
    assert (
        benchmark.main(
            [
                "--config-file",
                CONFIG,
                "--task",
                task,
                "--size",
                "128",
                "128",
                "--warmup",
                "1",
                "--runs",
                "2",
                *extra,
                *opts,
            ]
        )
        == 0
    )
    line = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.search(
        r"median ([0-9.]+) s, ([0-9.]+) (images|iterations)/s; peak memory ([0-9]+) MiB "
        r"\(runs: ([0-9.]+), ([0-9.]+)\)",
        line,
    )
    assert match, line
    median, rate = float(match.group(1)), float(match.group(2))
    runs = [float(match.group(5)), float(match.group(6))]
    assert median == pytest.approx(np.median(runs), abs=2e-3)
    assert rate == pytest.approx(1 / median, rel=0.02)
    assert int(match.group(4)) > 100  # a process holding torch and a model


def test_benchmark_amp_bf16_on_cpu(capsys):
    benchmark = load_tool("benchmark")
    assert (
        benchmark.main(["--config-file", CONFIG, "--size", "128", "128", "--warmup", "0", "--runs", "1", "--amp"]) == 0
    )
    assert "bf16 AMP" in capsys.readouterr().out


def test_async_predictor_returns_results_in_submission_order():
    """Two CPU worker processes; images of different sizes must come back in the order they were put."""
    sys.path.insert(0, os.path.join(ROOT, "demo"))  # kept while the workers start: they import "predictor"
    import predictor

    cfg = mini_cfg(
        "MODEL.MASK_FORMER.TEST.PANOPTIC_ON",
        "False",
        "MODEL.MASK_FORMER.TEST.INSTANCE_ON",
        "False",
        "INPUT.MIN_SIZE_TEST",
        "64",
        "INPUT.MAX_SIZE_TEST",
        "200",
    )
    sizes = [(64, 96), (96, 64), (64, 128), (80, 80), (64, 72)]
    images = [np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8) for i, (h, w) in enumerate(sizes)]
    async_predictor = predictor.AsyncPredictor(cfg, devices=["cpu", "cpu"])
    try:
        for image in images:
            async_predictor.put(image)
        shapes = [tuple(async_predictor.get()["sem_seg"].shape[1:]) for _ in images]
    finally:
        async_predictor.shutdown()
        sys.path.remove(os.path.join(ROOT, "demo"))
    assert shapes == sizes
