#!/usr/bin/env python
"""Seconds per training iteration of Mask2Former on the CPU (forward + backward + optimizer step) on real images,
with a stage breakdown.

    python benchmarks/m2f_train_step.py [--config-file configs/coco/panoptic/m2f_r50.yaml] [--size 384]
        [--batch 2] [--threads 2] [--iters 5] [--warmup 2] [--dataset mini_panoptic_train]

Each iteration maps ``--batch`` images of the bundled mini dataset with the config's training mapper (LSJ crop of
``--size`` = INPUT.IMAGE_SIZE), then runs the model in training mode, ``backward`` and the recipe's optimizer
(AdamW with full-model gradient clipping). The seeds are fixed, so two commits see the same crops. Untrained
weights: the work per iteration does not depend on them (the matched pairs do, not their count).

Stages, timed with module hooks and medians over the timed iterations (they do not add up exactly to the total:
``other`` is the rest of the forward, e.g. normalisation, target padding and the loss weighting):
data (mapper), backbone, pixel decoder, decoder (the transformer decoder with its mask predictions), matcher
(all prediction sets), criterion (losses, without the matcher), backward, optimizer (zero_grad + clip + step).

The last line is ``median <s> s per iteration (spread <min>-<max>, N iterations)``, which
``benchmarks/compare_commits.py`` reads. With PYTHONPATH set (as compare_commits does), the package is imported
from there, so this script can time a commit that does not have it (pass the script's absolute path).
"""

import argparse
import os
import random
import statistics
import sys
import time
from collections import defaultdict

if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

import universal_seg.data  # noqa: E402,F401  (registers the datasets)
import universal_seg.modeling  # noqa: E402,F401
from universal_seg.config import load_config  # noqa: E402
from universal_seg.data.mappers import build_mapper  # noqa: E402
from universal_seg.engine.optimizer import build_optimizer  # noqa: E402

STAGES = ("data", "backbone", "pixel decoder", "decoder", "matcher", "criterion", "other", "backward", "optimizer")


class StageTimer:
    """Accumulates wall time of modules' forward calls (pre-hook to post-hook), per stage name."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self._start = {}

    def attach(self, module: torch.nn.Module, stage: str) -> None:
        def pre(_module, _args):
            self._start[stage] = time.perf_counter()

        def post(_module, _args, _output):
            self.seconds[stage] += time.perf_counter() - self._start.pop(stage)

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)


def print_stages(per_stage: dict, stages, total: float) -> None:
    """One row per stage: median, min and max seconds over the timed iterations, and the median's share of
    ``total`` (the median of the whole)."""
    print(f"{'stage':<14} {'median s':>9} {'min':>7} {'max':>7} {'share':>6}")
    for stage in stages:
        v = per_stage[stage]
        m = statistics.median(v)
        print(f"{stage:<14} {m:9.3f} {min(v):7.3f} {max(v):7.3f} {m / total:6.1%}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default="configs/coco/panoptic/m2f_r50.yaml")
    parser.add_argument("--dataset", default="mini_panoptic_train")
    parser.add_argument("--size", type=int, default=384, help="INPUT.IMAGE_SIZE: the square LSJ training crop")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    cfg = load_config(
        args.config_file,
        [
            "MODEL.WEIGHTS",
            "",
            "MODEL.DEVICE",
            "cpu",
            "INPUT.IMAGE_SIZE",
            str(args.size),
            "DATASETS.TRAIN",
            f"('{args.dataset}',)",
            "SOLVER.IMS_PER_BATCH",
            str(args.batch),
            *args.opts,
        ],
    )
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    mapper = build_mapper(cfg, is_train=True)
    dicts = DatasetCatalog.get(args.dataset)

    timer = StageTimer()
    timer.attach(model.backbone, "backbone")
    timer.attach(model.sem_seg_head.pixel_decoder, "pixel decoder")
    timer.attach(model.sem_seg_head.predictor, "decoder")
    timer.attach(model.criterion, "criterion")
    timer.attach(model.criterion.matcher, "matcher")

    per_stage, totals = defaultdict(list), []
    for it in range(args.warmup + args.iters):
        timer.seconds.clear()
        start = time.perf_counter()
        batch = [mapper(dicts[(it * args.batch + j) % len(dicts)]) for j in range(args.batch)]
        t_data = time.perf_counter()
        losses = model(batch)
        loss = sum(losses.values())
        t_forward = time.perf_counter()
        loss.backward()
        t_backward = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        end = time.perf_counter()
        if it < args.warmup:
            continue
        s = timer.seconds
        s["criterion"] -= s["matcher"]  # the matcher runs inside the criterion
        s["data"] = t_data - start
        s["other"] = (t_forward - t_data) - sum(s[k] for k in ("backbone", "pixel decoder", "decoder", "criterion"))
        s["other"] -= s["matcher"]
        s["backward"] = t_backward - t_forward
        s["optimizer"] = end - t_backward
        for stage in STAGES:
            per_stage[stage].append(s[stage])
        totals.append(end - start)

    med = statistics.median(totals)
    print(
        f"{args.config_file}: batch {args.batch}, {args.size}x{args.size} crops of {args.dataset}, "
        f"{args.threads} threads, fp32, loss {float(loss.detach()):.3f} (last iteration)"
    )
    print_stages(per_stage, STAGES, med)
    print(
        f"median {med:.3f} s per iteration (spread {min(totals):.3f}-{max(totals):.3f}, {len(totals)} iterations, "
        f"{args.warmup} warm-up)"
    )


if __name__ == "__main__":
    main()
