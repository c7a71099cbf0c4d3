#!/usr/bin/env python
"""CPU inference latency of OneFormer R50 against Mask2Former R50 (COCO panoptic configs, all three outputs on), in
alternating rounds in one process so that both see the same machine state.

    python benchmarks/oneformer_vs_m2f.py [--size 512] [--threads 2] [--rounds 5]

OneFormer is timed with MODEL.TEST.TASK "panoptic" (one decoder pass: the official inference) and "per_output" (one
pass per output: semantic, instance and panoptic each with its own task token). Its text branch is built but not
run at inference, so "panoptic" / Mask2Former measures the task token, the query transformer and the 150 (vs 100)
queries. Untrained weights; prints medians and the spread (min-max) over the rounds. ``--flops`` instead counts
the floating-point operations of one pass of each (torch.utils.flop_counter: matrix products and convolutions;
the MSDeformAttn op is not counted), a measure that does not depend on the machine's load.
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

MODELS = {
    "mask2former_r50": ("configs/coco/panoptic/m2f_r50.yaml", []),
    "oneformer_r50 (TASK panoptic)": ("configs/coco/panoptic/oneformer_r50.yaml", ["MODEL.TEST.TASK", "panoptic"]),
    "oneformer_r50 (TASK per_output)": ("configs/coco/panoptic/oneformer_r50.yaml", ["MODEL.TEST.TASK", "per_output"]),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--flops", action="store_true", help="count FLOPs of one pass instead of timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {}
    for name, (config, opts) in MODELS.items():
        models[name] = build_model(load_config(config, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts])).eval()
    image = torch.randint(0, 256, (3, args.size, args.size), dtype=torch.uint8)
    inputs = [{"image": image, "height": args.size, "width": args.size}]
    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

        def mkldnn_conv_flop(x_shape, w_shape, *args, out_shape=None, **kwargs):
            # ops.linear / ops.matmul call aten.mkldnn_convolution, which the counter has no formula for
            return conv_flop_count(x_shape, w_shape, out_shape)

        mapping = {torch.ops.aten.mkldnn_convolution: mkldnn_conv_flop}
        counts = {}
        for name, model in models.items():
            with FlopCounterMode(display=False, custom_mapping=mapping) as counter:  # (module tracker: autograd on)
                model(inputs)
            counts[name] = counter.get_total_flops()
        for name, n in counts.items():
            print(
                f"{name:34s} {args.size}x{args.size}: {n / 1e9:.1f} GFLOP, "
                f"/ Mask2Former {n / counts['mask2former_r50']:.3f}"
            )
        return
    times = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():  # warm-up
            model(inputs)
        for _ in range(args.rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(inputs)
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["mask2former_r50"])
    for name, t in times.items():
        med = statistics.median(t)
        print(
            f"{name:34s} {args.size}x{args.size}, {args.threads} threads: median {med:.3f} s "
            f"(spread {min(t):.3f}-{max(t):.3f}), / Mask2Former {med / base:.3f}"
        )


if __name__ == "__main__":
    main()
