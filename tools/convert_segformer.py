#!/usr/bin/env python
"""Convert MiT / SegFormer encoder weights (NVlabs mit_b*.pth, NVlabs/mmseg full SegFormer .pth, HuggingFace
transformers SegFormer .bin/.safetensors/.pth) to a detectron2 .pkl for MiTBackbone.

    python tools/convert_segformer.py mit_b2.pth mit_b2.pkl
    python tools/convert_segformer.py model.safetensors mit_b0_hf.pkl

Only encoder weights are written (NVlabs names, e.g. block1.0.attn.kv.weight); heads are dropped.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from universal_seg.checkpoint import converter_main, load_weights_file, save_detectron2_pickle  # noqa: E402
from universal_seg.modeling.backbone.mit_convert import convert_mit_checkpoint  # noqa: E402


def convert_file(src: str, dst: str, trust_pickle: bool = False) -> dict:
    """MiT / SegFormer checkpoint at ``src`` -> detectron2 .pkl (encoder weights) at ``dst``."""
    return save_detectron2_pickle(convert_mit_checkpoint(load_weights_file(src, trust_pickle)), dst, "segformer")


if __name__ == "__main__":
    converter_main(__doc__.splitlines()[0], convert_file, "MiT / SegFormer checkpoint")
