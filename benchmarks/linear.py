#!/usr/bin/env python
"""fp32 linear layers on the CPU: F.linear (BLAS addmm) next to universal_seg.ops.linear (oneDNN, 1x1 convolution).

    python benchmarks/linear.py [--threads 2] [--runs 20] [--backward]

Shapes are those of the models: Mask2Former's pixel decoder at 512x512 (5376 tokens), its decoder's cross-attention
key / value projections, ViT-B / ViT-L token MLPs at 512x512 (1024 tokens). Prints the median time of each path and
their ratio, measured alternately in one run.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from universal_seg.ops import linear

SHAPES = [  # (name, rows, in, out)
    ("pixel decoder value / output proj", 5376, 256, 256),
    ("pixel decoder sampling offsets", 5376, 256, 192),
    ("pixel decoder FFN 1", 5376, 256, 1024),
    ("pixel decoder FFN 2", 5376, 1024, 256),
    ("decoder cross-attn k/v (1/8 level)", 4096, 256, 256),
    ("decoder FFN 1 (100 queries)", 100, 256, 2048),
    ("ViT-B qkv", 1024, 768, 2304),
    ("ViT-L MLP 1", 1024, 1024, 4096),
]


def timed(fn, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{args.threads} threads, {'forward + backward' if args.backward else 'forward'}, fp32, "
        f"torch {torch.__version__}"
    )
    print("| shape | rows x in -> out | F.linear (ms) | ops.linear (ms) | speed-up |\n|---|---|---|---|---|")
    for name, rows, k, n in SHAPES:
        x = torch.randn(rows, k, requires_grad=args.backward)
        w = (torch.randn(n, k) / k**0.5).requires_grad_(args.backward)
        b = torch.randn(n, requires_grad=args.backward)

        def run(fn):
            def call():
                with torch.set_grad_enabled(args.backward):
                    y = fn(x, w, b)
                    if args.backward:
                        y.sum().backward()

            return call

        base, ours = run(F.linear), run(linear)
        for fn in (base, ours, base, ours):  # warm-up
            fn()
        t_base, t_ours = [], []
        for _ in range(3):  # alternate blocks so that both see the same machine state
            t_base.append(timed(base, args.runs))
            t_ours.append(timed(ours, args.runs))
        tb, to = statistics.median(t_base), statistics.median(t_ours)
        print(f"| {name} | {rows} x {k} -> {n} | {tb * 1e3:.2f} | {to * 1e3:.2f} | {tb / to:.2f}x |")


if __name__ == "__main__":
    main()
