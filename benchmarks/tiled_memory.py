#!/usr/bin/env python
"""Peak CPU memory of inference on large images, whole-image vs tiled (TEST.TILING), with universal_seg.Predictor.

    python benchmarks/tiled_memory.py                                   # the default cases below
    python benchmarks/tiled_memory.py --sizes 4000x6000 --no-whole --min-size-test 1000 --max-size-test 1500

Each case runs in a fresh process: the model is built and warmed up on a 64x64 image, then one synthetic image
(random 64x64 blocks of colour, seeded) of the given size is predicted, by default at native resolution
(INPUT.MIN_SIZE_TEST 0: the network sees every pixel; --min-size-test / --max-size-test resize it first, the
outputs are at the image's size either way). Printed per case: the peak resident memory above the warmed-up
process (ru_maxrss), the bytes of the returned outputs ("sem_seg" [K, H, W] float32, "panoptic_seg" ids,
"instances" masks [N, H, W] bool), and the rest (working memory, less the input image). Tiled inference keeps the
network's share bounded by the tile size and merges the tiles as they come (universal_seg/inference/tiling.py says
what the merges hold); the outputs grow with the image.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MINI = os.path.join(ROOT, "configs", "mini", "panoptic", "m2f_r18.yaml")


def output_bytes(out: dict) -> int:
    total = 0
    if "sem_seg" in out:
        total += out["sem_seg"].numel() * out["sem_seg"].element_size()
    if "panoptic_seg" in out:
        total += out["panoptic_seg"][0].numel() * out["panoptic_seg"][0].element_size()
    if "instances" in out:
        masks = out["instances"].pred_masks
        total += masks.numel() * masks.element_size()
    return total


def run_case(args) -> dict:
    """One measurement in this process (called in a child)."""
    import numpy as np
    import torch

    import universal_seg
    from universal_seg.config import load_config
    from universal_seg.modeling.meta_arch import enable_output_task

    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.split("x"))
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "TEST.MAX_OUTPUT_PIXELS", "0"]
    opts += ["INPUT.MIN_SIZE_TEST", str(args.min_size_test), "INPUT.MAX_SIZE_TEST", str(args.max_size_test)]
    if args.tiled:
        opts += ["TEST.TILING.ENABLED", "True", "TEST.TILING.TILE_SIZE", f"[{args.tile}, {args.tile}]"]
        opts += ["TEST.TILING.OVERLAP", str(args.overlap), "TEST.TILING.BATCH_SIZE", "2"]
    tasks = args.tasks.split(",")
    for task, key in (("semantic", "SEMANTIC_ON"), ("instance", "INSTANCE_ON"), ("panoptic", "PANOPTIC_ON")):
        opts += [f"MODEL.MASK_FORMER.TEST.{key}", str(task in tasks)]  # command-line overrides, as a user would
    cfg = load_config(args.config_file, opts)
    for task in tasks:
        enable_output_task(cfg, task)
    torch.manual_seed(0)
    predictor = universal_seg.Predictor(cfg)
    predictor(np.zeros((64, 64, 3), np.uint8))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (height // 64 + 1, width // 64 + 1, 3), dtype=np.uint8)
    image = np.ascontiguousarray(np.repeat(np.repeat(small, 64, 0), 64, 1)[:height, :width])
    image_bytes = image.nbytes
    t0 = time.perf_counter()
    out = predictor(image)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    outputs = output_bytes(out)
    return {
        "size": args.size,
        "tiled": args.tiled,
        "tasks": args.tasks,
        "peak_above_warm_MiB": round((peak - base) / 2**20, 1),
        "outputs_MiB": round(outputs / 2**20, 1),
        "input_MiB": round(image_bytes / 2**20, 1),
        "working_MiB": round((peak - base - outputs - image_bytes) / 2**20, 1),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", default=MINI)
    p.add_argument("--sizes", nargs="+", default=["1024x2048", "4000x6000"])
    p.add_argument("--tasks", nargs="+", default=["semantic", "panoptic,instance"], help="comma-joined task sets")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-size-test", type=int, default=0, help="INPUT.MIN_SIZE_TEST (default 0: native size)")
    p.add_argument("--max-size-test", type=int, default=100000, help="INPUT.MAX_SIZE_TEST")
    p.add_argument("--no-whole", action="store_true", help="skip whole-image runs (run only at the first size)")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case in this process
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--tiled", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        args.tasks = args.case
        print(json.dumps(run_case(args)))
        return
    cases = []
    for size in args.sizes:
        for tasks in args.tasks:
            cases.append((size, tasks, True))
            if not args.no_whole and size == args.sizes[0]:
                cases.append((size, tasks, False))
    common = ["--config-file", args.config_file, "--tile", str(args.tile), "--overlap", str(args.overlap)]
    common += ["--threads", str(args.threads), "--min-size-test", str(args.min_size_test)]
    common += ["--max-size-test", str(args.max_size_test)]
    resize = f"test resize {args.min_size_test}/{args.max_size_test}" if args.min_size_test else "native size"
    print(f"tile {args.tile}, overlap {args.overlap}, {args.threads} threads, {resize}, config {args.config_file}")
    print(f"{'size':>10} {'mode':>6} {'tasks':>17} {'peak+':>9} {'outputs':>9} {'working':>9} {'s':>7}  (MiB)")
    for size, tasks, tiled in cases:
        cmd = [sys.executable, __file__, *common, "--case", tasks, "--size", size] + (["--tiled"] if tiled else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{size:>10} {'tiled' if tiled else 'whole':>6} {tasks:>17} failed: {proc.stderr.strip()[-300:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"{size:>10} {'tiled' if tiled else 'whole':>6} {tasks:>17} {r['peak_above_warm_MiB']:>9} "
            f"{r['outputs_MiB']:>9} {r['working_MiB']:>9} {r['seconds']:>7}",
            flush=True,
        )


if __name__ == "__main__":
    main()
