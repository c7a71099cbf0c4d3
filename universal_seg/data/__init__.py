"""Datasets (registration with metadata), dataset mappers and augmentations."""

from . import datasets  # noqa: F401  (registers every dataset; no disk access)
from .config import add_data_config  # noqa: F401
from .datasets import (  # noqa: F401  (public: register your own data; see datasets/custom.py)
    add_register_argument,
    register_coco_instances,
    register_coco_panoptic,
    register_manifest,
    register_semantic_folder,
    run_registration_files,
)
