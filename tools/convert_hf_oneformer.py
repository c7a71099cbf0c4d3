#!/usr/bin/env python
"""Convert a HuggingFace transformers OneFormer checkpoint (Swin backbone) to a detectron2 .pkl of the whole model.

Input: model.safetensors / pytorch_model.bin of a OneFormerForUniversalSegmentation, e.g.
shi-labs/oneformer_coco_swin_large (hub names or transformers >= 5 names; DiNAT backbones are refused).

    python tools/convert_hf_oneformer.py model.safetensors oneformer_swin_l_coco_hf.pkl

The names written are the official OneFormer ones, loaded by MODEL.WEIGHTS with the matching config (e.g.
configs/coco/panoptic/oneformer_swin_l.yaml for shi-labs/oneformer_coco_swin_large; MODEL.TEXT_ENCODER.ENABLED False
when the file has no text branch, model.text_mapper.*).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from universal_seg.checkpoint import converter_main, load_weights_file, save_detectron2_pickle  # noqa: E402
from universal_seg.modeling.hf_oneformer_convert import convert_hf_oneformer_checkpoint  # noqa: E402


def convert_file(src: str, dst: str, trust_pickle: bool = False) -> dict:
    """HF OneFormer checkpoint at ``src`` -> detectron2 .pkl (our names, no matching heuristics) at ``dst``."""
    state_dict = convert_hf_oneformer_checkpoint(load_weights_file(src, trust_pickle))
    return save_detectron2_pickle(state_dict, dst, "huggingface-oneformer", matching_heuristics=False)


if __name__ == "__main__":
    converter_main(__doc__.splitlines()[0], convert_file, "HuggingFace OneFormer checkpoint (.safetensors / .bin)")
