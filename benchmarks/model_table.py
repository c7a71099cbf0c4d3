#!/usr/bin/env python
"""Parameters, GFLOPs and CPU latency of every ADE20K semantic config (and the COCO panoptic ones) next to the
papers' numbers, as one markdown table.

    python benchmarks/model_table.py [--size 512] [--threads 2] [--runs 3] [--configs FILE ...]

- params: all parameters of the built model (M).
- GFLOPs: fvcore on backbone + head for one [1, 3, size, size] image, one multiply-add = one flop, with the
  MSDeformAttn and scaled_dot_product_attention handles of tools/analyze_model.py. "w/o matmul" drops the
  functional matmul / bmm ops (attention products written as ``q @ k``): mmseg's get_flops, which produced the
  SegFormer and CGRSeg papers' numbers, counts nn.Modules only and so never sees them.
- GFLOPs are the architecture's (the papers' operation order: exact fusions such as the SegFormer head's
  ``fused`` switched off); "executed" counts what runs by default (fusions on).
- latency: median seconds over --runs calls of ``model([{"image": ...}])`` in eval mode (preprocessing, network and
  the config's post-processing) after one warm-up, on the CPU with --threads threads, untrained weights.
Papers: models.md beside the reference facts (SegFormer table 1 / 2; CGRSeg; SETR about 318M for ViT-L heads;
Mask2Former R50 44.1M). SegFormer-B5's 183.3 GFLOPs are at 640x640 (its ADE20K crop), not 512.
"""

import argparse
import glob
import logging
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import torch  # noqa: E402
from analyze_model import MS_DEFORM_ATTN_OP, SDPA_OP, NetworkOnly, build, ms_deform_attn_flop_jit, sdpa_flop_jit  # noqa: E402
from fvcore.nn import FlopCountAnalysis  # noqa: E402

# config stem -> (params M, GFLOPs at 512 or None) from the papers (models.md)
PAPER = {
    "segformer_b0": (3.8, 8.4),
    "segformer_b1": (13.7, 15.9),
    "segformer_b2": (27.5, 62.4),
    "segformer_b3": (47.3, 79.0),
    "segformer_b4": (64.1, 95.7),
    "segformer_b5": (84.7, None),
    "cgrseg_t": (9.4, 4.0),
    "cgrseg_b": (18.1, 7.6),
    "cgrseg_l": (35.7, 14.9),
    "setr_naive_vit_l": (318, None),
    "setr_pup_vit_l": (318, None),
    "setr_mla_vit_l": (318, None),
    "m2f_r50": (44.1, None),
}
SKIP = ("Base-", "structtoken_base")


def default_configs() -> list[str]:
    ade = sorted(
        p
        for p in glob.glob(os.path.join(ROOT, "configs/ade20k/semantic/*.yaml"))
        if not os.path.basename(p).startswith(SKIP)
    )
    coco = sorted(glob.glob(os.path.join(ROOT, "configs/coco/panoptic/*.yaml")))
    return [os.path.relpath(p, ROOT) for p in ade + coco if not os.path.basename(p).startswith(SKIP)]


def gflops(model, size: int) -> tuple[float, float]:
    """(all ops, without matmul / bmm) in GFLOPs for one [1, 3, size, size] image."""
    analysis = FlopCountAnalysis(NetworkOnly(model).eval(), torch.zeros(1, 3, size, size)).set_op_handle(
        MS_DEFORM_ATTN_OP, ms_deform_attn_flop_jit, SDPA_OP, sdpa_flop_jit
    )
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with torch.no_grad():
        total = analysis.total()
        by_op = analysis.by_operator()
    return total / 1e9, (total - by_op.get("matmul", 0) - by_op.get("bmm", 0)) / 1e9


def set_fused(model, fused: bool) -> bool:
    """Switches every module with an exact-fusion switch (a ``fused`` attribute); True when the model has one."""
    found = False
    for m in model.modules():
        if isinstance(getattr(m, "fused", None), bool):
            m.fused, found = fused, True
    return found


def latency(model, size: int, runs: int) -> float:
    """Median seconds per image of the full inference call (after one warm-up call)."""
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
    inputs = [{"image": image, "height": size, "width": size}]
    times = []
    with torch.no_grad():
        for i in range(runs + 1):
            start = time.perf_counter()
            model(inputs)
            if i:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def fmt(value, digits=1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=None, help="config files (default: all ADE20K + COCO)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-latency", action="store_true")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"input {args.size}x{args.size}; CPU latency: median of {args.runs} after one warm-up, "
        f"{args.threads} threads, {torch.__version__}\n"
    )
    print(
        "| config | params (M) | paper | GFLOPs | GFLOPs w/o matmul | paper | executed GFLOPs | CPU latency (s) "
        "| latency unfused (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for config in args.configs or default_configs():
        model = build(config, [])
        stem = os.path.splitext(os.path.basename(config))[0]
        paper_params, paper_flops = PAPER.get(stem, (None, None))
        params = sum(p.numel() for p in model.parameters()) / 1e6
        fusable = set_fused(model, False)
        all_ops, no_matmul = gflops(model, args.size)
        unfused = None
        if fusable and not args.no_latency:
            unfused = latency(model, args.size, args.runs)
        set_fused(model, True)
        executed = gflops(model, args.size)[0] if fusable else all_ops
        seconds = None if args.no_latency else latency(model, args.size, args.runs)
        print(
            f"| {config} | {params:.2f} | {fmt(paper_params)} | {all_ops:.1f} | {no_matmul:.1f} | "
            f"{fmt(paper_flops)} | {executed:.1f} | {fmt(seconds, 2)} | {fmt(unfused, 2)} |",
            flush=True,
        )
        del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
