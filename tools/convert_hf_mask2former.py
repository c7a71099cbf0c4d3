#!/usr/bin/env python
"""Convert a HuggingFace transformers Mask2Former checkpoint (Swin backbone) to a detectron2 .pkl of the whole model.

Input: model.safetensors / pytorch_model.bin of a Mask2FormerForUniversalSegmentation, e.g.
facebook/mask2former-swin-tiny-coco-panoptic (hub names or transformers >= 5 names).

    python tools/convert_hf_mask2former.py model.safetensors m2f_swin_t_coco_panoptic_hf.pkl

The names written are the official Mask2Former ones, loaded by MODEL.WEIGHTS with the matching config (e.g.
configs/coco/panoptic/m2f_swin_t.yaml for facebook/mask2former-swin-tiny-coco-panoptic).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from universal_seg.checkpoint import converter_main, load_weights_file, save_detectron2_pickle  # noqa: E402
from universal_seg.modeling.hf_mask2former_convert import convert_hf_mask2former_checkpoint  # noqa: E402


def convert_file(src: str, dst: str, trust_pickle: bool = False) -> dict:
    """HF Mask2Former checkpoint at ``src`` -> detectron2 .pkl (our names, no matching heuristics) at ``dst``."""
    state_dict = convert_hf_mask2former_checkpoint(load_weights_file(src, trust_pickle))
    return save_detectron2_pickle(state_dict, dst, "huggingface-mask2former", matching_heuristics=False)


if __name__ == "__main__":
    converter_main(__doc__.splitlines()[0], convert_file, "HuggingFace Mask2Former checkpoint (.safetensors / .bin)")
