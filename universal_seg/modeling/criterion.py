"""Set-prediction losses of Mask2Former: class cross-entropy and point-sampled mask BCE / dice.

The criterion matches queries to targets with a matcher (see ``matcher.py``), then computes, for the final
prediction and for every auxiliary (intermediate-layer) prediction:

- ``loss_ce``: cross-entropy over K+1 classes for every query; unmatched queries target the no-object class
  K, whose weight is ``eos_coef`` (class k weighs ``class_weights[k]``, default 1).
- ``loss_mask`` / ``loss_dice``: sigmoid BCE and dice of matched queries on ``num_points`` points chosen by
  importance sampling of the predicted mask (PointRend), summed over masks and divided by the number of
  ground-truth masks in the batch averaged over workers.
- ``loss_mask_unmatched`` (optional, loss name ``"unmatched_masks"``): sigmoid BCE of every UNMATCHED query's mask
  towards an empty mask, on ``num_points`` uniformly random points, summed over those masks and divided by the same
  number of ground-truth masks (so its weight compares directly with ``loss_mask``'s). Not in Mask2Former; it drives
  unmatched queries' masks to empty, which the semantic sum over all queries needs (see
  MODEL.MASK_FORMER.UNMATCHED_MASK_WEIGHT).

Auxiliary keys carry a suffix ``_{i}``. The returned dict is UNWEIGHTED; ``self.weight_dict`` (see
:func:`build_weight_dict`) holds the weights the meta-architecture multiplies by.
"""

from typing import Dict, List, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from torch import nn

__all__ = ["SetCriterion", "build_weight_dict", "sigmoid_bce_loss", "dice_loss", "count_masks"]

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


def build_weight_dict(
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
    dec_layers: int = 10,
    deep_supervision: bool = True,
    unmatched_mask_weight: float = 0.0,
) -> Dict[str, float]:
    """Loss weights, including the ``_{i}`` keys of the ``dec_layers - 1`` auxiliary predictions.

    ``dec_layers`` counts every prediction (Mask2Former's 10 = initial queries + 9 layers).
    ``unmatched_mask_weight`` > 0 adds ``loss_mask_unmatched`` (0: the key is absent, as in Mask2Former).
    """
    base = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    if unmatched_mask_weight > 0:
        base["loss_mask_unmatched"] = unmatched_mask_weight
    weights = dict(base)
    if deep_supervision:
        for i in range(dec_layers - 1):
            weights.update({f"{k}_{i}": v for k, v in base.items()})
    return weights


def sigmoid_bce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: torch.Tensor) -> torch.Tensor:
    """Sum over masks of the mean-over-points sigmoid BCE, divided by num_masks.

    logits, targets: [N, P]; num_masks: scalar.
    """
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: torch.Tensor) -> torch.Tensor:
    """Sum over masks of 1 - (2 a.b + 1) / (sum a + sum b + 1) (a = sigmoid(logits)), divided by num_masks.

    logits, targets: [N, P]; num_masks: scalar.
    """
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def count_masks(targets: List[Dict[str, torch.Tensor]], device: torch.device) -> torch.Tensor:
    """Ground-truth masks in the batch, averaged over distributed workers, at least 1 (fp32 scalar)."""
    num = torch.as_tensor(float(sum(len(t["labels"]) for t in targets)), dtype=torch.float32, device=device)
    world_size = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num)
        world_size = dist.get_world_size()
    return torch.clamp(num / world_size, min=1.0)


def _uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """[N, 1, P] logits -> [N, 1, P] uncertainty = -|logit| (highest at the decision boundary)."""
    return -torch.abs(logits)


class SetCriterion(nn.Module):
    """Mask2Former's losses (see the module docstring)."""

    LOSS_NAMES = ("labels", "masks", "unmatched_masks")

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Dict[str, float],
        eos_coef: float = 0.1,
        losses: Sequence[str] = ("labels", "masks"),
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        class_weights: Sequence[float] = (),
    ):
        super().__init__()
        unknown = [name for name in losses if name not in self.LOSS_NAMES]
        if unknown:
            raise ValueError(f"SetCriterion: unknown losses {unknown}; choose from {list(self.LOSS_NAMES)}.")
        if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
            raise ValueError(
                "SetCriterion: need oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1, got "
                f"{oversample_ratio} and {importance_sample_ratio}."
            )
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.losses = tuple(losses)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        from .heads.inference import check_class_weights

        # CE weights of the classes [K] (MODEL.MASK_FORMER.PER_CLASS_CE_WEIGHTS; all 1 by default) + no-object
        empty_weight = torch.cat(
            [check_class_weights(class_weights, num_classes, "MODEL.MASK_FORMER.PER_CLASS_CE_WEIGHTS"), torch.ones(1)]
        )
        empty_weight[-1] = eos_coef
        # Persistent, like the official checkpoints' "criterion.empty_weight" [K+1], so their keys load cleanly.
        self.register_buffer("empty_weight", empty_weight)

    # ------------------------------------------------------------------ losses of one prediction set
    def loss_labels(
        self,
        outputs: Dict[str, torch.Tensor],
        targets: List[Dict[str, torch.Tensor]],
        indices: Indices,
        num_masks: torch.Tensor,
    ) -> Dict[str, torch.Tensor]:
        """{"loss_ce"}: weighted mean CE of pred_logits [B, Q, K+1] against matched labels / no-object."""
        logits = outputs["pred_logits"].float()
        batch, num_queries = logits.shape[:2]
        target_classes = torch.full((batch, num_queries), self.num_classes, dtype=torch.long, device=logits.device)
        for b, ((src, tgt), target) in enumerate(zip(indices, targets)):
            target_classes[b, src.to(logits.device)] = target["labels"][tgt].to(logits.device)
        loss = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight.to(logits.device))
        return {"loss_ce": loss}

    def sample_points(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """[N, 1, H, W] mask logits -> [N, num_points, 2] importance-sampled (x, y) in [0, 1]^2 (no gradient)."""
        with torch.no_grad():
            return get_uncertain_point_coords_with_randomness(
                mask_logits, _uncertainty, self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )

    def loss_masks(
        self,
        outputs: Dict[str, torch.Tensor],
        targets: List[Dict[str, torch.Tensor]],
        indices: Indices,
        num_masks: torch.Tensor,
    ) -> Dict[str, torch.Tensor]:
        """{"loss_mask", "loss_dice"} of the matched pred_masks [B, Q, H, W], on sampled points, in fp32."""
        pred_masks = outputs["pred_masks"]
        batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)]).to(pred_masks.device)
        src_idx = torch.cat([src for src, _ in indices]).to(pred_masks.device)
        if src_idx.numel() == 0:
            zero = pred_masks.sum().float() * 0.0  # keeps the graph connected (DDP needs every parameter used)
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        src_masks = pred_masks[batch_idx, src_idx].float()[:, None]  # [N, 1, H, W]
        coords = self.sample_points(src_masks)  # [N, P, 2]
        point_logits = point_sample(src_masks, coords, align_corners=False)[:, 0]  # [N, P]
        point_labels = self._sample_targets(targets, indices, coords)  # [N, P]
        return {
            "loss_mask": sigmoid_bce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    def loss_unmatched_masks(
        self,
        outputs: Dict[str, torch.Tensor],
        targets: List[Dict[str, torch.Tensor]],
        indices: Indices,
        num_masks: torch.Tensor,
    ) -> Dict[str, torch.Tensor]:
        """{"loss_mask_unmatched"}: BCE of the unmatched pred_masks [B, Q, H, W] towards 0, in fp32.

        On ``num_points`` uniformly random points per mask (an unbiased estimate of the mean over the map; the
        importance sampling of ``loss_masks`` would favour |logit| near 0, not the confident positive pixels an
        empty target penalises most): sum over unmatched masks of mean_points softplus(logit), / num_masks.
        """
        pred_masks = outputs["pred_masks"]
        batch, num_queries = pred_masks.shape[:2]
        unmatched = torch.ones((batch, num_queries), dtype=torch.bool, device=pred_masks.device)
        for b, (src, _) in enumerate(indices):
            unmatched[b, src.to(pred_masks.device)] = False
        src_masks = pred_masks[unmatched].float()[:, None]  # [N, 1, H, W]
        if src_masks.shape[0] == 0:
            return {"loss_mask_unmatched": pred_masks.sum().float() * 0.0}
        coords = torch.rand(src_masks.shape[0], self.num_points, 2, device=src_masks.device)
        point_logits = point_sample(src_masks, coords, align_corners=False)[:, 0]  # [N, P]
        return {"loss_mask_unmatched": sigmoid_bce_loss(point_logits, torch.zeros_like(point_logits), num_masks)}

    @staticmethod
    def _sample_targets(targets: List[Dict[str, torch.Tensor]], indices: Indices, coords: torch.Tensor) -> torch.Tensor:
        """Matched GT masks sampled at coords [N, P, 2] -> [N, P]; each image's masks keep their own size."""
        chunks, start = [], 0
        for (_, tgt), target in zip(indices, targets):
            if tgt.numel() == 0:
                continue
            masks = target["masks"][tgt.to(target["masks"].device)].to(coords.device, torch.float32)  # [n, H', W']
            chunk = coords[start : start + len(tgt)]
            chunks.append(point_sample(masks[:, None], chunk, align_corners=False)[:, 0])
            start += len(tgt)
        return torch.cat(chunks)

    # ------------------------------------------------------------------ driver
    def _check_targets(self, batch: int, targets: List[Dict[str, torch.Tensor]]) -> None:
        """Raise early, with one clear sentence, on targets the losses cannot use."""
        if len(targets) != batch:
            raise ValueError(f"SetCriterion: {batch} images in outputs but {len(targets)} targets.")
        for i, t in enumerate(targets):
            labels = t["labels"]
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(
                    f"SetCriterion: image {i} has labels outside [0, {self.num_classes}); map the "
                    "dataset ids to contiguous ids (and drop ignored segments) in the data mapper."
                )
            if len(t["masks"]) != len(labels):
                raise ValueError(f"SetCriterion: image {i} has {len(labels)} labels but {len(t['masks'])} masks.")

    def _losses_of(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]], num_masks: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
        losses = {}
        loss_fns = {"labels": self.loss_labels, "masks": self.loss_masks, "unmatched_masks": self.loss_unmatched_masks}
        for name in self.losses:
            losses.update(loss_fns[name](outputs, targets, indices, num_masks))
        return losses

    def forward(self, outputs: Dict[str, object], targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """Unweighted losses.

        Args:
            outputs: {"pred_logits": [B, Q, K+1], "pred_masks": [B, Q, H, W],
                      optional "aux_outputs": list of dicts with the same two keys}.
            targets: B dicts {"labels": long [n_i] in [0, K), "masks": [n_i, H', W'] bool/float}.
        Returns:
            {"loss_ce", "loss_mask", "loss_dice", "loss_mask_unmatched"} for the losses enabled, plus "<key>_{i}" for
            aux output i.
        """
        device = outputs["pred_logits"].device
        self._check_targets(outputs["pred_logits"].shape[0], targets)
        # The matcher and the mask losses sample the masks with grid_sample, which needs floats: convert once
        # here, not once per prediction set in each of them (2 x 10 conversions of [n, H, W] with Mask2Former).
        targets = [{**t, "masks": t["masks"].to(torch.float32)} for t in targets]
        with torch.autocast(device_type=device.type, enabled=False):
            num_masks = count_masks(targets, device)
            main = {k: v for k, v in outputs.items() if k != "aux_outputs"}
            losses = self._losses_of(main, targets, num_masks)
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                aux_losses = self._losses_of(aux, targets, num_masks)
                losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, losses={self.losses}, "
            f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}"
        )
