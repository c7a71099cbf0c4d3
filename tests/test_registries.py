"""Every part universal_seg registers is exercised by a test: a registered name either appears in some YAML under
configs/ (tests/test_meta_arch.py builds every one of them) or is listed here with the test file that builds it.
A newly registered part with neither fails this test."""

from pathlib import Path

import pytest
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY

import universal_seg.data  # noqa: F401  (registers the mappers)
import universal_seg.modeling  # noqa: F401  (registers the models' parts)
from universal_seg.data.mappers.base import MAPPER_REGISTRY
from universal_seg.modeling.heads import PER_PIXEL_HEAD_REGISTRY
from universal_seg.modeling.pixel_decoder.build import PIXEL_DECODER_REGISTRY
from universal_seg.modeling.transformer_decoder import TRANSFORMER_DECODER_REGISTRY

ROOT = Path(__file__).resolve().parent.parent
YAML_TEXT = "\n".join(p.read_text() for p in sorted((ROOT / "configs").rglob("*.yaml")))

# Parts no shipped config names: the test file that builds them, and what in it selects the part.
TESTED_ELSEWHERE = {
    "build_timm_backbone": ("test_backbone_build.py", "build_timm_backbone"),
    "build_vit_backbone": ("test_backbone_build.py", "build_vit_backbone"),
    "mask_former_panoptic": ("test_mappers.py", "mask_former_panoptic"),
    "mask_former_instance": ("test_mappers.py", "mask_former_instance"),
    "coco_instance_lsj": ("test_mappers.py", "coco_instance_lsj"),
}


def _ours(registry):
    """Names in ``registry`` whose object universal_seg defines (detectron2's own entries excluded)."""
    return sorted(name for name, obj in registry._obj_map.items() if obj.__module__.startswith("universal_seg"))


REGISTERED = [
    (registry._name, name)
    for registry in (
        BACKBONE_REGISTRY,
        META_ARCH_REGISTRY,
        PIXEL_DECODER_REGISTRY,
        TRANSFORMER_DECODER_REGISTRY,
        PER_PIXEL_HEAD_REGISTRY,
        MAPPER_REGISTRY,
    )
    for name in _ours(registry)
]


def test_every_registry_has_our_parts():
    kinds = {kind for kind, _ in REGISTERED}
    assert kinds == {"BACKBONE", "META_ARCH", "PIXEL_DECODER", "TRANSFORMER_DECODER", "PER_PIXEL_HEAD",
                     "DATASET_MAPPER"}  # fmt: skip
    assert len(REGISTERED) >= 20


@pytest.mark.parametrize("kind,name", REGISTERED, ids=[f"{k}:{n}" for k, n in REGISTERED])
def test_registered_part_is_built_by_a_config_or_a_named_test(kind, name):
    if f'"{name}"' in YAML_TEXT or f": {name}\n" in YAML_TEXT or f"'{name}'" in YAML_TEXT:
        return  # built by tests/test_meta_arch.py, which builds every YAML
    assert name in TESTED_ELSEWHERE, (
        f"{kind} entry {name!r} is used by no config under configs/ and has no test listed in TESTED_ELSEWHERE: "
        f"add a config or a test that builds it, and list that test here."
    )
    file_name, marker = TESTED_ELSEWHERE[name]
    assert marker in (ROOT / "tests" / file_name).read_text(), f"{file_name} does not use {marker!r}"
