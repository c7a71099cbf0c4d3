"""What the per-pixel heads share, as mmsegmentation's ``BaseDecodeHead``: the dropout + 1x1 classifier conv
(:class:`DecodeHead`), and for the registered heads (:class:`PerPixelHead`) the selection of their input features
from MODEL.SEM_SEG_HEAD.IN_FEATURES / AUX_IN_FEATURES and the per-pixel cross-entropy losses.
"""

from __future__ import annotations

import torch
from detectron2.layers import ShapeSpec
from torch import nn

from .build import select_features
from .inference import check_class_weights, per_pixel_ce_loss


class DecodeHead(nn.Module):
    """Dropout (2d) + 1x1 classifier conv, mmseg's ``cls_seg``: [B, C, h, w] -> [B, K, h, w] (:meth:`classify`).

    The conv is registered as ``classifier_name`` ("conv_seg", mmseg's name; SegFormer's is "linear_pred") so that
    official checkpoint keys stay as they are. Subclasses call :meth:`build_classifier` after their other layers:
    the registration order is the state-dict order and the order in which the random initialisation draws.
    """

    classifier_name = "conv_seg"

    def build_classifier(
        self, channels: int, num_classes: int, dropout: float = 0.0, init_std: float | None = None
    ) -> None:
        """``self.dropout`` (Dropout2d(dropout)) and the 1x1 conv C -> K; ``init_std``: normal(0, std) weights and
        zero bias (mmseg's init of ``conv_seg``) instead of PyTorch's default init."""
        self.dropout = nn.Dropout2d(dropout)
        conv = nn.Conv2d(channels, num_classes, 1)
        if init_std is not None:
            nn.init.normal_(conv.weight, std=init_std)
            nn.init.zeros_(conv.bias)
        self.add_module(self.classifier_name, conv)

    @property
    def classifier(self) -> nn.Conv2d:
        return getattr(self, self.classifier_name)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] -> [B, K, h, w]."""
        return self.classifier(self.dropout(x))


class PerPixelHead(DecodeHead):
    """Base of the heads in PER_PIXEL_HEAD_REGISTRY (run by the PerPixelSegmentor meta-architecture).

    Contract: built with ``(cfg, input_shape: dict[str, ShapeSpec])`` (the backbone's output shapes); ``forward``
    takes the backbone features ``{name: [B, C, h, w]}`` and returns ``{"sem_seg_logits": [B, K, h', w']}``, plus
    in training ``"aux_logits": [([B, K, h'', w''], loss_weight), ...]`` when the head has auxiliary heads.

    Shared parts:

    - input selection: :meth:`select_inputs` (from_config: MODEL.SEM_SEG_HEAD.IN_FEATURES, with AUX_IN_FEATURES
      when ``has_aux_inputs``; ``num_inputs`` maps, else one clear error), :meth:`init_inputs` (``in_features`` /
      ``in_channels``, fine to coarse or in config order) and :meth:`transform_inputs` (the maps, in that order);
    - :meth:`build_classifier` / :meth:`classify` (dropout + 1x1 conv, :class:`DecodeHead`);
    - :meth:`losses`: per-pixel cross-entropy of the main logits (weight ``loss_weight``, MODEL.SEM_SEG_HEAD.
      LOSS_WEIGHT) and of each auxiliary output (its own weight), logits upsampled to the targets, ``ignore_label``
      (MODEL.SEM_SEG_HEAD.IGNORE_VALUE) ignored; per-class weights (PER_CLASS_CE_WEIGHTS) and the focal variant
      (FOCAL_GAMMA > 0) as :func:`per_pixel_ce_loss` defines them.

    Subclasses set ``num_inputs`` (None: any number), ``inputs_description`` and ``inputs_example`` (for the error
    message) and ``has_aux_inputs``.
    """

    num_inputs: int | None = None
    inputs_description = "feature maps"
    inputs_example = "the backbone's feature names"
    has_aux_inputs = False
    aux_inputs_note = ""

    def __init__(
        self,
        *,
        num_classes: int,
        loss_weight: float = 1.0,
        ignore_label: int = 255,
        class_weights: tuple[float, ...] = (),
        focal_gamma: float = 0.0,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.loss_weight = loss_weight
        self.ignore_label = ignore_label
        self.focal_gamma = float(focal_gamma)
        if focal_gamma < 0:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.FOCAL_GAMMA is {focal_gamma}; use 0 (cross-entropy) or a positive value."
            )
        # per-class CE weights [K] (config, not learned: kept out of the state dict)
        weights = check_class_weights(class_weights, num_classes, "MODEL.SEM_SEG_HEAD.PER_CLASS_CE_WEIGHTS")
        self.register_buffer("class_weights", weights, persistent=False)

    # --------------------------------------------------------------------------------------------- inputs
    @classmethod
    def check_num_inputs(cls, names) -> None:
        """One clear error when ``names`` are not ``num_inputs`` feature names."""
        if cls.num_inputs is not None and len(names) != cls.num_inputs:
            raise ValueError(
                f"{cls.__name__} needs {cls.inputs_description}, got features {list(names)}; set "
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES to {cls.inputs_example}."
            )

    @classmethod
    def check_aux_inputs(cls, cfg) -> None:
        """Heads without auxiliary heads on backbone features refuse a non-empty MODEL.SEM_SEG_HEAD.AUX_IN_FEATURES."""
        if cfg.MODEL.SEM_SEG_HEAD.AUX_IN_FEATURES and not cls.has_aux_inputs:
            raise ValueError(
                f"{cls.__name__} has no auxiliary heads on backbone features{cls.aux_inputs_note}; "
                f"leave MODEL.SEM_SEG_HEAD.AUX_IN_FEATURES empty."
            )

    @classmethod
    def select_inputs(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict[str, ShapeSpec]:
        """The shapes of MODEL.SEM_SEG_HEAD.IN_FEATURES (then AUX_IN_FEATURES when the head has auxiliary heads),
        checked against the backbone's outputs ``input_shape``."""
        head = cfg.MODEL.SEM_SEG_HEAD
        cls.check_aux_inputs(cfg)
        cls.check_num_inputs(head.IN_FEATURES)
        if cls.has_aux_inputs:
            return select_features(
                input_shape,
                list(head.IN_FEATURES) + list(head.AUX_IN_FEATURES),
                "MODEL.SEM_SEG_HEAD.IN_FEATURES + AUX_IN_FEATURES",
            )
        return select_features(input_shape, head.IN_FEATURES, "MODEL.SEM_SEG_HEAD.IN_FEATURES")

    @classmethod
    def loss_config(cls, cfg) -> dict:
        """The base arguments: num_classes, loss_weight and ignore_label from MODEL.SEM_SEG_HEAD."""
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "num_classes": head.NUM_CLASSES,
            "loss_weight": head.LOSS_WEIGHT,
            "ignore_label": head.IGNORE_VALUE,
            "class_weights": tuple(head.PER_CLASS_CE_WEIGHTS),
            "focal_gamma": head.FOCAL_GAMMA,
        }

    def init_inputs(self, input_shape: dict[str, ShapeSpec], by_stride: bool = True) -> None:
        """``self.in_features`` (fine to coarse when ``by_stride``, else in ``input_shape``'s order) and
        ``self.in_channels``, after checking their number."""
        self.check_num_inputs(list(input_shape))
        names = list(input_shape)
        self.in_features = sorted(names, key=lambda n: input_shape[n].stride) if by_stride else names
        self.in_channels = [input_shape[n].channels for n in self.in_features]

    def transform_inputs(self, features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The maps of ``in_features``, in that order: list of [B, C_i, h_i, w_i]."""
        return [features[n] for n in self.in_features]

    # --------------------------------------------------------------------------------------------- losses
    def losses(self, outputs: dict, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """outputs of :meth:`forward` and targets [B, H, W] long (``ignore_label`` ignored) -> weighted losses
        {"loss_sem_seg", "loss_sem_seg_aux{i}"}; logits are bilinearly upsampled to [H, W] first."""
        options = {"class_weights": self.class_weights, "focal_gamma": self.focal_gamma}
        losses = {
            "loss_sem_seg": self.loss_weight
            * per_pixel_ce_loss(outputs["sem_seg_logits"], targets, self.ignore_label, **options)
        }
        for i, (logits, weight) in enumerate(outputs.get("aux_logits", [])):
            losses[f"loss_sem_seg_aux{i}"] = weight * per_pixel_ce_loss(logits, targets, self.ignore_label, **options)
        return losses
