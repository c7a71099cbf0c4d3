"""MODEL.STRUCTTOKEN.*: the keys of StructToken's semantic head and universal decoder, with their defaults."""

from detectron2.config import CfgNode as CN


def add_structtoken_config(cfg) -> None:
    """Adds MODEL.STRUCTTOKEN. Shared keys reused: MODEL.SEM_SEG_HEAD.{NUM_CLASSES, IN_FEATURES, CONVS_DIM (the
    semantic head's feature channels C), MASK_DIM}; universal mode: MODEL.MASK_FORMER.{NUM_OBJECT_QUERIES (tokens),
    HIDDEN_DIM (C), DEC_LAYERS (= NUM_BLOCKS + 1 predictions)} and Mask2Former's matcher / criterion keys."""
    cfg.MODEL.STRUCTTOKEN = CN()
    st = cfg.MODEL.STRUCTTOKEN
    st.INTERACTION = "PWE"  # CSE (cross-slice), SSE (self-slice) or PWE (point-wise)
    st.NUM_BLOCKS = 4
    st.DROP_PATH_RATE = 0.1  # drop-path rates rise linearly from 0 (first block) to this (last block)
    st.TOKEN_SIZE = [32, 32]  # (h, w) of the learnable token maps: crop / 16 (resized bicubically at run time)
    # semantic head (StructTokenHead) input: "backbone" = MODEL.SEM_SEG_HEAD.IN_FEATURES[0] (e.g. a ViT "layer11",
    # stride 16, as in the paper); "pixel_decoder" = mask_features (stride 4) of the pixel decoder named by
    # MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME, which the head then builds and owns (multi-scale backbones)
    st.FEATURE_SOURCE = "backbone"
