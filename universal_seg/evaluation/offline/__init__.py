"""Offline evaluation of prediction files (used by tools/evaluate.py): same numbers as the official libraries."""

from .instance import evaluate_instance
from .panoptic import evaluate_panoptic, evaluate_pq_from_semantic
from .semantic import evaluate_semantic, semantic_metrics

__all__ = [
    "evaluate_instance",
    "evaluate_panoptic",
    "evaluate_pq_from_semantic",
    "evaluate_semantic",
    "semantic_metrics",
]
