#!/usr/bin/env python
"""Inference speed of Mask2Former (default: R50, COCO panoptic config, all three tasks) on one image.

    python benchmarks/m2f_inference.py [--size 512] [--threads 2] [--device cpu] [--amp] [--runs 5]

Reports the median seconds per image over --runs timed runs after --warmup runs (untrained weights: the work
per image does not depend on them, except for post-processing of kept segments).
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

import universal_seg.data  # noqa: E402,F401  (dataset metadata: thing classes)
import universal_seg.modeling  # noqa: E402,F401
from universal_seg.config import load_config  # noqa: E402


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config_file, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", args.device])
    model = build_model(cfg).eval()
    h, w = (args.size * 2)[:2]
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    inputs = [{"image": image, "height": h, "width": w} for _ in range(args.batch)]
    dtype = torch.bfloat16 if args.device == "cpu" else torch.float16
    times = []
    for i in range(args.warmup + args.runs):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=args.amp):
            model(inputs)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    med = statistics.median(times)
    if args.device == "cpu":  # the machine's state: shared VMs vary by tens of percent from minute to minute
        a = torch.randn(2048, 2048)
        gemm = min(_timed(lambda: torch.mm(a, a)) for _ in range(5))
        print(f"machine check: fp32 2048^3 sgemm {2 * 2048**3 / gemm / 1e9:.0f} GFLOP/s on {args.threads} threads")
    print(
        f"{args.config_file} {h}x{w} batch {args.batch} on {args.device} ({args.threads} threads, "
        f"amp={args.amp}): median {med:.3f} s per batch, {args.batch / med:.2f} images/s "
        f"(runs: {', '.join(f'{t:.3f}' for t in times)})"
    )


if __name__ == "__main__":
    main()
