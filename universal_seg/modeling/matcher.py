"""Hungarian matching between predicted (class, mask) pairs and ground-truth segments (Mask2Former).

Cost of assigning query q to target t (one image):

    cost_class * (-p_q(label_t)) + cost_mask * BCE(q, t) + cost_dice * Dice(q, t)

with BCE and Dice computed on ``num_points`` points drawn uniformly in [0, 1]^2 and shared by every prediction
and every target of the image, so predictions and targets may have different resolutions.
"""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import point_sample
from scipy.optimize import linear_sum_assignment
from torch import nn

__all__ = ["HungarianMatcher", "compute_cost_matrix", "pairwise_sigmoid_bce", "pairwise_dice"]


def pairwise_sigmoid_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid binary cross-entropy for every (prediction, target) pair.

    BCE(x, t) = softplus(x) - x t, so the mean over points is (sum_p softplus(x_p) - x . t) / P: one product
    [Q, P] x [P, T] and one softplus (the official form, softplus(-x) @ t + softplus(x) @ (1 - t), takes two
    products, two softplus and two [Q, P] constant tensors).

    Args:
        logits: [Q, P] mask logits at P points.
        targets: [T, P] target values in [0, 1] at the same points.
    Returns:
        [Q, T]: entry (q, t) = mean over points of BCE(sigmoid(logits[q]), targets[t]).
    """
    num_points = logits.shape[1]
    return (F.softplus(logits).sum(-1, keepdim=True) - logits @ targets.T) / num_points


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice cost (+1 smoothing) for every (prediction, target) pair.

    Args:
        logits: [Q, P] mask logits at P points.
        targets: [T, P] target values in [0, 1] at the same points.
    Returns:
        [Q, T]: 1 - (2 a.b + 1) / (sum a + sum b + 1) with a = sigmoid(logits[q]), b = targets[t].
    """
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def compute_cost_matrix(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    tgt_labels: torch.Tensor,
    tgt_masks: torch.Tensor,
    point_coords: torch.Tensor,
    cost_class: float = 2.0,
    cost_mask: float = 5.0,
    cost_dice: float = 5.0,
) -> torch.Tensor:
    """Matching cost for one image, in fp32.

    Args:
        pred_logits: [Q, K+1] class logits.
        pred_masks: [Q, H, W] mask logits.
        tgt_labels: [T] long, contiguous class ids in [0, K).
        tgt_masks: [T, H', W'] bool or float masks (any resolution).
        point_coords: [P, 2] (x, y) in [0, 1]^2, shared by predictions and targets.
    Returns:
        [Q, T] fp32 cost matrix (autocast is disabled inside).
    """
    with torch.autocast(device_type=pred_masks.device.type, enabled=False):
        probs = pred_logits.float().softmax(-1)  # [Q, K+1]
        class_cost = -probs[:, tgt_labels]  # [Q, T]
        coords = point_coords.float()[None]  # [1, P, 2]
        # Masks are treated as channels of a single "image", so one grid_sample samples all of them.
        pred_points = point_sample(pred_masks.float()[None], coords, align_corners=False)[0]  # [Q, P]
        tgt_points = point_sample(tgt_masks.to(coords.device, torch.float32)[None], coords, align_corners=False)[0]
        return (
            cost_class * class_cost
            + cost_mask * pairwise_sigmoid_bce(pred_points, tgt_points)  # tgt_points: [T, P]
            + cost_dice * pairwise_dice(pred_points, tgt_points)
        )


def _empty_indices() -> Tuple[torch.Tensor, torch.Tensor]:
    return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising :func:`compute_cost_matrix` (per image)."""

    def __init__(
        self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0, num_points: int = 12544
    ):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: at least one of cost_class, cost_mask, cost_dice must be non-zero.")
        if num_points <= 0:
            raise ValueError(f"HungarianMatcher: num_points must be positive, got {num_points}.")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    def sample_points(self, device: torch.device) -> torch.Tensor:
        """[num_points, 2] uniform random (x, y) in [0, 1]^2 (tests replace this to fix the points)."""
        return torch.rand(self.num_points, 2, device=device)

    def cost_matrix(
        self, pred_logits: torch.Tensor, pred_masks: torch.Tensor, target: Dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """[Q, T] cost for one image: pred_logits [Q, K+1], pred_masks [Q, H, W], target {"labels", "masks"}."""
        return compute_cost_matrix(
            pred_logits,
            pred_masks,
            target["labels"],
            target["masks"],
            self.sample_points(pred_masks.device),
            self.cost_class,
            self.cost_mask,
            self.cost_dice,
        )

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Match every image of the batch.

        Args:
            outputs: {"pred_logits": [B, Q, K+1], "pred_masks": [B, Q, H, W]} (other keys ignored).
            targets: B dicts {"labels": long [n_i], "masks": [n_i, H', W']}.
        Returns:
            B pairs (query indices long [m_i], target indices long [m_i]) on CPU, m_i = min(Q, n_i);
            query indices are sorted increasingly.
        """
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"HungarianMatcher: {pred_logits.shape[0]} images in outputs but {len(targets)} targets.")
        indices = []
        for b, target in enumerate(targets):
            if target["labels"].numel() == 0:
                indices.append(_empty_indices())
                continue
            cost = self.cost_matrix(pred_logits[b], pred_masks[b], target).cpu()
            if not torch.isfinite(cost).all():
                raise FloatingPointError(
                    "HungarianMatcher: the matching cost has NaN/Inf entries; the model's outputs diverged "
                    "(lower the learning rate or check the inputs)."
                )
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
        return indices

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, "
            f"num_points={self.num_points}"
        )
