#!/usr/bin/env python
"""Inference speed of Mask2Former (default: R50, COCO panoptic config, all three tasks) on one image.

    python benchmarks/m2f_inference.py [--size 512] [--threads 2] [--device cpu] [--amp] [--runs 5]
    python benchmarks/m2f_inference.py --peak-memory [--memory-sizes 512 1024x2048]
    python benchmarks/m2f_inference.py --stages [--profile 15]

Reports the median seconds per image over --runs timed runs after --warmup runs (untrained weights from torch
seed 0 and a random image from the same seed: the work per image does not depend on the weights, except for the
post-processing of kept segments, which the seed fixes).

``--stages`` adds the medians of the stages over the timed runs, timed with module hooks as in
benchmarks/m2f_train_step.py: backbone, pixel decoder, decoder (the transformer decoder with its mask predictions)
and the rest (normalisation, mask upsampling and post-processing). ``--profile N`` adds torch.profiler's N
operators with the most self CPU time over one more run (with their share of that run), then the convolutions and
matrix products with their FLOPs and achieved GFLOP/s, and the time all those FLOPs take at the machine check's
sgemm rate (the floor for fp32 on this machine).

``--peak-memory`` instead reports, per image size, the peak resident memory of inference above the loaded model
(CPU): each size runs in a fresh process, which builds the model, resets the kernel's peak (VmHWM, through
/proc/self/clear_refs) to the RSS after loading, runs the model --warmup + 1 times and reads VmHWM again.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

import universal_seg.data  # noqa: E402,F401  (dataset metadata: thing classes)
import universal_seg.modeling  # noqa: E402,F401
from universal_seg.config import load_config  # noqa: E402

STAGES = ("backbone", "pixel decoder", "decoder", "rest")
# the operators whose FLOPs torch.profiler counts and that are convolutions or matrix products (it also counts
# elementwise add / mul, which do not belong in the GEMM floor)
GEMM_OPS = ("aten::conv2d", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _status_bytes(key: str) -> int:
    """A "<key>: N kB" line of /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status (needs Linux)")


def measure_peak_memory(args, model) -> dict:
    """In this (fresh) process: peak RSS of ``--warmup`` + 1 inferences at ``--size`` above the loaded model."""
    loaded = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    h, w = (args.size * 2)[:2]
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    for _ in range(args.warmup + 1):
        with torch.no_grad():
            model([{"image": image, "height": h, "width": w} for _ in range(args.batch)])
    peak = _status_bytes("VmHWM")
    return {"size": f"{h}x{w}", "model_MiB": loaded / 2**20, "peak_above_model_MiB": (peak - loaded) / 2**20}


def report_peak_memory(args) -> None:
    """One fresh process per size (peaks of different sizes must not mix), then one table."""
    print(f"{args.config_file}, batch {args.batch}, {args.threads} threads, fp32, {args.warmup} + 1 inferences:")
    print(f"{'size':>10} {'RSS after loading (MiB)':>24} {'peak above it (MiB)':>20}")
    for size in args.memory_sizes:
        hw = [int(v) for v in size.split("x")]
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-case", "--size", *map(str, hw)]
        cmd += ["--config-file", args.config_file, "--threads", str(args.threads), "--batch", str(args.batch)]
        cmd += ["--warmup", str(args.warmup)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"error: the {size} case failed:\n{proc.stderr[-2000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{r['size']:>10} {r['model_MiB']:>24.0f} {r['peak_above_model_MiB']:>20.0f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default="configs/coco/panoptic/m2f_r50.yaml")
    parser.add_argument("--size", type=int, nargs="+", default=[512], help="H [W] of the input image")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="autocast (bf16 on CPU, fp16 on CUDA)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--stages", action="store_true", help="also print the median time of each stage")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="also print the top N operators")
    parser.add_argument("--peak-memory", action="store_true", help="report peak RSS above the model instead")
    parser.add_argument("--memory-sizes", nargs="+", default=["512", "1024x2048"], help="H or HxW per case")
    parser.add_argument("--memory-case", action="store_true", help=argparse.SUPPRESS)  # internal: one case here
    args = parser.parse_args()
    if args.peak_memory:
        return report_peak_memory(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the same untrained weights and image in every process: post-processing work (kept
    # segments) depends on them, so unseeded runs differ in time and memory
    cfg = load_config(args.config_file, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", args.device])
    model = build_model(cfg).eval()
    if args.memory_case:
        return print(json.dumps(measure_peak_memory(args, model)))
    h, w = (args.size * 2)[:2]
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    inputs = [{"image": image, "height": h, "width": w} for _ in range(args.batch)]
    dtype = torch.bfloat16 if args.device == "cpu" else torch.float16

    def infer():
        with torch.no_grad(), torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=args.amp):
            model(inputs)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    if args.stages:
        from m2f_train_step import StageTimer, print_stages

        timer = StageTimer()
        timer.attach(model.backbone, "backbone")
        timer.attach(model.sem_seg_head.pixel_decoder, "pixel decoder")
        timer.attach(model.sem_seg_head.predictor, "decoder")
    times, per_stage = [], {stage: [] for stage in STAGES}
    for i in range(args.warmup + args.runs):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if args.stages:
            timer.seconds.clear()
        start = time.perf_counter()
        infer()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
            if args.stages:
                timer.seconds["rest"] = times[-1] - sum(timer.seconds[k] for k in STAGES[:-1])
                for stage in STAGES:
                    per_stage[stage].append(timer.seconds[stage])
    med = statistics.median(times)
    gflops_peak = None
    if args.device == "cpu":  # the machine's state: shared VMs vary by tens of percent from minute to minute
        a = torch.randn(2048, 2048)
        gemm = min(_timed(lambda: torch.mm(a, a)) for _ in range(5))
        gflops_peak = 2 * 2048**3 / gemm / 1e9
        print(f"machine check: fp32 2048^3 sgemm {gflops_peak:.0f} GFLOP/s on {args.threads} threads")
    print(
        f"{args.config_file} {h}x{w} batch {args.batch} on {args.device} ({args.threads} threads, "
        f"amp={args.amp}): median {med:.3f} s per batch, {args.batch / med:.2f} images/s "
        f"(runs: {', '.join(f'{t:.3f}' for t in times)})"
    )
    if args.stages:
        print_stages(per_stage, STAGES, med)
    if args.profile:
        print_profile(infer, args.profile, gflops_peak)


def _product_flops(event) -> float:
    """FLOPs of an aten::mkldnn_convolution call that is a matrix product of ops.linear / ops.matmul (a 1x1 kernel
    over a [1, K, M, 1] or [1, K, 1, M] image; torch counts no FLOPs for it), else 0."""
    shapes = event.input_shapes
    if event.key != "aten::mkldnn_convolution" or len(shapes) < 2 or len(shapes[0]) != 4 or len(shapes[1]) != 4:
        return 0.0
    (n, c, h, w), (o, _, kh, kw) = shapes[0], shapes[1]
    return 2.0 * n * o * c * h * w * event.count if (kh, kw) == (1, 1) and 1 in (h, w) else 0.0


def print_profile(infer, top: int, gflops_peak: float | None) -> None:
    """torch.profiler over one call of ``infer``: the ``top`` operators by self CPU time; then the convolutions and
    products with their FLOPs (torch's count for GEMM_OPS, the shapes for ops.linear's oneDNN products),
    their total time including the kernels they call, and the time these FLOPs take at ``gflops_peak`` (the machine
    check's sgemm rate): the floor that faster non-GEMM code cannot go below."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True, record_shapes=True) as prof:
        infer()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"profile of one run: {total / 1e6:.3f} s of operator self time")
    print(f"{'operator':<44} {'calls':>6} {'self s':>8} {'share':>6}")
    for e in events[:top]:
        print(f"{e.key[:44]:<44} {e.count:6d} {e.self_cpu_time_total / 1e6:8.3f} {e.self_cpu_time_total / total:6.1%}")
    rows = [(e.key, e.count, e.cpu_time_total / 1e6, e.flops) for e in events if e.flops and e.key in GEMM_OPS]
    products = [e for e in prof.key_averages(group_by_input_shape=True) if _product_flops(e)]
    if products:
        seconds = sum(e.cpu_time_total for e in products) / 1e6
        flops = sum(_product_flops(e) for e in products)
        rows.append(("oneDNN products (ops.linear, ops.matmul)", sum(e.count for e in products), seconds, flops))
    print(f"{'convolutions and products':<44} {'calls':>6} {'total s':>8} {'share':>6} {'GFLOP':>7} {'GFLOP/s':>8}")
    for key, count, seconds, flops in sorted(rows, key=lambda r: r[2], reverse=True):
        print(f"{key[:44]:<44} {count:6d} {seconds:8.3f} {seconds * 1e6 / total:6.1%} {flops / 1e9:7.1f} "
              f"{flops / 1e9 / seconds:8.0f}")  # fmt: skip
    gflop = sum(r[3] for r in rows) / 1e9
    if gflops_peak:
        print(f"{gflop:.1f} GFLOP in all: {gflop / gflops_peak:.3f} s at the machine check's {gflops_peak:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
