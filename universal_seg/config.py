"""Every config key universal_seg adds to detectron2's defaults, with its default and meaning.

Key names follow the official Mask2Former code where one exists, so its users' configs and habits carry over.
Part-specific keys live next to their part (backbones: modeling/backbone/config.py; data and evaluation:
data/config.py) and are added here.
"""

import sys
from typing import NoReturn

from detectron2.config import CfgNode as CN


def add_maskformer_config(cfg) -> None:
    """Meta-architecture, pixel decoder, transformer decoder, criterion, inference and solver keys."""
    cfg.MODEL.META_ARCHITECTURE = "UniversalSegmentor"  # or "PerPixelSegmentor"; detectron2's default is an R-CNN
    cfg.MODEL.MASK_FORMER = CN()
    mf = cfg.MODEL.MASK_FORMER
    # loss weights (Mask2Former: class 2.0, mask BCE 5.0, dice 5.0; no-object class weight 0.1)
    mf.DEEP_SUPERVISION = True
    mf.NO_OBJECT_WEIGHT = 0.1
    # per-class weights of the classification CE, one per class (K values; empty: all 1), next to the no-object
    # weight: criterion weights [w_0, ..., w_{K-1}, NO_OBJECT_WEIGHT] (class imbalance)
    mf.PER_CLASS_CE_WEIGHTS = []
    mf.CLASS_WEIGHT = 2.0
    mf.DICE_WEIGHT = 5.0
    mf.MASK_WEIGHT = 5.0
    # weight of the BCE of unmatched queries' masks towards empty (criterion.py, loss_mask_unmatched; not in
    # Mask2Former: 0 = off). StructToken-universal sets it: its unmatched tokens otherwise keep broad masks
    mf.UNMATCHED_MASK_WEIGHT = 0.0
    # transformer decoder
    mf.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    mf.NHEADS = 8
    mf.DIM_FEEDFORWARD = 2048
    mf.DEC_LAYERS = 10  # counts the prediction from the learnable queries: 9 transformer layers
    mf.PRE_NORM = False
    mf.HIDDEN_DIM = 256
    mf.NUM_OBJECT_QUERIES = 100
    mf.ENFORCE_INPUT_PROJ = False
    mf.SIZE_DIVISIBILITY = 32  # pad images to a multiple of this (0: the backbone's size_divisibility)
    # the official code reads the encoder's dropout from MODEL.MASK_FORMER; here the pixel decoder owns it
    cfg.register_renamed_key("MODEL.MASK_FORMER.DROPOUT", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_DROPOUT")
    # point-sampled losses and matching
    mf.TRAIN_NUM_POINTS = 112 * 112
    mf.OVERSAMPLE_RATIO = 3.0
    mf.IMPORTANCE_SAMPLE_RATIO = 0.75
    # inference
    mf.TEST = CN()
    mf.TEST.SEMANTIC_ON = True
    mf.TEST.INSTANCE_ON = False
    mf.TEST.PANOPTIC_ON = False
    mf.TEST.OBJECT_MASK_THRESHOLD = 0.8
    mf.TEST.OVERLAP_THRESHOLD = 0.8
    # semantic inference sums p(class) * sigmoid(mask) over the queries with p(object) above this (the most
    # confident query always counts); 0 = every query, as in Mask2Former (postprocess.confident_semantic_inference)
    mf.TEST.SEMANTIC_OBJECT_THRESHOLD = 0.0
    mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False
    mf.TEST.DETECTIONS_PER_IMAGE = 100  # instance top-k over queries x classes

    head = cfg.MODEL.SEM_SEG_HEAD  # detectron2 already defines NAME, IN_FEATURES, NUM_CLASSES, CONVS_DIM, NORM, ...
    head.MASK_DIM = 256
    head.TRANSFORMER_ENC_LAYERS = 6
    head.TRANSFORMER_ENC_DROPOUT = 0.0  # dropout of the deformable encoder (official: MODEL.MASK_FORMER.DROPOUT)
    head.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"
    head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
    head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = 1024

    # optimizer (SOLVER.CLIP_GRADIENTS.CLIP_TYPE additionally accepts "full_model")
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.POLY_LR_POWER = 0.9
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0


def add_per_pixel_config(cfg) -> None:
    """Keys of the per-pixel heads (SegFormer, SETR): MODEL.META_ARCHITECTURE "PerPixelSegmentor" runs the registered
    per-pixel head MODEL.SEM_SEG_HEAD.NAME names (modeling/heads). They reuse detectron2's
    MODEL.SEM_SEG_HEAD.{IN_FEATURES,
    NUM_CLASSES, IGNORE_VALUE, LOSS_WEIGHT (main CE weight), NORM (norm of the head's convs), CONVS_DIM (SegFormer's
    embedding dim E; SETR's decoder channels)}."""
    head = cfg.MODEL.SEM_SEG_HEAD
    head.DROPOUT = 0.1  # per-pixel heads: dropout (2d) before the classifier (SegFormer 0.1, SETR 0.0)
    # per-pixel loss: per-class CE weights (K values; empty: all 1) and the focal variant's gamma (0: plain CE);
    # loss = sum_i w[y_i] (1 - p_i)^gamma (-log p_i) / sum_i w[y_i] over non-ignored pixels (heads/inference.py)
    head.PER_CLASS_CE_WEIGHTS = []
    head.FOCAL_GAMMA = 0.0
    head.AUX_IN_FEATURES = []  # SETR Naive / PUP: backbone features with one auxiliary head each (layers 10/15/20)
    head.AUX_LOSS_WEIGHT = 0.4  # weight of each auxiliary head's CE loss (SETR 0.4)
    head.MLA_CHANNELS = 128  # SETR-MLA: channels of each level's up-sampling branch (concat = 4x this)
    # the PerPixelSegmentor meta-architecture's own keys
    pp = cfg.MODEL.PER_PIXEL = CN()
    pp.SIZE_DIVISIBILITY = 32  # pad images to a multiple of this (0: the backbone's size_divisibility)
    # sliding-window inference (mmseg's "slide" mode): logits averaged over overlapping crops of the test image
    pp.SLIDE_WINDOW = CN()
    pp.SLIDE_WINDOW.ENABLED = False
    pp.SLIDE_WINDOW.CROP_SIZE = [512, 512]  # (h, w) of a window, clipped to the image
    pp.SLIDE_WINDOW.STRIDE = [341, 341]  # (h, w) step between windows


def add_checkpoint_config(cfg) -> None:
    """How MODEL.WEIGHTS initialises training (universal_seg.checkpoint.UniversalSegCheckpointer; loading is strict
    otherwise): regular expressions (full match) of state-dict keys re-initialised instead of loaded, e.g.
    ["sem_seg_head\\.predictor\\.class_embed\\..*"]. The class head of a checkpoint with another class count is
    re-initialised without being listed."""
    cfg.MODEL.REINIT_KEYS = []


def add_universal_seg_config(cfg) -> None:
    """Adds every universal_seg key to a detectron2 config (call once, before merge_from_file)."""
    from .data.config import add_data_config
    from .engine.config import add_engine_config
    from .inference.config import add_inference_config
    from .modeling.backbone.config import add_backbone_config
    from .modeling.heads.cgrseg import add_cgrseg_config
    from .modeling.oneformer import add_oneformer_config
    from .modeling.transformer_decoder.structtoken.config import add_structtoken_config

    add_maskformer_config(cfg)
    add_checkpoint_config(cfg)
    add_per_pixel_config(cfg)
    add_backbone_config(cfg)
    add_data_config(cfg)
    add_engine_config(cfg)
    add_structtoken_config(cfg)
    add_cgrseg_config(cfg)
    add_oneformer_config(cfg)
    add_inference_config(cfg)


class ConfigKeyError(ValueError, KeyError):
    """An unknown or renamed config key (a ValueError for the tools' one-line exits, a KeyError as yacs raises)."""

    __str__ = Exception.__str__


def _flat_keys(node, prefix: str = "") -> list[str]:
    """Every full key of a config node ("MODEL.WEIGHTS", ...), sub-nodes included."""
    from detectron2.config import CfgNode

    keys = []
    for name, value in node.items():
        keys.append(prefix + name)
        if isinstance(value, CfgNode):
            keys.extend(_flat_keys(value, f"{prefix}{name}."))
    return keys


def _key_error(err: Exception, keys: list[str], where: str) -> Exception:
    """yacs' KeyError / AssertionError about a key as one sentence: an unknown key gets the closest known names."""
    import difflib
    import re

    message = err.args[0] if err.args else str(err)
    unknown = re.fullmatch(r"Non-existent (?:config )?key: (\S+)", str(message))
    if unknown is None:  # renamed keys ("Key A was renamed to B; please update your config.") and anything else
        return ConfigKeyError(f"{message} ({where})")
    key = unknown.group(1)
    ratio = {k: difflib.SequenceMatcher(None, key, k).ratio() for k in difflib.get_close_matches(key, keys, 3, 0.75)}
    close = [k for k in ratio if ratio[k] >= max(ratio.values()) - 0.03]  # the best, and any as good
    hint = f"did you mean {' or '.join(close)}?" if close else "check its spelling against configs/ and the docs."
    return ConfigKeyError(f"unknown config key {key} {where}; {hint}")


def load_config(config_file: str, opts=(), cpu_hint: str = "append `MODEL.DEVICE cpu` to the command line"):
    """detectron2's defaults + every universal_seg key + ``config_file`` + ``opts`` (KEY VALUE list); not frozen.

    The YAML is read with yaml.safe_load only. Raises ValueError (one sentence naming the fix) when the file is
    missing, holds a Python-object tag (``!!python/...``), names an unknown key (ConfigKeyError, with the closest
    known keys) or a renamed one, has an odd-length override list, or asks for CUDA on a machine without it;
    command-line tools turn it into a one-line exit.
    """
    import os

    import torch
    from detectron2.config import get_cfg

    if not os.path.isfile(config_file):
        raise ValueError(f"--config-file {config_file!r} does not exist; pick one under configs/.")
    import yaml

    cfg = get_cfg()
    add_universal_seg_config(cfg)
    keys = sorted(_flat_keys(cfg))
    try:
        # allow_unsafe=False: detectron2 would otherwise retry a file safe_load refuses with yaml.unsafe_load, and
        # a `!!python/...` tag in a config (or one of its _BASE_ files) could construct objects or run code
        cfg.merge_from_file(config_file, allow_unsafe=False)
    except yaml.constructor.ConstructorError as err:
        tag = f" ({err.problem})" if err.problem else ""
        raise ValueError(
            f"{config_file} (or a _BASE_ file it names) uses a YAML tag that would create a Python object{tag}, which "
            f"configs never need and which could run code: remove the tag and write the plain value."
        ) from err
    except KeyError as err:
        raise _key_error(err, keys, f"in {config_file} (or a _BASE_ file it names)") from None
    opts = list(opts)
    if len(opts) % 2:
        raise ValueError(
            f"the config overrides must be KEY VALUE pairs, got {len(opts)} words ({' '.join(map(str, opts))}): "
            f"a value is missing, or a flag such as --eval-only stands after the overrides (put flags first)."
        )
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError) as err:
        raise _key_error(err, keys, "on the command line") from None
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no CUDA device is available: {cpu_hint}.")
    return cfg


# where usage_error leaves its line instead of printing it; set in launched worker processes (set_error_handoff)
_error_handoff = None


def set_error_handoff(handoff) -> None:
    """Makes :func:`usage_error` pass its line to ``handoff(line) -> bool`` (True: taken, not printed here); the
    launcher's worker processes set it so that it prints each distinct line of its workers once."""
    global _error_handoff
    _error_handoff = handoff


def usage_error(err) -> NoReturn:
    """Ends a command-line tool on a mistake found before its work starts (an argument, the config, a checkpoint,
    the data it names): ``error: <err>`` on stderr and exit status 2, as argparse does. Status 1 is left for failures
    during the work (inputs that could not be predicted, training stopped by bad data). In a worker process of a
    multi-process launch the line goes to the launcher instead (:func:`set_error_handoff`)."""
    line = f"error: {err}"
    if _error_handoff is None or not _error_handoff(line):
        print(line, file=sys.stderr)
    raise SystemExit(2)
