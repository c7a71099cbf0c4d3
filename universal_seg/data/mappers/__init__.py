"""Training dataset mappers (one per target format), selected by cfg.INPUT.DATASET_MAPPER_NAME."""

from .base import MAPPER_REGISTRY, build_mapper
from .image_io import UNREADABLE, read_rgb_image
from .instance import COCOInstanceLSJDatasetMapper, InstanceDatasetMapper
from .lsj_panoptic import COCOPanopticLSJDatasetMapper
from .panoptic import PanopticDatasetMapper
from .semantic import SemanticDatasetMapper

__all__ = [
    "MAPPER_REGISTRY",
    "build_mapper",
    "UNREADABLE",
    "read_rgb_image",
    "SemanticDatasetMapper",
    "PanopticDatasetMapper",
    "InstanceDatasetMapper",
    "COCOInstanceLSJDatasetMapper",
    "COCOPanopticLSJDatasetMapper",
]
