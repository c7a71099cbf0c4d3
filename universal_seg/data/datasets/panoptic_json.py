"""Loader for COCO-panoptic-format datasets (PNG + JSON), with optional semantic label PNGs."""

import json
import logging
import os

from ._common import images_by_id, unlisted_image

logger = logging.getLogger(__name__)


def load_panoptic_json(json_file, image_dir, panoptic_dir, semantic_dir, metadata, image_ext=".jpg"):
    """Read a COCO panoptic JSON into detectron2 dicts.

    Returns a list of dicts with ``file_name``, ``image_id``, ``height``/``width`` (when the JSON's image
    records have them), ``pan_seg_file_name``, ``sem_seg_file_name`` (when ``semantic_dir`` is given) and
    ``segments_info`` whose ``category_id`` is contiguous and ``isthing`` is set.
    """
    with open(json_file) as f:
        info = json.load(f)
    if not isinstance(info, dict) or not isinstance(info.get("annotations"), list):
        raise ValueError(f"'{json_file}' is not a COCO panoptic JSON (it needs an 'annotations' list).")
    images = images_by_id(info.get("images", []), json_file)
    things = metadata["thing_dataset_id_to_contiguous_id"]
    stuff = metadata["stuff_dataset_id_to_contiguous_id"]
    records, annotated = [], set()
    for i, ann in enumerate(info["annotations"]):
        missing = [k for k in ("image_id", "file_name", "segments_info") if k not in ann]
        if missing:
            raise ValueError(
                f"'{json_file}': annotations[{i}] has no {', '.join(missing)}; COCO panoptic annotations need "
                "image_id, file_name (the PNG) and segments_info."
            )
        if ann["image_id"] in annotated:
            raise ValueError(
                f"'{json_file}': image id {ann['image_id']!r} has more than one annotation (the second: "
                f"{ann['file_name']}); give each image one annotation with all its segments."
            )
        annotated.add(ann["image_id"])
        if images and ann["image_id"] not in images:
            raise unlisted_image(json_file, f"the annotation {ann['file_name']}", ann["image_id"])
        stem = os.path.splitext(ann["file_name"])[0]
        image = images.get(ann["image_id"], {})
        image_file = image.get("file_name", stem + image_ext)
        record = {
            "file_name": os.path.join(image_dir, image_file),  # a file name with folders keeps them
            "image_id": ann["image_id"],
            "pan_seg_file_name": os.path.join(panoptic_dir, ann["file_name"]),
            "segments_info": [_contiguous(s, things, stuff, json_file, ann["file_name"]) for s in ann["segments_info"]],
        }
        if "height" in image:
            record.update(height=image["height"], width=image["width"])
        if semantic_dir:
            record["sem_seg_file_name"] = os.path.join(semantic_dir, ann["file_name"])
        records.append(record)
    if not records:
        raise ValueError(f"'{json_file}' has no annotations; re-run its preparation script.")
    unannotated = [img.get("file_name") for key, img in images.items() if key not in annotated]
    if unannotated:
        logger.warning(
            f"'{json_file}': {len(unannotated)} of {len(images)} images have no annotation and are left out (e.g. "
            f"{', '.join(map(str, unannotated[:3]))})."
        )
    return records


def _contiguous(segment, things, stuff, json_file, png_name=""):
    segment = dict(segment)
    missing = [k for k in ("id", "category_id") if k not in segment]
    if missing:
        raise ValueError(
            f"'{json_file}': a segment of {png_name} has no {' or '.join(missing)}; COCO panoptic segments need id "
            "(the PNG's segment id) and category_id."
        )
    cat = segment["category_id"]
    if cat not in stuff:
        raise ValueError(
            f"'{json_file}' uses category id {cat} (segment {segment.get('id')} of {png_name}), which is not in the "
            f"dataset's category table (ids {sorted(stuff)[:8]}{' ...' if len(stuff) > 8 else ''}); fix the "
            "annotation, or add the category to the JSON's categories."
        )
    segment["isthing"] = cat in things
    segment["category_id"] = things[cat] if cat in things else stuff[cat]
    return segment
