#!/usr/bin/env python
"""One joint OneFormer against three task-specific Mask2Former models, all trained on the bundled mini dataset
(datasets/mini: 3 PASCAL VOC photos) on the CPU for the same length as tests/test_end_to_end.py (120 iterations
at 192-pixel crops, SEED 3, torch seed 0), then evaluated on the same 3 images (training-image metrics, not
held-out):

    python benchmarks/oneformer_mini_vs_task_specific.py [--threads 2] [--iters 120] [--only NAME ...]

Rows: OneFormer (configs/mini/panoptic/oneformer_r18.yaml) trained with per-image task sampling and evaluated
with MODEL.TEST.TASK "per_output" (PQ from the panoptic token, AP from the instance token, mIoU from the semantic
token); Mask2Former (configs/mini/panoptic/m2f_r18.yaml) trained on panoptic targets (every segment: the mini
recipe), on instance targets (things only) and on semantic targets (one mask per class, things merged). The
task-specific targets are the ones OneFormer samples (``task_instances_from_panoptic``), fixed for the whole run by
INPUT.TASK_SAMPLING True with INPUT.TASK_PROB at 0/1 (a model without the task token ignores the task itself). The
ablation row "OneFormer panoptic only" trains OneFormer on panoptic targets with the panoptic task token on every
image (as Mask2Former panoptic) and takes all three metrics from that token: it separates the cost of sharing one
model between three tasks from that of OneFormer's other parts (task-token queries, contrastive loss). Each
Mask2Former is evaluated on all three outputs; its own task's metric is the one it is trained for. ``--per-token``
adds, for OneFormer, all three metrics from each single task token (MODEL.TEST.TASK panoptic / instance /
semantic). Prints one table (train seconds: wall time of the training loop alone).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import universal_seg.data  # noqa: E402,F401  (registers the datasets)
import universal_seg.modeling  # noqa: E402,F401
from universal_seg.engine import Trainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
# the end-to-end tests' configs, recipe and metrics, so that this comparison cannot drift from them
from test_end_to_end import M2F, ONEFORMER, metrics, mini_cfg, train_and_evaluate  # noqa: E402


def fixed_task(task: str) -> list[str]:
    """Overrides that give every training image ``task``'s targets (TaskSampler: semantic when u < SEMANTIC,
    instance when u < INSTANCE, else panoptic; u in [0, 1))."""
    semantic, instance = {"semantic": (1.0, 1.0), "instance": (0.0, 1.0), "panoptic": (0.0, 0.0)}[task]
    return ["INPUT.TASK_SAMPLING", "True", "INPUT.TASK_PROB.SEMANTIC", str(semantic), "INPUT.TASK_PROB.INSTANCE",
            str(instance)]  # fmt: skip


# name -> (config, overrides, the metric of the task it is trained for; None: all three)
RUNS = {
    "OneFormer joint (per-task token)": (ONEFORMER, [], None),
    "OneFormer panoptic only (panoptic token)": (
        ONEFORMER,
        [*fixed_task("panoptic"), "MODEL.TEST.TASK", "panoptic"],
        "PQ",
    ),
    "Mask2Former panoptic": (M2F, [], "PQ"),
    "Mask2Former instance": (M2F, fixed_task("instance"), "AP"),
    "Mask2Former semantic": (M2F, fixed_task("semantic"), "mIoU"),
}


def evaluate(cfg, model, test_task: str | None = None) -> dict:
    """PQ, AP and mIoU on DATASETS.TEST; ``test_task`` sets a task-conditioned model's MODEL.TEST.TASK for this
    evaluation."""
    if test_task is None:
        return metrics(Trainer.test(cfg, model))
    saved, model.test_task = model.test_task, test_task
    try:
        return metrics(Trainer.test(cfg, model))
    finally:
        model.test_task = saved


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=120)
    parser.add_argument("--only", nargs="+", choices=sorted(RUNS), help="run only these rows")
    parser.add_argument("--per-token", action="store_true", help="OneFormer: all metrics from each task token")
    parser.add_argument("--output-dir", default="./output/oneformer_mini_vs_task_specific")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, (config, opts, own) in RUNS.items():
        if args.only and name not in args.only:
            continue
        tokens = ("panoptic", "instance", "semantic") if args.per_token and config == ONEFORMER else ()
        out = os.path.join(args.output_dir, name.split(" (")[0].replace(" ", "_").lower())
        print(f"{name}:", flush=True)
        r = train_and_evaluate(mini_cfg(out, config, args.iters, opts))
        rows.append((name, own, r["after"], r["seconds"], r["before"]))
        for token in tokens:
            m = evaluate(mini_cfg(out, config, args.iters, opts), r["trainer"].model, token)
            rows.append((f"  OneFormer, {token} token only", None, m, None, None))
    print(f"\n{args.iters} iterations, 192-pixel crops, {args.threads} threads; metrics on the 3 training images")
    print("| method | trained for | PQ | AP | mIoU | train s |")
    print("|---|---|---|---|---|---|")
    for name, own, m, seconds, _ in rows:
        cells = [f"**{m[k]:.1f}**" if own == k else f"{m[k]:.1f}" for k in ("PQ", "AP", "mIoU")]
        trained_for = {None: "all three", "PQ": "panoptic", "AP": "instance", "mIoU": "semantic"}[own]
        if seconds is None:
            trained_for = ""
        print(f"| {name} | {trained_for} | {' | '.join(cells)} | {'' if seconds is None else f'{seconds:.0f}'} |")


if __name__ == "__main__":
    main()
