#!/usr/bin/env python
"""Convert MiT / SegFormer encoder weights (NVlabs mit_b*.pth, NVlabs/mmseg full SegFormer .pth, HuggingFace
transformers SegFormer .bin/.safetensors/.pth) to a detectron2 .pkl for MiTBackbone.

    python tools/convert_segformer.py mit_b2.pth mit_b2.pkl
    python tools/convert_segformer.py model.safetensors mit_b0_hf.pkl

Only encoder weights are written (NVlabs names, e.g. block1.0.attn.kv.weight); heads are dropped.
"""
import argparse
import pickle
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from universal_seg.modeling.backbone.mit_convert import convert_mit_checkpoint  # noqa: E402


def load_any(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=False)


def convert_file(src: str, dst: str) -> dict:
    model = {k: torch.as_tensor(v).numpy() for k, v in convert_mit_checkpoint(load_any(src)).items()}
    obj = {"model": model, "__author__": "segformer", "matching_heuristics": True}
    with open(dst, "wb") as f:
        pickle.dump(obj, f)
    return obj


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", help="MiT / SegFormer checkpoint")
    ap.add_argument("output", help="detectron2 weights (.pkl)")
    args = ap.parse_args(argv)
    obj = convert_file(args.input, args.output)
    print(f"wrote {len(obj['model'])} tensors to {args.output}")


if __name__ == "__main__":
    main()
