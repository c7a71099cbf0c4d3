"""Dataset registration. Importing this module registers every dataset under $DETECTRON2_DATASETS (default
``./datasets``) without touching the disk, except the converted datasets of ``custom/`` (their small
``dataset.json`` manifests are read); files are checked when a dataset is loaded (DatasetCatalog.get).
Your own data: :mod:`.custom` (``register_coco_instances``, ``register_coco_panoptic``,
``register_semantic_folder``)."""

from ._common import check_paths, dataset_root, register_checked  # noqa: F401  (public registration helpers)
from .ade20k import register_all_ade20k
from .cityscapes import register_all_cityscapes
from .coco import register_all_coco
from .custom import (  # noqa: F401  (public registration API for your own data)
    add_register_argument,
    register_all_custom,
    register_coco_instances,
    register_coco_panoptic,
    register_manifest,
    register_semantic_folder,
    run_registration_files,
)
from .mapillary import register_all_mapillary_vistas
from .mini import register_all_mini
from .panoptic_json import load_panoptic_json  # noqa: F401  (public loader)


def register_all(root=None):
    """Register (or re-register, e.g. after changing $DETECTRON2_DATASETS) every dataset under ``root``."""
    root = root or dataset_root()
    register_all_coco(root)
    register_all_ade20k(root)
    register_all_cityscapes(root)
    register_all_mapillary_vistas(root)
    register_all_mini(root)
    register_all_custom(root)


register_all()
