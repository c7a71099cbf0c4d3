"""ADE20K SceneParsing-150 categories (semantic, panoptic and the 100-class instance subset).

``id`` is the 1-based label value of ADEChallengeData2016/annotations (0 = "other", ignored);
``isthing`` marks the 100 classes of the ADE20K instance track. Colours are the usual ADE20K palette.
"""

from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

# fmt: off
# 1-based SceneParsing label values of the 100 classes of the ADE20K instance track, in instance-id order
# (instance class k is the k-th entry): the "SceneParse150" column of Mask2Former's
# datasets/ade20k_instance_catid_mapping.txt, which its ADE20K panoptic/instance preparation and its isthing flags
# use. Verified there: "stairs" (54) is a thing and "blanket, cover" (132) is stuff (the earlier name-based list had
# these two swapped).
ADE20K_INSTANCE_TO_SEMANTIC_ID = [
    8, 9, 11, 13, 15, 16, 19, 20, 21, 23, 24, 25, 28, 31, 32, 33, 34, 36, 37, 38, 39, 40, 42, 43, 44, 45, 46, 48,
    50, 51, 54, 56, 57, 58, 59, 63, 65, 66, 67, 68, 70, 71, 72, 73, 74, 75, 76, 77, 79, 81, 82, 83, 84, 86, 87, 88,
    89, 90, 91, 93, 94, 96, 98, 99, 103, 104, 105, 108, 109, 111, 112, 113, 116, 117, 119, 120, 121, 122, 124, 125,
    126, 127, 128, 130, 131, 133, 134, 135, 136, 137, 138, 139, 140, 143, 144, 145, 147, 148, 149, 150,
]
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
    {"id": i + 1, "name": name.strip(), "color": _COLORS[i], "isthing": int(i + 1 in ADE20K_INSTANCE_TO_SEMANTIC_ID)}
    for i, name in enumerate(ADE20K_SEM_SEG_CATEGORIES)
]
# The instance track's 100 classes (instance class k, the R channel of annotations_instance, is the k-th entry).
# ``id`` stays the semantic ADE label (1-150), as in Mask2Former: the panoptic dataset evaluates instance AP against
# the same JSON after mapping predictions to semantic ids, so both must use them.
ADE20K_INSTANCE_CATEGORIES = [ADE20K_150_CATEGORIES[sem_id - 1] for sem_id in ADE20K_INSTANCE_TO_SEMANTIC_ID]
