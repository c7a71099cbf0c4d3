#!/usr/bin/env python
"""Parameters, FLOPs, activations and structure of any universal_seg config's model.

    python tools/analyze_model.py --config-file configs/coco/panoptic/m2f_r50.yaml --tasks parameter flop
    python tools/analyze_model.py --config-file ... --tasks flop activation --size 1024 1024 \
        MODEL.SEM_SEG_HEAD.NUM_CLASSES 150

FLOPs and activations are counted by fvcore on the backbone + sem_seg_head (the network proper, in eval mode)
for one normalised image [1, 3, H, W] (default 512 x 512); post-processing is not counted. fvcore counts one
fused multiply-add as one flop. MSDeformAttn (a custom op) and scaled_dot_product_attention are counted by
handles below; every other op fvcore
has no handle for is listed with its number of calls (not counted). Trailing KEY VALUE pairs override the config.
"""

import argparse
import logging
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from fvcore.nn import (  # noqa: E402
    ActivationCountAnalysis,
    FlopCountAnalysis,
    flop_count_table,
    parameter_count,
    parameter_count_table,
)
from fvcore.nn.jit_handles import get_shape  # noqa: E402
from torch import nn  # noqa: E402

import universal_seg.data  # noqa: E402,F401  (dataset metadata)
import universal_seg.modeling  # noqa: E402,F401  (registers the models)
from universal_seg.config import load_config, usage_error  # noqa: E402

logger = logging.getLogger("universal_seg.analyze_model")
MS_DEFORM_ATTN_OP = "prim::PythonOp.MSDeformAttnFunction"
SDPA_OP = "aten::scaled_dot_product_attention"


def ms_deform_attn_flop_jit(inputs, outputs) -> int:
    """FLOPs of ms_deform_attn(value [N, S, M, D], shapes, starts, locations [N, Lq, M, L, P, 2], weights):
    per (query, head, level, point, channel) a bilinear sample (4 multiply-adds) and its weighting (1)."""
    n, _, m, d = get_shape(inputs[0])
    _, lq, _, levels, points, _ = get_shape(inputs[3])
    return 5 * n * lq * m * levels * points * d


def sdpa_flop_jit(inputs, outputs) -> int:
    """FLOPs of scaled_dot_product_attention(q [..., Lq, E], k [..., Lk, E], v [..., Lk, Ev]): the two matrix
    products q k^T and softmax(.) v (softmax and masking not counted, like fvcore's other elementwise ops)."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = 1
    for s in q[:-2]:
        batch *= s
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def ms_deform_attn_activation_jit(inputs, outputs) -> int:
    """Activations of ms_deform_attn: its output elements [N, Lq, M * D]."""
    shape = get_shape(outputs[0])
    count = 1
    for s in shape:
        count *= s
    return count


class NetworkOnly(nn.Module):
    """backbone -> sem_seg_head on a normalised image [B, 3, H, W]; returns the head's tensors as a tuple
    (pred_logits [B, Q, K+1], pred_masks [B, Q, H/4, W/4] for mask classification)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone, self.sem_seg_head = model.backbone, model.sem_seg_head

    def forward(self, x: torch.Tensor):
        outputs = self.sem_seg_head(self.backbone(x))
        if torch.is_tensor(outputs):
            return (outputs,)
        return tuple(v for k, v in sorted(outputs.items()) if torch.is_tensor(v))


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--tasks", nargs="+", choices=["parameter", "flop", "activation", "structure"], default=["parameter", "flop"]
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[512, 512],
        metavar=("H", "W"),
        help="input size for flop / activation counting",
    )
    parser.add_argument("--max-depth", type=int, default=3, help="module depth of the printed tables")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def build(config_file: str, opts: list[str]) -> nn.Module:
    """The config's model on the CPU in eval mode (weights are irrelevant to the counts and are not loaded)."""
    try:
        cfg = load_config(config_file, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts])
    except ValueError as err:
        usage_error(err)
    return build_model(cfg).eval()


def report_unsupported(name: str, analysis) -> Counter:
    """Logs the ops the analysis could not count (op -> number of calls) and returns them."""
    unsupported = Counter(analysis.unsupported_ops())
    if unsupported:
        listed = ", ".join(f"{op} x{n}" for op, n in unsupported.most_common())
        logger.warning(f"{name}: {sum(unsupported.values())} calls of ops without a handle were not counted: {listed}")
    return unsupported


def count(kind: str, model: nn.Module, size: tuple[int, int], max_depth: int):
    """Runs fvcore's FLOP ("flop") or activation ("activation") analysis; returns (total, unsupported Counter)."""
    network = NetworkOnly(model).eval()
    image = torch.randn(1, 3, *size)
    if kind == "flop":
        analysis = FlopCountAnalysis(network, image).set_op_handle(
            MS_DEFORM_ATTN_OP, ms_deform_attn_flop_jit, SDPA_OP, sdpa_flop_jit
        )
    else:
        analysis = ActivationCountAnalysis(network, image).set_op_handle(
            MS_DEFORM_ATTN_OP, ms_deform_attn_activation_jit
        )
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with torch.no_grad():
        total = analysis.total()
    print(
        f"{kind} count per module (input [1, 3, {size[0]}, {size[1]}]):\n"
        + flop_count_table(analysis, max_depth=max_depth, show_param_shapes=False)
    )
    unit = "GFLOPs" if kind == "flop" else "M activations"
    scale = 1e9 if kind == "flop" else 1e6
    print(f"total {kind}s: {total / scale:.3f} {unit}")
    return total, report_unsupported(kind, analysis)


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="universal_seg")
    model = build(args.config_file, args.opts)
    for task in args.tasks:
        if task == "parameter":
            counts = parameter_count(model)
            print(f"parameters per module:\n{parameter_count_table(model, max_depth=args.max_depth)}")
            print(f"total parameters: {counts[''] / 1e6:.3f} M")
        elif task in ("flop", "activation"):
            count(task, model, tuple(args.size), args.max_depth)
        else:
            print(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
