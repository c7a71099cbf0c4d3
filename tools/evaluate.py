#!/usr/bin/env python
"""Evaluate prediction files offline with the official libraries.

  instance           COCO segm/bbox AP of a COCO results JSON (pycocotools' numbers, compiled: faster-coco-eval)
  panoptic           PQ/SQ/RQ (all, things, stuff) of COCO-panoptic PNG + JSON predictions (panopticapi's numbers,
                     matched in --workers processes)
  semantic           mIoU, fwIoU, mACC, pACC of label PNGs (detectron2 SemSegEvaluator definitions)
  pq-from-semantic   PQ of semantic label PNGs against a panoptic GT: every class in a prediction is ONE segment

Inputs (ids, repeats, label ranges, RLE, scores, PNG modes and sizes) and --output are validated first: a problem is
reported in one line on stderr with exit status 2. --output is written atomically; its folder is created if missing.

Examples:
  python tools/evaluate.py instance --gt datasets/mini/instances_val.json --pred results.json
  python tools/evaluate.py panoptic --gt-json G.json --gt-folder G/ --pred-json P.json --pred-folder P/
  python tools/evaluate.py semantic --gt-folder datasets/mini/semantic --pred-folder out/ --num-classes 21
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from universal_seg.atomic import OutputPathError, atomic_write_text, check_output_file  # noqa: E402
from universal_seg.evaluation.offline import (  # noqa: E402
    evaluate_instance,
    evaluate_panoptic,
    evaluate_pq_from_semantic,
    evaluate_semantic,
)
from universal_seg.evaluation.offline.errors import PredictionFileError  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--output", help="also write the metrics as JSON to this file (written atomically; its folder is created)"
    )
    sub = p.add_subparsers(dest="task", required=True)
    s = sub.add_parser("instance", help="COCO segm/bbox AP")
    s.add_argument("--gt", required=True, help="COCO instance ground-truth JSON")
    s.add_argument("--pred", required=True, help="COCO results JSON (list of {image_id, category_id, score, ...})")
    s.add_argument("--iou-types", nargs="+", default=["segm", "bbox"], choices=["segm", "bbox"])
    for name, helptext in (
        ("panoptic", "PQ/SQ/RQ of panoptic predictions"),
        ("pq-from-semantic", "PQ of semantic predictions (one segment per class)"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--gt-json", required=True)
        s.add_argument("--gt-folder", required=True)
        s.add_argument("--pred-folder", required=True)
        s.add_argument("--workers", type=int, default=None, help="processes (default: the CPUs this one may use)")
        if name == "panoptic":
            s.add_argument("--pred-json", required=True)
        else:
            s.add_argument("--ignore-label", type=int, default=255)
    s = sub.add_parser("semantic", help="mIoU, fwIoU, mACC, pACC")
    s.add_argument("--gt-folder", required=True, help="ground-truth label PNGs <id>.png")
    s.add_argument("--pred-folder", required=True, help="predicted label PNGs <id>.png, values 0..K-1")
    s.add_argument("--num-classes", type=int, required=True)
    s.add_argument("--ignore-label", type=int, default=255)
    return p


def run(args):
    if args.task == "instance":
        return evaluate_instance(args.gt, args.pred, tuple(args.iou_types))
    if args.task == "panoptic":
        return evaluate_panoptic(args.gt_json, args.gt_folder, args.pred_json, args.pred_folder, workers=args.workers)
    if args.task == "pq-from-semantic":
        return evaluate_pq_from_semantic(
            args.gt_json, args.gt_folder, args.pred_folder, ignore_label=args.ignore_label, workers=args.workers
        )
    return evaluate_semantic(args.gt_folder, args.pred_folder, args.num_classes, args.ignore_label)


def print_metrics(metrics, prefix=""):
    for key, value in metrics.items():
        if isinstance(value, dict):
            print_metrics(value, prefix=f"{prefix}{key}/")
        elif not key.startswith(("IoU-", "ACC-")):
            print(f"{prefix}{key:8s} {value:8.3f}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "workers", None) is not None and args.workers < 1:
        print(f"error: --workers must be at least 1 (got {args.workers}).", file=sys.stderr)
        return 2
    try:
        if args.output:  # checked before the (possibly long) evaluation, not after it
            check_output_file(args.output, "--output", "metrics.json")
        metrics = run(args)
    except (PredictionFileError, OutputPathError, OSError) as e:  # malformed / mismatched inputs, missing or
        # unreadable files, an --output that cannot be written
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print_metrics(metrics)
    if args.output:
        try:
            atomic_write_text(args.output, json.dumps(metrics, indent=1))
        except OSError as e:  # e.g. the disk filled up meanwhile: the old file (if any) is untouched
            print(f"error: cannot write --output '{args.output}' ({e.strerror or e}).", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
