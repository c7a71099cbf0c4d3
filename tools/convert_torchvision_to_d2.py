#!/usr/bin/env python
"""Convert a torchvision ImageNet ResNet checkpoint (state dict .pth) to a detectron2 .pkl.

    python tools/convert_torchvision_to_d2.py resnet50-0676ba61.pth R-50.pkl

The .pkl holds {"model": {d2 name: numpy array}, "__author__": "torchvision", "matching_heuristics": True};
use it as MODEL.WEIGHTS with the ResNet settings of the base configs (configs/*/Base-*.yaml, "ResNetBackbone").
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from universal_seg.checkpoint import converter_main, load_weights_file, save_detectron2_pickle  # noqa: E402
from universal_seg.modeling.backbone.resnet import convert_torchvision_resnet  # noqa: E402


def convert_file(src: str, dst: str, trust_pickle: bool = False) -> dict:
    """Read the torchvision .pth at ``src`` and write the detectron2 .pkl at ``dst``; returns the pickled dict."""
    sd = load_weights_file(src, trust_pickle)
    sd = sd.get("state_dict", sd)
    return save_detectron2_pickle(convert_torchvision_resnet(sd), dst, "torchvision")


if __name__ == "__main__":
    converter_main(__doc__.splitlines()[0], convert_file, "torchvision ResNet state dict (.pth)")
