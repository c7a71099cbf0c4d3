"""Training / evaluation engine: Trainer (optimizer, schedule, data, evaluators), CPU-capable launcher."""

from .launch import launch
from .optimizer import build_optimizer
from .trainer import TRAINING_STOPPERS, Trainer

__all__ = ["TRAINING_STOPPERS", "Trainer", "build_optimizer", "launch"]
