"""COCO categories: the 133 panoptic classes (80 things + 53 merged stuff) and the 171 COCO-Stuff classes.

The panoptic table is detectron2's ``COCO_CATEGORIES`` (ids, names, colours, isthing). COCO-Stuff adds the
91 original stuff classes (ids 92-182); their colours are derived deterministically from their ids.
"""

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

COCO_PANOPTIC_CATEGORIES = [dict(c) for c in COCO_CATEGORIES]

# fmt: off
_COCO_STUFF_NAMES = [
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel",
    "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
]
# fmt: on


# UNVERIFIED (reported, not guessed): these stuff colours are NOT the official COCO-Stuff palette. Neither detectron2
# nor MaskFormer/Mask2Former ship colours for the 91 stuff classes (MaskFormer's COCO-Stuff-10k table has none), and
# the official cocostuffapi colour map could not be checked here. They only affect visualisation; names and ids
# (92-182, in this order) were checked against MaskFormer's register_coco_stuff_10k.py table.
def _stuff_color(cat_id):
    """A fixed, well-spread colour for a COCO-Stuff stuff id (visualisation only)."""
    return ((cat_id * 67) % 256, (cat_id * 139 + 50) % 256, (cat_id * 211 + 100) % 256)


COCO_STUFF_171_CATEGORIES = [c for c in COCO_PANOPTIC_CATEGORIES if c["isthing"]] + [
    {"id": 92 + i, "name": name, "color": _stuff_color(92 + i), "isthing": 0}
    for i, name in enumerate(_COCO_STUFF_NAMES)
]
