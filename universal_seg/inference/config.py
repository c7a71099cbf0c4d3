"""Config keys of inference (the Predictor, tiled inference, the pixel budget of whole-image inference)."""

from detectron2.config import CfgNode as CN


def add_inference_config(cfg) -> None:
    """Adds TEST.TILING.* and TEST.MAX_OUTPUT_PIXELS to ``cfg`` (a detectron2 CfgNode), in place."""
    # tiled inference (universal_seg.inference.tiling): the resized test image is split into overlapping tiles that
    # run through the network in batches; semantic scores are averaged where tiles overlap, panoptic segments and
    # instances cut by a seam are merged. Images that fit in one tile take the whole-image path.
    cfg.TEST.TILING = CN()
    cfg.TEST.TILING.ENABLED = False
    cfg.TEST.TILING.TILE_SIZE = [512, 512]  # (h, w) of a tile, in network-input pixels (after INPUT.*_SIZE_TEST)
    cfg.TEST.TILING.OVERLAP = 128  # pixels shared by neighbouring tiles (0 <= OVERLAP < min(TILE_SIZE))
    cfg.TEST.TILING.BATCH_SIZE = 4  # tiles per forward pass
    cfg.TEST.TILING.MERGE_IOU = 0.5  # a thing cut by a seam: parts of one class with this IoU in the overlap merge
    # whole-image inference holds [Q or K, H, W] float maps at output resolution: an image with more output pixels
    # (height * width) is refused with an error naming TEST.TILING (0 = no limit)
    cfg.TEST.MAX_OUTPUT_PIXELS = 1 << 23
