"""Evaluators beyond detectron2's, the evaluator factory, semantic TTA and offline evaluation of prediction files."""

from .build import build_evaluator
from .instance_evaluator import InstanceSegEvaluator
from .tta import SemanticSegmentorWithTTA

__all__ = ["build_evaluator", "InstanceSegEvaluator", "SemanticSegmentorWithTTA"]
