"""Datasets (registration with metadata), dataset mappers and augmentations."""

from . import datasets  # noqa: F401  (registers every dataset; no disk access)
from .config import add_data_config  # noqa: F401
