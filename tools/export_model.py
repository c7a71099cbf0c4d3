#!/usr/bin/env python
"""Export a model to TorchScript (semantic scores, traced at one fixed input size) or ONNX (dynamic batch and size).

    python tools/export_model.py --config-file configs/coco/panoptic/m2f_r50.yaml --format torchscript \\
        --output model.ts --size 512 512 MODEL.WEIGHTS model_final.pkl
    python tools/export_model.py --config-file configs/mini/panoptic/m2f_r18.yaml --format onnx \\
        --output model.onnx --size 256 320 MODEL.WEIGHTS output/mini_panoptic_m2f_r18/model_final.pth

TorchScript: the module maps an image [1, 3, H, W] float32 (pixel values 0..255 in INPUT.FORMAT channel order, or
already normalised with --normalized-input) to semantic scores [1, K, H, W] (the model's "sem_seg"). MSDeformAttn
is traced through its pure-PyTorch reference. After saving, the file is loaded back and its output is compared
with the eager model's on the example input (the max difference is printed; --check-tolerance fails the run).

ONNX: input "image" [batch, 3, height, width] float32 (any batch and size), outputs as documented by
universal_seg.export.OnnxExportWrapper (mask classification: pred_logits, pred_masks, mask_logits, sem_seg,
sem_seg_map; per-pixel heads: sem_seg_logits, sem_seg, sem_seg_map); instance / panoptic results from them with
universal_seg.export_postprocess (numpy). MSDeformAttn is exported through its gather formulation. --size is the
example the exporter runs; after saving, ONNX Runtime (CPU) runs the file on a [1, 3, H, W] input of that size and
on a [2, 3, H + 2d, W + d] one (d: the size divisibility, at least 32), and every output is compared with the
eager model's (max differences printed; --check-tolerance, or a semantic map that differs from eager's argmax other
than at near-ties of its scores, fails the run). In both formats an output with NaN or infinite values (exported or
eager) fails the run.

Refused before the model is built (exit status 2): sliding-window configs, and OneFormer without a single task (a graph
holds one task token: --task, or MODEL.TEST.TASK semantic / instance / panoptic).

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
from universal_seg.atomic import atomic_path, check_output_file  # noqa: E402
from universal_seg.checkpoint import CHECKPOINT_ERRORS, UniversalSegCheckpointer  # noqa: E402
from universal_seg.config import load_config  # noqa: E402
from universal_seg.export import OnnxExportWrapper, SemanticSegmentationWrapper, export_onnx, trace_semantic  # noqa: E402
from universal_seg.modeling.oneformer import TEXT_OF_TASK  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--format",
        choices=["torchscript", "onnx"],
        default="torchscript",
        help="torchscript (traced at --size) or onnx (dynamic batch and size; --size is the example)",
    )
    parser.add_argument("--output", required=True, help="file to write, e.g. model.ts or model.onnx")
    parser.add_argument(
        "--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"), help="example input size (default 512 512)"
    )
    parser.add_argument(
        "--normalized-input",
        action="store_true",
        help="the exported model takes (x - PIXEL_MEAN) / PIXEL_STD instead of raw pixels",
    )
    parser.add_argument(
        "--check-tolerance",
        type=float,
        default=1e-3,
        help="fail when exported and eager outputs differ by more than this",
    )
    parser.add_argument(
        "--task",
        choices=sorted(TEXT_OF_TASK),
        help="OneFormer: the task whose token the exported graph holds (sets MODEL.TEST.TASK; a graph is one task's)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def build_cfg(config_file: str, opts: list[str]):
    """Config from the file and overrides, on the CPU unless MODEL.DEVICE is overridden; ValueError (one sentence)
    for a missing file or a wrong key."""
    cfg = load_config(config_file, ["MODEL.DEVICE", "cpu", *opts])
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
    print(f"traced in {time.perf_counter() - start:.1f} s ({os.path.getsize(output) / 2**20:.1f} MiB)")
    loaded = torch.jit.load(output, map_location=example.device)
    with torch.no_grad():
        exported = loaded(example)
        eager = SemanticSegmentationWrapper(model, normalized_input)(example)
    diff = max_abs_diff(exported.cpu().numpy(), eager.cpu().numpy())
    print(
        f"input [1, 3, {size[0]}, {size[1]}] -> scores {list(exported.shape)}; "
        f"max |exported - eager (compiled op)| = {diff:.2e}"
    )
    return diff


def max_abs_diff(got, expected) -> float:
    """max |got - expected| over two arrays of one shape (float64), inf where either holds a NaN or an infinity:
    an output that is not finite fails every --check-tolerance (a NaN difference compared as False and passed)."""
    import numpy as np

    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    if not (np.isfinite(got).all() and np.isfinite(expected).all()):
        return float("inf")
    return float(np.abs(got - expected).max()) if got.size else 0.0


def onnx_check_sizes(size: tuple[int, int], divisibility: int = 32) -> list[tuple[int, int, int]]:
    """(batch, height, width) of the inputs the ONNX check runs: the example size, then batch 2 at a size that pads
    (to ``divisibility``, at least 32) to other feature-map sizes in both dimensions, so that a graph the exporter
    specialised to the example's sizes fails the check instead of being saved."""
    d = max(int(divisibility), 32)
    return [(1, size[0], size[1]), (2, size[0] + 2 * d, size[1] + d)]


def check_exportable(cfg) -> None:
    """ValueError, before the model is built, for a config whose inference the exported graph cannot hold."""
    if cfg.MODEL.ONE_FORMER.TASK_CONDITIONED and cfg.MODEL.TEST.TASK not in TEXT_OF_TASK:
        raise ValueError(
            f"a OneFormer config (MODEL.ONE_FORMER.TASK_CONDITIONED) with MODEL.TEST.TASK {cfg.MODEL.TEST.TASK!r}: an "
            "exported graph holds one task token; pass --task semantic, instance or panoptic (one file per task)."
        )
    if cfg.MODEL.PER_PIXEL.SLIDE_WINDOW.ENABLED:
        raise ValueError(
            "the config runs sliding-window inference (MODEL.PER_PIXEL.SLIDE_WINDOW.ENABLED), which the exported "
            "graph does not: add MODEL.PER_PIXEL.SLIDE_WINDOW.ENABLED False to export the whole-image model (and run "
            "windows around it)."
        )


def export_onnx_file(cfg, output: str, size: tuple[int, int], normalized_input: bool = False) -> dict:
    """Exports the model to ``output`` (ONNX), runs it with ONNX Runtime on the CPU at :func:`onnx_check_sizes` and
    compares every output with the eager model's (compiled MSDeformAttn). Returns {output name: max |diff|}
    (maxima over the check sizes), "sem_seg_map_mismatches" (pixels whose class is wrong) and "sem_seg_map_ties"
    (pixels whose class differs at a near-tie: :func:`map_mismatches`)."""
    import onnxruntime as ort

    model = load_model(cfg)
    start = time.perf_counter()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    export_onnx(model, output, size, normalized_input)
    print(f"exported in {time.perf_counter() - start:.1f} s ({os.path.getsize(output) / 2**20:.1f} MiB)")
    session = ort.InferenceSession(output, providers=["CPUExecutionProvider"])
    eager = OnnxExportWrapper(model, normalized_input).eval()
    diffs = {name: 0.0 for name in eager.output_names if name != "sem_seg_map"}  # the map: counted below
    diffs["sem_seg_map_mismatches"] = diffs["sem_seg_map_ties"] = 0
    generator = torch.Generator().manual_seed(0)
    for batch, height, width in onnx_check_sizes(size, getattr(model, "size_divisibility", 0) or 0):
        image = torch.rand((batch, 3, height, width), generator=generator) * 255.0
        if normalized_input:
            image = (image - eager.semantic.pixel_mean) / eager.semantic.pixel_std
        with torch.no_grad():
            expected = eager(image)
        try:
            got = session.run(None, {"image": image.numpy()})
        except Exception as err:  # noqa: BLE001 - ONNX Runtime's errors: the graph holds the example's sizes
            raise ExportRejected(
                f"the exported graph fails on a [{batch}, 3, {height}, {width}] input ({str(err).splitlines()[0]}); "
                "it was specialised to the example's size: export at a larger --size (e.g. the default 512 512)"
            ) from err
        got_scores, eager_scores = (dict(zip(eager.output_names, o))["sem_seg"] for o in (got, expected))
        for name, a, b in zip(eager.output_names, got, expected):
            if name == "sem_seg_map":
                bad, ties = map_mismatches(a, got_scores, b.numpy(), eager_scores.numpy())
                diffs["sem_seg_map_mismatches"] += bad
                diffs["sem_seg_map_ties"] += ties
            else:
                diffs[name] = max(diffs[name], max_abs_diff(a, b.numpy()))
        shapes = ", ".join(f"{n} {list(a.shape)}" for n, a in zip(eager.output_names, got))
        print(f"input [{batch}, 3, {height}, {width}] -> {shapes}")
    print(
        "max |onnxruntime - eager|: "
        + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items() if not k.startswith("sem_seg_map"))
    )
    print(
        f"semantic map pixels that differ: {diffs['sem_seg_map_mismatches']} (and {diffs['sem_seg_map_ties']} at "
        "near-ties of eager's scores, where the class picked scores within the numeric difference of the best)"
    )
    return diffs


def map_mismatches(got_map, got_scores, eager_map, eager_scores) -> tuple[int, int]:
    """(pixels where the exported semantic map is wrong, pixels where it differs at a near-tie). ``*_map``
    [B, H, W], ``*_scores`` [B, K, H, W]. At a pixel, the exported scores may differ from eager's by up to
    d = max_k |got - eager|, so its argmax can flip wherever eager's best two classes are within 2 d; a differing
    class there is a near-tie when eager scores it within 2 d of its best, and wrong otherwise (always wrong where
    the best two are further apart)."""
    import numpy as np

    margin = 2 * np.abs(got_scores.astype(np.float64) - eager_scores).max(1)  # [B, H, W]
    best = eager_scores.max(1)
    picked = np.take_along_axis(eager_scores, got_map[:, None].astype(np.int64), 1)[:, 0]
    differs = got_map != eager_map
    wrong = differs & (picked < best - margin)
    return int(wrong.sum()), int((differs & ~wrong).sum())


class ExportRejected(Exception):
    """The exported file does not reproduce the eager model; it is not kept."""


def check_arguments(args) -> None:
    """ValueError (one sentence naming the fix; OutputPathError for --output) for a --size or --output the export
    cannot use, raised before the model is built: --output's folder is created if missing and must be writable."""
    if min(args.size) < 1:
        raise ValueError(f"--size must be two positive integers H W (got {args.size[0]} {args.size[1]}).")
    check_output_file(args.output, "--output", "model.onnx" if args.format == "onnx" else "model.ts")


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        check_arguments(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:  # exit status 2 for every bad argument, as for the checkpoint errors below
        cfg = build_cfg(args.config_file, args.opts + (["MODEL.TEST.TASK", args.task] if args.task else []))
        if args.task and not cfg.MODEL.ONE_FORMER.TASK_CONDITIONED:
            raise ValueError(
                "--task is for OneFormer configs (MODEL.ONE_FORMER.TASK_CONDITIONED); this model has no task token."
            )
        check_exportable(cfg)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        # written under a temporary name and renamed once checked: an interrupted or unfaithful export leaves no file
        with atomic_path(args.output) as tmp:
            if args.format == "onnx":
                diffs = export_onnx_file(cfg, tmp, tuple(args.size), args.normalized_input)
                mismatches = diffs.pop("sem_seg_map_mismatches")
                diffs.pop("sem_seg_map_ties")
                diff = max(diffs.values())
                if mismatches:
                    raise ExportRejected(f"the exported semantic map differs from eager's at {mismatches} pixels")
            else:
                diff = export(cfg, tmp, tuple(args.size), args.normalized_input)
            if diff == float("inf"):
                raise ExportRejected(
                    "an output of the exported or the eager model holds NaN or infinite values (check the weights, "
                    "MODEL.WEIGHTS)"
                )
            if diff > args.check_tolerance:
                raise ExportRejected(
                    f"exported and eager outputs differ by {diff:.2e} > --check-tolerance {args.check_tolerance}; "
                    "the export is not faithful at this size"
                )
    except ExportRejected as err:
        print(f"{err}: {args.output} was not written.", file=sys.stderr)
        return 1
    except CHECKPOINT_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"saved {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
