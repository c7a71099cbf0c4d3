#!/usr/bin/env python
"""Export the semantic-segmentation path of a model to TorchScript (traced at one fixed input size).

    python tools/export_model.py --config-file configs/coco/panoptic/m2f_r50.yaml --format torchscript \\
        --output model.ts --size 512 512 MODEL.WEIGHTS model_final.pkl

The exported module maps an image [1, 3, H, W] float32 (pixel values 0..255 in INPUT.FORMAT channel order, or
already normalised with --normalized-input) to semantic scores [1, K, H, W] (the model's "sem_seg"). MSDeformAttn
is traced through its pure-PyTorch reference. After saving, the file is loaded back and its output is compared
with the eager model's on the example input (the max difference is printed; --check-tolerance fails the run).

Trailing KEY VALUE pairs override the config.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

import universal_seg.data  # noqa: E402,F401  (dataset metadata)
import universal_seg.modeling  # noqa: E402,F401  (registers the models)
from universal_seg.checkpoint import UniversalSegCheckpointer  # noqa: E402
from universal_seg.config import load_config  # noqa: E402
from universal_seg.export import SemanticSegmentationWrapper, trace_semantic  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--format",
        choices=["torchscript"],
        default="torchscript",
        help="torchscript (ONNX needs the onnx package, which this environment does not pin)",
    )
    parser.add_argument("--output", required=True, help="file to write, e.g. model.ts")
    parser.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    parser.add_argument(
        "--normalized-input",
        action="store_true",
        help="the exported model takes (x - PIXEL_MEAN) / PIXEL_STD instead of raw pixels",
    )
    parser.add_argument(
        "--check-tolerance",
        type=float,
        default=1e-3,
        help="fail when exported and eager scores differ by more than this",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def build_cfg(config_file: str, opts: list[str]):
    """Config from the file and overrides, on the CPU unless MODEL.DEVICE is overridden."""
    try:
        cfg = load_config(config_file, ["MODEL.DEVICE", "cpu", *opts])
    except ValueError as err:
        sys.exit(f"error: {err}")
    cfg.freeze()
    return cfg


def load_model(cfg) -> torch.nn.Module:
    """The built model in eval mode, with cfg.MODEL.WEIGHTS loaded when set."""
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        UniversalSegCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model


def export(cfg, output: str, size: tuple[int, int], normalized_input: bool = False) -> float:
    """Traces, saves and reloads the model; returns the max |exported - eager| over the example's scores."""
    model = load_model(cfg)
    start = time.perf_counter()
    traced, example = trace_semantic(model, size[0], size[1], normalized_input)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    traced.save(output)
    print(f"traced in {time.perf_counter() - start:.1f} s, saved {output} ({os.path.getsize(output) / 2**20:.1f} MiB)")
    loaded = torch.jit.load(output, map_location=example.device)
    with torch.no_grad():
        exported = loaded(example)
        eager = SemanticSegmentationWrapper(model, normalized_input)(example)
    diff = (exported - eager).abs().max().item()
    print(
        f"input [1, 3, {size[0]}, {size[1]}] -> scores {list(exported.shape)}; "
        f"max |exported - eager (compiled op)| = {diff:.2e}"
    )
    return diff


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    cfg = build_cfg(args.config_file, args.opts)
    diff = export(cfg, args.output, tuple(args.size), args.normalized_input)
    if diff > args.check_tolerance:
        print(
            f"exported and eager outputs differ by {diff:.2e} > --check-tolerance {args.check_tolerance}; "
            "the export is not faithful at this size.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
