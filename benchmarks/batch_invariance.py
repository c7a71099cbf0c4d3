#!/usr/bin/env python
"""What batch-invariant CPU inference costs: one batch through the model with and without
universal_seg.ops.batch_invariant's mode, and the same images one by one, alternating in every round.

    python benchmarks/batch_invariance.py [--config-file configs/coco/panoptic/m2f_r50.yaml] [--size 512]
        [--batch 4] [--threads 2] [--runs 5]

"with mode" is ``model(inputs)`` (what SegmentorBase.forward runs for a CPU batch); "without" calls the same
``forward_inference`` outside the mode (the old behaviour: PyTorch's batch-dependent convolution and GroupNorm paths);
"one by one" runs ``model([x])`` per image (the mode is not entered for one image). It also prints whether the
batched outputs equal the one-by-one outputs bit for bit, with and without the mode. Untrained weights.
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


def _equal(a: list[dict], b: list[dict]) -> bool:
    for x, y in zip(a, b):
        if "sem_seg" in x and not torch.equal(x["sem_seg"], y["sem_seg"]):
            return False
        if "panoptic_seg" in x and not torch.equal(x["panoptic_seg"][0], y["panoptic_seg"][0]):
            return False
        if "instances" in x and not torch.equal(x["instances"].pred_masks, y["instances"].pred_masks):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default="configs/coco/panoptic/m2f_r50.yaml")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config_file, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    inputs = [
        {"image": torch.randint(0, 256, (3, args.size, args.size), dtype=torch.uint8, generator=gen)}
        for _ in range(args.batch)
    ]

    def with_mode():
        return model(inputs)

    def without_mode():
        return model.forward_inference(inputs, model.preprocess(inputs))

    def one_by_one():
        return [model([x])[0] for x in inputs]

    variants = {"with mode": with_mode, "without mode": without_mode, "one by one": one_by_one}
    times = {name: [] for name in variants}
    with torch.no_grad():
        reference = one_by_one()
        print(
            f"batched == one by one, bit for bit: with mode {_equal(with_mode(), reference)}, "
            f"without mode {_equal(without_mode(), reference)}"
        )
        names = list(variants)
        for r in range(args.runs):
            for name in names[r % 3 :] + names[: r % 3]:  # rotate the order every round
                start = time.perf_counter()
                variants[name]()
                times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"{os.path.basename(args.config_file)}, {args.batch} images of {args.size}x{args.size}, {args.threads} threads"
    )
    for name, t in times.items():
        print(f"  {name:13s} median {med[name]:.3f} s (min {min(t):.3f}, max {max(t):.3f}) per batch")
    print(
        f"  with / without mode {med['with mode'] / med['without mode']:.3f}; "
        f"with mode / one by one {med['with mode'] / med['one by one']:.3f}"
    )


if __name__ == "__main__":
    main()
