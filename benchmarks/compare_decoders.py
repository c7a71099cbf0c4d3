#!/usr/bin/env python
"""Mask2Former vs StructToken-universal decoders on the same backbone: a short training run on the bundled mini
panoptic dataset, then evaluation, one config after the other with the same seed.

    python benchmarks/compare_decoders.py [--iters 150] [--configs A.yaml B.yaml]

For each config: ``tools/train_net.py --config-file CONFIG SOLVER.MAX_ITER N SEED S OUTPUT_DIR ...`` in a fresh
process, then reads its ``metrics.json``. Prints the total loss (which sums every deeply supervised prediction, so
it depends on the number of decoder layers) and the final prediction's loss alone (loss_ce + loss_mask + loss_dice)
from the last logged record (detectron2 logs each loss as the median over the preceding 20 iterations), and PQ /
mask AP / mIoU on the mini validation set. ``--reuse`` reads finished runs in --output instead of training.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = ["configs/mini/panoptic/m2f_r18.yaml", "configs/mini/panoptic/structtoken_pwe_r18.yaml"]


def read_metrics(path: str) -> tuple[list[dict], dict]:
    """(training records with a total_loss, the last record with evaluation results)."""
    train, evaluation = [], {}
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if "total_loss" in record:
                train.append(record)
            if any(k.startswith(("panoptic_seg/", "segm/", "sem_seg/")) for k in record):
                evaluation = record
    return train, evaluation


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT)
    parser.add_argument("--iters", type=int, default=150)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", default=None, help="parent folder of the runs (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="only read the runs already in --output")
    args = parser.parse_args()
    parent = args.output or tempfile.mkdtemp(prefix="compare_decoders_")
    rows = []
    for config in args.configs:
        out = os.path.join(parent, os.path.splitext(os.path.basename(config))[0])
        cmd = [
            sys.executable,
            os.path.join(ROOT, "tools/train_net.py"),
            "--config-file",
            config,
            "SOLVER.MAX_ITER",
            str(args.iters),
            "SEED",
            str(args.seed),
            "OUTPUT_DIR",
            out,
        ]
        if not args.reuse:
            print("running:", " ".join(cmd), flush=True)
            subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        train, evaluation = read_metrics(os.path.join(out, "metrics.json"))
        if not train:
            sys.exit(f"{out}/metrics.json has no training records; see {out}/log.txt.")
        last = train[-1]
        final = last["loss_ce"] + last["loss_mask"] + last["loss_dice"]
        n_pred = sum(1 for k in last if k.startswith("loss_ce"))
        rows.append(
            (
                config,
                n_pred,
                last["total_loss"],
                final,
                evaluation.get("panoptic_seg/PQ"),
                evaluation.get("segm/AP"),
                evaluation.get("sem_seg/mIoU"),
            )
        )
    print(f"\n{args.iters} iterations, seed {args.seed}; losses: the last logged record (median of 20 iterations)")
    print("| config | supervised predictions | total loss | final-prediction loss | PQ | mask AP | mIoU |")
    print("|---|---|---|---|---|---|---|")
    for config, n_pred, total, final, pq, ap, miou in rows:
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        print(f"| {config} | {n_pred} | {total:.2f} | {final:.2f} | {fmt(pq)} | {fmt(ap)} | {fmt(miou)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
