#!/usr/bin/env python
"""CPU latency of ONNX Runtime vs PyTorch eager on the exported inference path, and of the two ONNX formulations of
MSDeformAttn.

    python benchmarks/onnx_vs_torch.py [--configs ...] [--size 512 512] [--threads 2] [--runs 10] [--op]

Models: each config is built with untrained weights (seeded), exported with universal_seg.export.export_onnx (or
read back from --onnx-dir when exported before) and run on one [1, 3, H, W] image, eager and ONNX Runtime
alternating run by run (the order rotating): PyTorch eager runs OnnxExportWrapper with the compiled MSDeformAttn
op (the same outputs as the graph), ONNX Runtime runs the file
(CPUExecutionProvider, intra-op threads = --threads, inter-op 1). Prints the median, min and max seconds of --runs
timed runs after --warmup runs, and the ratio of the medians (ONNX Runtime / PyTorch: below 1 = ONNX Runtime is
faster).

--op: MSDeformAttn alone at Mask2Former R50's shapes for the input size (levels 1/8, 1/16, 1/32; 8 heads x 32
channels, 4 points), ONNX Runtime on the gather formulation (exported with symbolic sizes, what export_onnx uses)
vs the grid_sample formulation (one grid_sample per level, which needs the level sizes as Python ints, so exported
at fixed sizes), and the compiled PyTorch op for reference.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

import universal_seg.data  # noqa: E402,F401  (dataset metadata: thing classes)
import universal_seg.modeling  # noqa: E402,F401
from universal_seg.config import load_config  # noqa: E402
from universal_seg.export import OnnxExportWrapper, export_onnx, gather_ms_deform_attn  # noqa: E402
from universal_seg.ops import ms_deform_attn  # noqa: E402

DEFAULT_CONFIGS = [
    "configs/ade20k/semantic/segformer_b0.yaml",
    "configs/ade20k/semantic/cgrseg_t.yaml",
    "configs/mini/panoptic/m2f_r18.yaml",
    "configs/coco/panoptic/m2f_r50.yaml",
]


def timed_runs(fn, runs: int, warmup: int) -> list[float]:
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def alternating_runs(fns, runs: int, warmup: int) -> list[list[float]]:
    """Times of each of ``fns`` over ``runs`` rounds after ``warmup`` rounds; every round runs each function once,
    the order rotating from round to round, so that a change of the machine's load hits all of them alike."""
    times = [[] for _ in fns]
    for r in range(warmup + runs):
        for i in [(r + j) % len(fns) for j in range(len(fns))]:
            start = time.perf_counter()
            fns[i]()
            if r >= warmup:
                times[i].append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> str:
    return f"median {statistics.median(times):.4f} s (min {min(times):.4f}, max {max(times):.4f}, n={len(times)})"


def session(path: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def bench_model(config: str, args) -> None:
    torch.manual_seed(0)
    cfg = load_config(config, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    name = os.path.splitext(config.replace("configs/", "").replace("/", "_"))[0]
    path = os.path.join(args.onnx_dir, f"{name}.onnx")
    if not os.path.exists(path):
        os.makedirs(args.onnx_dir, exist_ok=True)
        start = time.perf_counter()
        export_onnx(model, path)
        print(f"{config}: exported to {path} in {time.perf_counter() - start:.0f} s")
    wrapper = OnnxExportWrapper(model).eval()
    image = torch.rand((1, 3, *args.size), generator=torch.Generator().manual_seed(0)) * 255
    sess = session(path, args.threads)
    feed = {"image": image.numpy()}
    with torch.no_grad():
        expected = wrapper(image)
    got = sess.run(None, feed)
    diff = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(got, expected) if a.dtype != np.int64)

    def eager():
        with torch.no_grad():
            wrapper(image)

    t_torch, t_onnx = alternating_runs([eager, lambda: sess.run(None, feed)], args.runs, args.warmup)
    ratio = statistics.median(t_onnx) / statistics.median(t_torch)
    print(f"{config} at {args.size[0]}x{args.size[1]}, {args.threads} threads (max |onnx - torch| {diff:.1e}):")
    print(f"  pytorch eager : {summary(t_torch)}")
    print(f"  onnxruntime   : {summary(t_onnx)}")
    print(f"  ratio onnxruntime / pytorch = {ratio:.2f}")


def grid_sample_ms_deform_attn(value, shapes, sampling_locations, attention_weights):
    """The grid_sample formulation (one grid_sample per level; ``shapes`` as Python (H_l, W_l) pairs):
    value [N, S, M, D] -> [N, Lq, M * D]."""
    N, _, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(shapes):
        v = values[level].permute(0, 2, 3, 1).reshape(N * M, D, h, w)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L, P)
    out = (torch.stack(sampled, dim=3) * weights).sum(dim=(3, 4))
    return out.view(N, M * D, Lq).transpose(1, 2)


class _GatherOp(torch.nn.Module):
    def forward(self, value, spatial_shapes, level_start_index, locations, weights):
        return gather_ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)


class _GridSampleOp(torch.nn.Module):
    def __init__(self, shapes):
        super().__init__()
        self.shapes = shapes

    def forward(self, value, locations, weights):
        return grid_sample_ms_deform_attn(value, self.shapes, locations, weights)


def bench_op(args) -> None:
    h, w = args.size
    shapes = [(-(-h // s), -(-w // s)) for s in (32, 16, 8)]
    M, D, L, P = 8, 32, 3, 4
    S = sum(a * b for a, b in shapes)
    g = torch.Generator().manual_seed(0)
    value = torch.randn(1, S, M, D, generator=g)
    spatial_shapes = torch.tensor(shapes)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), spatial_shapes.prod(1).cumsum(0)[:-1]])
    locations = torch.rand(1, S, M, L, P, 2, generator=g)
    weights = torch.rand(1, S, M, L, P, generator=g).softmax(-1)
    os.makedirs(args.onnx_dir, exist_ok=True)
    gather_path = os.path.join(args.onnx_dir, "op_gather.onnx")
    grid_path = os.path.join(args.onnx_dir, f"op_grid_sample_{h}x{w}.onnx")
    dyn = torch.export.Dim.DYNAMIC
    with torch.no_grad():
        torch.onnx.export(
            _GatherOp(),
            (value, spatial_shapes, starts, locations, weights),
            gather_path,
            dynamo=True,
            dynamic_shapes=({1: dyn}, None, None, {1: dyn}, {1: dyn}),
            input_names=["value", "spatial_shapes", "level_start_index", "locations", "weights"],
            external_data=False,
        )
        torch.onnx.export(
            _GridSampleOp(shapes),
            (value, locations, weights),
            grid_path,
            dynamo=True,
            input_names=["value", "locations", "weights"],
            external_data=False,
        )
    reference = ms_deform_attn(value, spatial_shapes, starts, locations, weights).numpy()
    feeds = {
        "gather": {
            "value": value.numpy(),
            "spatial_shapes": spatial_shapes.numpy(),
            "level_start_index": starts.numpy(),
            "locations": locations.numpy(),
            "weights": weights.numpy(),
        },
        "grid_sample": {"value": value.numpy(), "locations": locations.numpy(), "weights": weights.numpy()},
    }
    print(f"MSDeformAttn at {h}x{w} (levels {shapes}, {M} heads x {D} channels, {P} points, Lq = S = {S}):")
    results = {}
    for name, path in (("gather", gather_path), ("grid_sample", grid_path)):
        sess = session(path, args.threads)
        out = sess.run(None, feeds[name])[0]
        results[name] = timed_runs(lambda: sess.run(None, feeds[name]), args.runs, args.warmup)
        diff = float(np.abs(out - reference).max())
        print(f"  onnxruntime {name:12s}: {summary(results[name])}  (max |diff| to the compiled op {diff:.1e})")
    compiled = timed_runs(lambda: ms_deform_attn(value, spatial_shapes, starts, locations, weights), args.runs, 2)
    print(f"  pytorch compiled op     : {summary(compiled)}")
    ratio = statistics.median(results["gather"]) / statistics.median(results["grid_sample"])
    print(f"  ratio gather / grid_sample (onnxruntime) = {ratio:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="*", default=DEFAULT_CONFIGS)
    parser.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--onnx-dir", default="output/onnx_bench", help="exported files are kept here and reused")
    parser.add_argument("--op", action="store_true", help="also compare the MSDeformAttn formulations")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.op:
        bench_op(args)
    for config in args.configs:
        bench_model(config, args)


if __name__ == "__main__":
    main()
