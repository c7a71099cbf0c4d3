#!/usr/bin/env python
"""Convert an official Swin Transformer ImageNet checkpoint (.pth with a "model" key) to a detectron2 .pkl.

    python tools/convert_swin_to_d2.py swin_tiny_patch4_window7_224.pth swin_tiny_patch4_window7_224.pkl

The classifier head, the final ImageNet norm and stored attention masks are dropped; the rest keeps the
official names, which are SwinTransformerBackbone's (loaded with detectron2's matching heuristics).
"""
import argparse
import pickle
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from universal_seg.modeling.backbone.swin import convert_swin_checkpoint  # noqa: E402


def convert_file(src: str, dst: str) -> dict:
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    model = {k: v.numpy() for k, v in convert_swin_checkpoint(ckpt).items()}
    obj = {"model": model, "__author__": "swin", "matching_heuristics": True}
    with open(dst, "wb") as f:
        pickle.dump(obj, f)
    return obj


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", help="official Swin checkpoint (.pth)")
    ap.add_argument("output", help="detectron2 weights (.pkl)")
    args = ap.parse_args(argv)
    obj = convert_file(args.input, args.output)
    print(f"wrote {len(obj['model'])} tensors to {args.output}")


if __name__ == "__main__":
    main()
