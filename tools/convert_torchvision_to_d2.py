#!/usr/bin/env python
"""Convert a torchvision ImageNet ResNet checkpoint (state dict .pth) to a detectron2 .pkl.

    python tools/convert_torchvision_to_d2.py resnet50-0676ba61.pth R-50.pkl

The .pkl holds {"model": {d2 name: numpy array}, "__author__": "torchvision", "matching_heuristics": True};
use it as MODEL.WEIGHTS with the ResNet settings of universal_seg.modeling.backbone.set_mask2former_resnet.
"""
import argparse
import pickle
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from universal_seg.modeling.backbone.resnet import convert_torchvision_resnet  # noqa: E402


def convert_file(src: str, dst: str) -> dict:
    """Read the torchvision .pth at ``src`` and write the detectron2 .pkl at ``dst``; returns the pickled dict."""
    sd = torch.load(src, map_location="cpu", weights_only=True)
    if "state_dict" in sd:
        sd = sd["state_dict"]
    model = {k: v.numpy() for k, v in convert_torchvision_resnet(sd).items()}
    obj = {"model": model, "__author__": "torchvision", "matching_heuristics": True}
    with open(dst, "wb") as f:
        pickle.dump(obj, f)
    return obj


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", help="torchvision ResNet state dict (.pth)")
    ap.add_argument("output", help="detectron2 weights (.pkl)")
    args = ap.parse_args(argv)
    obj = convert_file(args.input, args.output)
    print(f"wrote {len(obj['model'])} tensors to {args.output}")


if __name__ == "__main__":
    main()
