#!/usr/bin/env python
"""Speed of COCO AP (segm + bbox) and PQ: the previous path against the current one, in one run, same data.

    python benchmarks/evaluation.py [--images 2000] [--instances 20] [--segments 20] [--pan-size 256 320]
                                    [--rounds 3] [--workers N] [--skip-instance] [--skip-panoptic]

The data are generated (universal_seg.evaluation.synthetic): ``--images`` images with ``--instances`` objects each
for AP (96-160 px images), and ``--images`` panoptic PNG pairs of ``--pan-size`` with ``--segments`` segments for PQ.

  AP   previous: detectron2's _evaluate_predictions_on_coco(use_fast_impl=False), i.e. pycocotools, as our
       COCOEvaluator ran it; current: universal_seg.evaluation.coco.evaluate_coco (faster-coco-eval), including
       the construction of its ground-truth index (once per evaluator).
  PQ   previous: panopticapi.evaluation.pq_compute (files, cpu_count() processes), as detectron2's
       COCOPanopticEvaluator and our offline evaluation ran it; current: universal_seg.evaluation.panoptic_quality
       .pq_compute on the same files (``--workers`` processes, default: the CPUs this process may use).

Each round runs previous then current; the table gives median and min-max seconds over the rounds and the
speed-up (previous / current) of each round. The results of the two paths are checked to agree to 1e-9.
"""

import argparse
import contextlib
import copy
import io
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco  # noqa: E402
from panopticapi.evaluation import pq_compute as panopticapi_pq_compute  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402

from universal_seg.evaluation.coco import evaluate_coco, fast_coco_api  # noqa: E402
from universal_seg.evaluation.panoptic_quality import available_cpus, pq_compute  # noqa: E402
from universal_seg.evaluation.synthetic import instance_set, panoptic_set  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def ap_previous(coco_gt, results):
    with contextlib.redirect_stdout(io.StringIO()):
        return [_evaluate_predictions_on_coco(coco_gt, results, t, use_fast_impl=False).stats for t in ("segm", "bbox")]


def ap_current(gt, results):
    api = fast_coco_api(gt)
    return [evaluate_coco(api, results, t).stats for t in ("segm", "bbox")]


def pq_previous(files):
    with contextlib.redirect_stdout(io.StringIO()):
        return panopticapi_pq_compute(files[0], files[2], gt_folder=files[1], pred_folder=files[3])


def pq_flat(result):
    values = [result[k][m] for k in ("All", "Things", "Stuff") for m in ("pq", "sq", "rq")]
    return np.array(values + [v[m] for c, v in sorted(result["per_class"].items()) for m in ("pq", "sq", "rq")])


def report(name, previous, current):
    ratios = [p / c for p, c in zip(previous, current)]
    print(
        f"{name:4s} previous {statistics.median(previous):7.2f} s ({min(previous):.2f}-{max(previous):.2f})   "
        f"current {statistics.median(current):7.2f} s ({min(current):.2f}-{max(current):.2f})   "
        f"speed-up {statistics.median(ratios):5.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--instances", type=int, default=20)
    p.add_argument("--segments", type=int, default=20)
    p.add_argument("--pan-size", type=int, nargs=2, default=[256, 320], metavar=("H", "W"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--skip-instance", action="store_true")
    p.add_argument("--skip-panoptic", action="store_true")
    args = p.parse_args()
    print(f"{args.images} images, {args.rounds} rounds, CPUs usable: {available_cpus()}, load {os.getloadavg()}")
    if not args.skip_instance:
        t, (gt, results) = timed(lambda: instance_set(args.images, instances=args.instances, seed=0))
        print(f"AP set: {len(gt['annotations'])} objects, {len(results)} detections (generated in {t:.0f} s)")
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO()
            coco_gt.dataset = copy.deepcopy(gt)
            coco_gt.createIndex()  # built once by the evaluator's constructor on both paths: not timed
        prev, cur = [], []
        for _ in range(args.rounds):
            t_prev, s_prev = timed(lambda: ap_previous(coco_gt, copy.deepcopy(results)))
            t_cur, s_cur = timed(lambda: ap_current(gt, results))
            diff = max(float(np.abs(np.asarray(a)[:12] - np.asarray(b)).max()) for a, b in zip(s_prev, s_cur))
            assert diff < 1e-9, f"AP differs by {diff}"
            prev.append(t_prev)
            cur.append(t_cur)
        print(f"AP segm {s_cur[0][0]:.4f}, bbox {s_cur[1][0]:.4f}; largest difference of the 2 x 12 stats: {diff:.1e}")
        report("AP", prev, cur)
    if not args.skip_panoptic:
        with tempfile.TemporaryDirectory(prefix="pq_bench") as folder:
            size = tuple(args.pan_size)
            t, files = timed(lambda: panoptic_set(folder, args.images, segments=args.segments, seed=0, size=size))
            print(f"PQ set: {args.images} PNG pairs of {size[0]}x{size[1]} (generated in {t:.0f} s)")
            prev, cur = [], []
            for _ in range(args.rounds):
                t_prev, r_prev = timed(lambda: pq_previous(files))
                t_cur, r_cur = timed(lambda: pq_compute(files[0], files[2], files[1], files[3], workers=args.workers))
                diff = float(np.abs(pq_flat(r_prev) - pq_flat(r_cur)).max())
                assert diff < 1e-9, f"PQ differs by {diff}"
                prev.append(t_prev)
                cur.append(t_cur)
            print(f"PQ = {r_cur['All']['pq']:.4f}; largest difference (all / things / stuff, per class): {diff:.1e}")
            report("PQ", prev, cur)
    print(f"load at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
