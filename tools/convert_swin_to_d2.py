#!/usr/bin/env python
"""Convert an official Swin Transformer ImageNet checkpoint (.pth with a "model" key) to a detectron2 .pkl.

    python tools/convert_swin_to_d2.py swin_tiny_patch4_window7_224.pth swin_tiny_patch4_window7_224.pkl

The classifier head, the final ImageNet norm and stored attention masks are dropped; the rest keeps the
official names, which are SwinTransformerBackbone's (loaded with detectron2's matching heuristics).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from universal_seg.checkpoint import converter_main, load_weights_file, save_detectron2_pickle  # noqa: E402
from universal_seg.modeling.backbone.swin import convert_swin_checkpoint  # noqa: E402


def convert_file(src: str, dst: str, trust_pickle: bool = False) -> dict:
    """Official Swin .pth at ``src`` -> detectron2 .pkl at ``dst``; returns the pickled dict."""
    return save_detectron2_pickle(convert_swin_checkpoint(load_weights_file(src, trust_pickle)), dst, "swin")


if __name__ == "__main__":
    converter_main(__doc__.splitlines()[0], convert_file, "official Swin checkpoint (.pth)")
