"""ADE20K SceneParsing-150 categories (semantic, panoptic and the 100-class instance subset).

``id`` is the 1-based label value of ADEChallengeData2016/annotations (0 = "other", ignored);
``isthing`` marks the 100 classes of the ADE20K instance track. Colours are the usual ADE20K palette.
"""
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

# fmt: off
# First names (before any comma) of the 100 classes of the ADE20K instance track.
_THING_NAMES = {
    "bed", "window", "cabinet", "person", "door", "table", "curtain", "chair", "car", "painting", "sofa",
    "shelf", "mirror", "armchair", "seat", "fence", "desk", "wardrobe", "lamp", "tub", "rail", "cushion", "box",
    "column", "signboard", "chest of drawers", "counter", "sink", "fireplace", "refrigerator", "case",
    "pool table", "pillow", "screen door", "bookcase", "coffee table", "toilet", "flower", "book", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "arcade machine", "bus",
    "towel", "light", "truck", "chandelier", "awning", "street lamp", "booth", "tv", "plane", "clothes", "pole",
    "bannister", "ottoman", "bottle", "van", "ship", "fountain", "washer", "plaything", "stool", "barrel",
    "basket", "bag", "minibike", "oven", "ball", "food", "step", "trade name", "microwave", "pot", "animal",
    "bicycle", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "trash can", "fan", "plate", "monitor", "bulletin board", "radiator", "glass", "clock", "flag",
}
_COLORS = [
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80), (140, 140, 140),
    (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70),
    (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200),
    (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220),
    (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140),
    (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255),
    (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0), (0, 255, 245),
    (0, 61, 255), (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0),
    (0, 255, 153), (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194), (0, 255, 82),
    (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255), (0, 255, 163), (255, 153, 0),
    (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170),
    (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112),
    (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0),
    (255, 0, 163), (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255), (255, 255, 0),
    (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0), (0, 133, 255), (255, 214, 0),
    (25, 194, 194), (102, 255, 0), (92, 0, 255),
]
# fmt: on

ADE20K_150_CATEGORIES = [
    {"id": i + 1, "name": name.strip(), "color": _COLORS[i], "isthing": int(name.split(",")[0].strip() in _THING_NAMES)}
    for i, name in enumerate(ADE20K_SEM_SEG_CATEGORIES)
]
# The instance track's 100 classes, in the order of their 1-based ids in ADE20K's instance annotations.
ADE20K_INSTANCE_CATEGORIES = [dict(c, id=k + 1) for k, c in enumerate(c for c in ADE20K_150_CATEGORIES if c["isthing"])]
