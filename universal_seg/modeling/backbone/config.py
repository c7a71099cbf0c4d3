"""Config keys of the backbones: ``add_backbone_config(cfg)`` adds every key this package reads.

One variant mechanism for every family: one key names a row of the family's variant table, which fixes the
architecture (widths, depths, heads); every other key is a hyperparameter of that architecture:
MODEL.RESNETS.DEPTH (detectron2's key, RESNET_VARIANTS), MODEL.SWIN.VARIANT (SWIN_VARIANTS), MODEL.MIT.VARIANT,
MODEL.VIT.VARIANT, MODEL.EFFICIENTFORMERV2.VARIANT, and MODEL.TIMM.MODEL_NAME (timm's own table). No helper writes
into the config: the Mask2Former ResNet settings are in the base YAMLs under configs/.

ResNet uses detectron2's own MODEL.RESNETS.* keys plus STEM_TYPE;
MODEL.BACKBONE.FREEZE_AT (detectron2's key) is honoured by every backbone. Note detectron2's default
FREEZE_AT is 2; Mask2Former configs set 0.
"""

from detectron2.config import CfgNode as CN

RES_ALL = ["res2", "res3", "res4", "res5"]


def add_backbone_config(cfg):
    """Add MODEL.RESNETS.STEM_TYPE and MODEL.SWIN / MIT / VIT / TIMM / EFFICIENTFORMERV2 with their defaults."""
    # ResNet ("ResNetBackbone" = detectron2's build_resnet_backbone after checks); Mask2Former configs set it
    cfg.MODEL.RESNETS.STEM_TYPE = "basic"  # only the basic (7x7 conv + max-pool) stem exists

    # Swin Transformer ("SwinTransformerBackbone"); names and defaults as in the official Mask2Former (Swin-T)
    cfg.MODEL.SWIN = CN()
    cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = 224  # image size of the ImageNet pre-training (sizes the APE table)
    cfg.MODEL.SWIN.PATCH_SIZE = 4
    cfg.MODEL.SWIN.VARIANT = "T"  # T/S/B/L: embed_dim, depths and num_heads (swin.SWIN_VARIANTS)
    cfg.MODEL.SWIN.WINDOW_SIZE = 7  # 12 for the 384-pretrained B/L checkpoints
    cfg.MODEL.SWIN.MLP_RATIO = 4.0
    cfg.MODEL.SWIN.QKV_BIAS = True
    cfg.MODEL.SWIN.QK_SCALE = None  # None = head_dim ** -0.5
    cfg.MODEL.SWIN.DROP_RATE = 0.0
    cfg.MODEL.SWIN.ATTN_DROP_RATE = 0.0
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3  # stochastic depth, linear over all blocks
    cfg.MODEL.SWIN.APE = False  # absolute position embedding
    cfg.MODEL.SWIN.PATCH_NORM = True
    cfg.MODEL.SWIN.OUT_FEATURES = list(RES_ALL)
    cfg.MODEL.SWIN.USE_CHECKPOINT = False  # gradient checkpointing of every block

    # SegFormer MiT encoder ("MiTBackbone")
    cfg.MODEL.MIT = CN()
    cfg.MODEL.MIT.VARIANT = "B0"  # B0..B5
    cfg.MODEL.MIT.DROP_PATH_RATE = 0.1
    cfg.MODEL.MIT.OUT_FEATURES = list(RES_ALL)

    # Plain ViT, patch 16 ("ViTBackbone")
    cfg.MODEL.VIT = CN()
    cfg.MODEL.VIT.VARIANT = "B"  # T/S/B/L
    cfg.MODEL.VIT.PRETRAIN_IMG_SIZE = 224  # sizes the position-embedding table (interpolated at run time)
    cfg.MODEL.VIT.DROP_PATH_RATE = 0.1
    cfg.MODEL.VIT.OUT_INDICES = [-1]  # 0-based blocks whose outputs are used (negative = from the end)
    cfg.MODEL.VIT.FEATURE_PYRAMID = True  # True: res2..res5 by a simple feature pyramid; False: "layer{i}" @1/16
    cfg.MODEL.VIT.PYRAMID_CHANNELS = 256  # output channels of the pyramid levels
    cfg.MODEL.VIT.OUT_FEATURES = list(RES_ALL)  # with FEATURE_PYRAMID; ignored (all OUT_INDICES) without it
    cfg.MODEL.VIT.OUT_NORM = False  # apply the final LayerNorm ("norm") to every output
    cfg.MODEL.VIT.USE_CHECKPOINT = False

    # Any timm model with features_only ("TimmBackbone")
    cfg.MODEL.TIMM = CN()
    cfg.MODEL.TIMM.MODEL_NAME = "resnet50"
    cfg.MODEL.TIMM.PRETRAINED = False  # True downloads timm weights; never in tests
    cfg.MODEL.TIMM.DROP_PATH_RATE = 0.0
    cfg.MODEL.TIMM.OUT_FEATURES = list(RES_ALL)

    # EfficientFormerV2 through timm ("EfficientFormerV2Backbone"); CGRSeg T/B/L = S1/S2/L
    cfg.MODEL.EFFICIENTFORMERV2 = CN()
    cfg.MODEL.EFFICIENTFORMERV2.VARIANT = "S1"  # S0/S1/S2/L
    cfg.MODEL.EFFICIENTFORMERV2.PRETRAINED = False
    cfg.MODEL.EFFICIENTFORMERV2.DROP_PATH_RATE = 0.0
    cfg.MODEL.EFFICIENTFORMERV2.OUT_FEATURES = list(RES_ALL)
    return cfg
