#!/usr/bin/env python
"""Speed of Mask2Former's per-image post-processing (semantic / panoptic / instance inference), optionally against
another version of universal_seg/modeling/postprocess.py loaded from a file (e.g. a copy of an older revision).

    python benchmarks/postprocess.py [--size 512] [--queries 100] [--classes 133] [--kept 25] [--threads 2]
                                     [--device cpu] [--runs 9] [--old /tmp/postprocess_old.py]

Inputs are synthetic but shaped like a model's: mask logits upsampled bilinearly from 1/4 resolution, blobs of
positive logits that overlap, ``--kept`` confident queries (about half of them stuff classes, some of one class).
With ``--old``, each function runs old and new alternately (interleaved, after warm-up), the outputs of the two are
checked to be equal, and the table gives median and min-max milliseconds per image.
"""

import argparse
import importlib.util
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def load_module(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_inputs(queries: int, classes: int, kept: int, size: int, device: str, seed: int = 0):
    """mask_cls [Q, K+1], mask_pred [Q, size, size], thing ids (the first half of the classes).

    The confident queries split the image like a panoptic segmentation (cells around random centres, with soft,
    noisy borders); the others predict random blobs.
    """
    gen = torch.Generator().manual_seed(seed)
    low = size // 4
    yy, xx = torch.meshgrid(
        torch.arange(low, dtype=torch.float32), torch.arange(low, dtype=torch.float32), indexing="ij"
    )
    centres = torch.rand(queries, 2, generator=gen) * low
    dist = ((yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2).sqrt()  # [Q, low, low]
    confident = torch.randperm(queries, generator=gen)[:kept]
    cell_dist = dist[confident]
    nearest_other = torch.stack([torch.cat([cell_dist[:i], cell_dist[i + 1 :]]).amin(0) for i in range(kept)])
    radii = (0.05 + 0.2 * torch.rand(queries, generator=gen)) * low
    logits = (radii[:, None, None] - dist) / 4  # blobs
    logits[confident] = (nearest_other - cell_dist) / 2  # cells: positive inside, negative outside
    logits += torch.randn(queries, low, low, generator=gen)
    mask_pred = F.interpolate(logits[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    mask_cls = torch.randn(queries, classes + 1, generator=gen)
    mask_cls[:, classes] += 4.0  # most queries: no-object
    labels = torch.randint(classes, (kept,), generator=gen)
    labels[: kept // 4] = classes - 1  # a stuff class predicted by several queries
    mask_cls[confident, labels] += 12.0
    thing_ids = set(range(classes // 2))
    return mask_cls.to(device), mask_pred.to(device).contiguous(), thing_ids


def same_outputs(name: str, a, b) -> None:
    if name == "semantic":
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    elif name == "panoptic":
        assert a[0].dtype == b[0].dtype and torch.equal(a[0], b[0]) and a[1] == b[1], "panoptic outputs differ"
    else:
        assert torch.equal(a.pred_masks, b.pred_masks) and torch.equal(a.pred_classes, b.pred_classes)
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        torch.testing.assert_close(a.scores, b.scores)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--classes", type=int, default=133)
    parser.add_argument("--kept", type=int, default=25, help="queries above the panoptic score threshold")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--old", help="path of another postprocess.py to compare with")
    parser.add_argument("--new", help="path of the postprocess.py to measure (default: universal_seg's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.new:
        new = load_module(args.new, "postprocess_new")
    else:
        from universal_seg.modeling import postprocess as new
    versions = {"new": new}
    if args.old:
        versions = {"old": load_module(args.old, "postprocess_old"), **versions}

    mask_cls, mask_pred, thing_ids = make_inputs(args.queries, args.classes, args.kept, args.size, args.device)
    k = args.classes
    calls = {
        "semantic": lambda m: m.semantic_inference(mask_cls, mask_pred),
        "panoptic": lambda m: m.panoptic_inference(mask_cls, mask_pred, k, 0.8, 0.8, thing_ids),
        "instance": lambda m: m.instance_inference(mask_cls, mask_pred, k, 100, True, thing_ids),
    }
    sync = torch.cuda.synchronize if mask_pred.is_cuda else (lambda: None)
    print(
        f"device {args.device}, threads {args.threads}, Q={args.queries}, K={k}, {args.size}x{args.size}, "
        f"{args.runs} interleaved runs after {args.warmup} warm-up"
    )
    print(f"{'function':10s} {'version':8s} {'median ms':>10s} {'min ms':>9s} {'max ms':>9s}")
    for name, call in calls.items():
        outputs = {v: call(m) for v, m in versions.items()}
        if "old" in outputs:
            same_outputs(name, outputs["old"], outputs["new"])
        if name == "panoptic":
            segments = len(outputs["new"][1])
            print(f"# panoptic: {segments} segments")
        times = {v: [] for v in versions}
        for run in range(args.warmup + args.runs):
            for v, m in versions.items():
                sync()
                start = time.perf_counter()
                call(m)
                sync()
                if run >= args.warmup:
                    times[v].append(1e3 * (time.perf_counter() - start))
        for v, ts in times.items():
            print(f"{name:10s} {v:8s} {statistics.median(ts):10.2f} {min(ts):9.2f} {max(ts):9.2f}")


if __name__ == "__main__":
    main()
