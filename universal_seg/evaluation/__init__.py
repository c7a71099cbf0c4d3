"""Evaluators beyond detectron2's (compiled COCO AP, parallel PQ), the evaluator factory, semantic TTA and offline
evaluation of prediction files."""

from .build import build_evaluator
from .coco import FastCOCOEvaluator
from .instance_evaluator import InstanceSegEvaluator
from .tta import SemanticSegmentorWithTTA

__all__ = ["build_evaluator", "FastCOCOEvaluator", "InstanceSegEvaluator", "SemanticSegmentorWithTTA"]
