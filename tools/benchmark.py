#!/usr/bin/env python
"""Inference images/s and training iterations/s of any universal_seg config, fp32 or AMP, eager or compiled.

    python tools/benchmark.py --config-file configs/coco/panoptic/m2f_r50.yaml --task inference --size 512 512
    python tools/benchmark.py --config-file ... --task train --batch 2 --amp --device cuda
    python tools/benchmark.py --config-file ... --task inference --compile MODEL.SEM_SEG_HEAD.NUM_CLASSES 150

Each mode runs --warmup untimed iterations, then --runs timed ones; the median is reported, with the peak memory
(CUDA: torch.cuda.max_memory_allocated; CPU: the process's peak resident set size, ru_maxrss). --amp autocasts to
bf16 on the CPU and fp16 on CUDA (training on CUDA also scales the loss). --compile wraps the backbone and the
sem_seg_head in torch.compile (pre- and post-processing stay eager). Inference runs the whole model (all tasks the
config enables) on a random image of --size; training uses the config's mapper on its first training dataset
when that dataset is on disk, else synthetic images of --size with two random instances each. Weights are not
loaded (speed does not depend on them). Trailing KEY VALUE pairs override the config.
"""

import argparse
import itertools
import logging
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import torch  # noqa: E402
from detectron2.data import DatasetCatalog, build_detection_train_loader  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Instances  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import universal_seg.data  # noqa: E402,F401  (registers the datasets)
import universal_seg.modeling  # noqa: E402,F401  (registers the models)
from universal_seg.config import load_config, usage_error  # noqa: E402
from universal_seg.data.mappers import MAPPER_REGISTRY  # noqa: E402
from universal_seg.engine.optimizer import build_optimizer  # noqa: E402

logger = logging.getLogger("universal_seg.benchmark")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--task", choices=["inference", "train"], default="inference")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (overrides MODEL.DEVICE)")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[512, 512],
        metavar=("H", "W"),
        help="image size (inference; synthetic training data)",
    )
    parser.add_argument("--batch", type=int, default=1, help="images per iteration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--amp", action="store_true", help="autocast: bf16 on CPU, fp16 on CUDA")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone and sem_seg_head")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--synthetic", action="store_true", help="train on synthetic data even if the dataset exists")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def build_cfg(args):
    try:
        cfg = load_config(
            args.config_file,
            ["MODEL.WEIGHTS", "", "MODEL.DEVICE", args.device, *args.opts],
            cpu_hint="use --device cpu",
        )
    except ValueError as err:
        usage_error(err)
    cfg.freeze()
    return cfg


def autocast(device: str, enabled: bool):
    """torch.autocast for ``device``: bf16 on CPU, fp16 on CUDA (a no-op when not enabled)."""
    kind = device.split(":")[0]
    return torch.autocast(kind, dtype=torch.bfloat16 if kind == "cpu" else torch.float16, enabled=enabled)


def maybe_compile(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """Compiles the backbone and sem_seg_head in place (the meta-architecture's Python stays eager)."""
    if enabled:
        model.backbone = torch.compile(model.backbone)
        model.sem_seg_head = torch.compile(model.sem_seg_head)
    return model


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(step, device: str, warmup: int, runs: int) -> list[float]:
    """Seconds of each of ``runs`` calls of ``step()`` after ``warmup`` untimed ones."""
    times = []
    for i in range(warmup + runs):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def peak_memory_mib(device: str) -> float:
    """Peak memory in MiB: CUDA allocator peak on CUDA, else the process's peak RSS (ru_maxrss, KiB on Linux)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_batch(batch: int, height: int, width: int, num_classes: int, generator: torch.Generator) -> list[dict]:
    """``batch`` random images uint8 [3, H, W], each with two random rectangular instances of random classes."""
    out = []
    for _ in range(batch):
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        masks = torch.zeros((2, height, width), dtype=torch.bool)
        for m in masks:
            y0, x0 = (int(torch.randint(0, s // 2, (1,), generator=generator)) for s in (height, width))
            m[y0 : y0 + height // 3, x0 : x0 + width // 3] = True
        inst = Instances((height, width))
        inst.gt_classes = torch.randint(0, num_classes, (2,), generator=generator)
        inst.gt_masks = masks
        out.append({"image": image, "instances": inst, "height": height, "width": width})
    return out


def training_batches(cfg, args):
    """An endless iterator of training batches: the config's mapper on its dataset, else synthetic data."""
    name = cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None
    if name and not args.synthetic:
        try:
            DatasetCatalog.get(name)
        except (FileNotFoundError, KeyError) as err:
            logger.warning(
                f"training dataset {name!r} unavailable ({str(err).splitlines()[0]}); "
                f"using synthetic {args.size[0]}x{args.size[1]} images."
            )
        else:
            mapper = MAPPER_REGISTRY.get(cfg.INPUT.DATASET_MAPPER_NAME)(cfg, True)
            cfg = cfg.clone()
            cfg.defrost()
            cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS = args.batch, 0
            logger.info(f"training on {name} with mapper {cfg.INPUT.DATASET_MAPPER_NAME}")
            return iter(build_detection_train_loader(cfg, mapper=mapper))
    generator = torch.Generator().manual_seed(0)
    batches = [synthetic_batch(args.batch, *args.size, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, generator) for _ in range(2)]
    return itertools.cycle(batches)


def bench_inference(cfg, args) -> list[float]:
    model = maybe_compile(build_model(cfg).eval(), args.compile)
    h, w = args.size
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    inputs = [{"image": image, "height": h, "width": w} for _ in range(args.batch)]

    def step():
        with torch.no_grad(), autocast(args.device, args.amp):
            model(inputs)

    return timed(step, args.device, args.warmup, args.runs)


def bench_train(cfg, args) -> list[float]:
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    model = maybe_compile(model, args.compile)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and args.device.startswith("cuda"))
    batches = training_batches(cfg, args)

    def step():
        data = next(batches)
        with autocast(args.device, args.amp):
            losses = model(data)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return timed(step, args.device, args.warmup, args.runs)


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="universal_seg")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = build_cfg(args)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = (bench_inference if args.task == "inference" else bench_train)(cfg, args)
    median = statistics.median(times)
    unit = "images/s" if args.task == "inference" else "iterations/s"
    rate = (args.batch if args.task == "inference" else 1) / median
    precision = ("bf16" if args.device == "cpu" else "fp16") + " AMP" if args.amp else "fp32"
    print(
        f"{args.config_file} {args.task} {args.size[0]}x{args.size[1]} batch {args.batch} on {args.device} "
        f"({torch.get_num_threads()} threads, {precision}{', compiled' if args.compile else ''}): "
        f"median {median:.3f} s, {rate:.3f} {unit}; peak memory {peak_memory_mib(args.device):.0f} MiB "
        f"(runs: {', '.join(f'{t:.3f}' for t in times)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
