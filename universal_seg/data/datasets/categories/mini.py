"""Classes of the bundled mini dataset (labelme's PASCAL VOC examples).

Panoptic and semantic: 21 classes, contiguous id = VOC label value; ``background`` (VOC 0) is a stuff class
and the 20 VOC object classes are things. Panoptic category ids equal the VOC label values (0-20).
Instance: the 20 things, with COCO category ids 1-20 (labelme's own ids) and contiguous ids 0-19.
Video clip: background, car, track (labelme's video example; label values 0-2).
"""

# fmt: off
VOC_CLASS_NAMES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv/monitor",
]
_VOC_COLORS = [
    (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128),
    (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0), (64, 0, 128), (192, 0, 128),
    (64, 128, 128), (192, 128, 128), (0, 64, 0), (128, 64, 0), (0, 192, 0), (128, 192, 0), (0, 64, 128),
]
# fmt: on
MINI_CATEGORIES = [
    {"id": i, "name": name, "color": _VOC_COLORS[i], "isthing": int(i > 0)} for i, name in enumerate(VOC_CLASS_NAMES)
]
MINI_VIDEO_CLASS_NAMES = ["background", "car", "track"]
