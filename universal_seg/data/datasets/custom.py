"""Registering your own data: one call per dataset, in COCO instance, COCO panoptic or semantic-folder format.

Each ``register_*`` checks its paths when called (one FileNotFoundError naming the path) and its categories
(unique ids and names); the annotations are read and checked against the categories when the dataset is first
loaded (``DatasetCatalog.get``: training, evaluation, ``tools/check_dataset.py``), each problem one ValueError
naming the file and the fix. Registering a name again replaces it. Example (runnable on the bundled data)::

    from universal_seg.data import register_coco_instances, register_coco_panoptic, register_semantic_folder
    from universal_seg.data.datasets.categories.mini import VOC_CLASS_NAMES

    register_coco_panoptic(
        "voc3_panoptic", image_root="datasets/mini/images", panoptic_root="datasets/mini/panoptic",
        panoptic_json="datasets/mini/panoptic_train.json", semantic_root="datasets/mini/semantic",
    )  # categories (with isthing) from the JSON
    register_coco_instances(
        "voc3_instance", image_root="datasets/mini/images", json_file="datasets/mini/instances_train.json"
    )
    register_semantic_folder(
        "voc3_sem_seg", image_root="datasets/mini/images", label_root="datasets/mini/semantic",
        class_names=VOC_CLASS_NAMES, ignore_label=255,
    )
    # tools/check_dataset.py voc3_panoptic --register this_file.py; train from your own script with
    # DATASETS.TRAIN ("voc3_panoptic",) after these calls (tests/test_own_data.py runs this example)

Folders written by ``datasets/convert_*.py`` carry a ``dataset.json`` manifest; with the folder under
``$DETECTRON2_DATASETS/custom/`` its splits are registered by ``import universal_seg.data`` (no code needed):
``<name>_panoptic_<split>`` (with semantic labels: also ``<name>_panoptic_<split>_with_sem_seg``),
``<name>_instance_<split>`` and ``<name>_sem_seg_<split>``. See :func:`register_manifest`.

Categories: a list of ``{"id": int, "name": str, "isthing": 0/1, "color": [r, g, b]}`` (``isthing`` and
``color`` optional: things by default, colours from a fixed palette), or None to take the JSON's ``categories``.
Contiguous ids (what the model predicts) follow the list's order.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import pycocotools.mask as mask_util
from detectron2.structures import BoxMode

from ._common import (
    images_by_id,
    instance_metadata,
    panoptic_metadata,
    register_checked,
    semantic_metadata,
    unlisted_image,
)
from .panoptic_json import load_panoptic_json

logger = logging.getLogger(__name__)
_HINT = "pass the right path"


def _palette(i: int) -> list[int]:
    """A fixed, well-spread colour for category index i (PASCAL VOC's bit-interleaved palette)."""
    r = g = b = 0
    c = i + 1
    for j in range(8):
        r |= ((c >> 0) & 1) << (7 - j)
        g |= ((c >> 1) & 1) << (7 - j)
        b |= ((c >> 2) & 1) << (7 - j)
        c >>= 3
    return [r, g, b]


def _check_exists(name: str, **paths) -> None:
    for what, path in paths.items():
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(f"register '{name}': {what} '{path}' does not exist; {_HINT}.")


def normalise_categories(name: str, categories, default_isthing: int = 1) -> list[dict]:
    """Checked copies of ``categories`` with ``isthing`` and ``color`` filled in (see the module docstring)."""
    if not categories:
        raise ValueError(f"register '{name}': the category list is empty; give at least one category.")
    out = []
    for i, c in enumerate(categories):
        if "id" not in c or "name" not in c:
            raise ValueError(f"register '{name}': category {c} needs an 'id' and a 'name'.")
        out.append(
            {
                "id": int(c["id"]),
                "name": str(c["name"]),
                "isthing": int(c.get("isthing", default_isthing)),
                "color": list(c.get("color") or _palette(i)),
            }
        )
    for key in ("id", "name"):
        values = [c[key] for c in out]
        dupes = sorted({v for v in values if values.count(v) > 1}, key=str)
        if dupes:
            raise ValueError(f"register '{name}': category {key}s {dupes} appear more than once; make them unique.")
    return out


def _json_categories(name: str, json_file: str) -> list[dict]:
    with open(json_file) as f:
        data = json.load(f)
    if "categories" not in data:
        raise ValueError(f"register '{name}': '{json_file}' has no 'categories'; pass categories=[...].")
    return data["categories"]


_IMAGE_FIELDS = ("id", "file_name", "height", "width")
_ANNOTATION_FIELDS = ("id", "image_id", "category_id", "bbox", "segmentation")


def check_coco_instance_json(data, json_file: str) -> None:
    """ValueError naming the first problem of a COCO instance JSON that detectron2's reader turns into a bare
    KeyError or AssertionError, drops silently, or lets through to crash training: a missing field, an image id
    or annotation id used twice, an annotation of an image that is not listed, an object without a mask."""
    where = f"'{json_file}'"
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise ValueError(f"{where} is not a COCO instance JSON (it needs 'images' and 'annotations' lists).")
    for i, image in enumerate(data["images"]):
        missing = [k for k in _IMAGE_FIELDS if k not in image]
        if missing:
            raise ValueError(
                f"{where}: images[{i}] has no {', '.join(missing)}; COCO images need {', '.join(_IMAGE_FIELDS)}."
            )
    images = images_by_id(data["images"], json_file)
    seen = set()
    for i, ann in enumerate(data["annotations"]):
        missing = [k for k in _ANNOTATION_FIELDS if k not in ann]
        name = f"annotation {ann.get('id', f'[{i}]')}"
        if missing:
            raise ValueError(
                f"{where}: {name} has no {', '.join(missing)}; COCO instance annotations need "
                f"{', '.join(_ANNOTATION_FIELDS)} (a polygon or RLE mask: the models segment)."
            )
        if ann["id"] in seen:
            raise ValueError(f"{where}: annotation id {ann['id']!r} is used more than once; give each its own id.")
        seen.add(ann["id"])
        if ann["image_id"] not in images:
            raise unlisted_image(json_file, name, ann["image_id"])
        of_image = f"{name} of image '{images[ann['image_id']]['file_name']}'"
        segm = ann["segmentation"]
        if not segm:
            raise ValueError(
                f"{where}: {of_image} has an empty segmentation; give the object its polygon or RLE mask, or remove "
                "the annotation."
            )
        if isinstance(segm, dict) and not ("counts" in segm and "size" in segm):
            raise ValueError(
                f"{where}: {of_image} has an RLE segmentation without 'counts' and 'size'; give both "
                "(pycocotools.mask.encode writes them)."
            )
        if not isinstance(segm, dict) and not (isinstance(segm, list) and all(isinstance(p, list) for p in segm)):
            raise ValueError(
                f"{where}: {of_image} has a segmentation that is neither an RLE dict nor a list of polygons; write "
                "each polygon as a list [x1, y1, x2, y2, ...] inside the segmentation list."
            )
        if not ann["bbox"]:
            raise ValueError(f"{where}: {of_image} has an empty bbox; give its box as [x, y, width, height].")
        if ann.get("ignore", 0) != 0:
            raise ValueError(
                f"{where}: {of_image} has 'ignore' {ann['ignore']!r}, which is not supported; mark such regions "
                "iscrowd 1 (not trained on, not scored) and remove 'ignore'."
            )


_COPIED_KEYS = ("iscrowd", "bbox", "keypoints", "category_id")


def coco_instance_records(data: dict, image_root: str, json_file: str) -> list[dict]:
    """The records detectron2's ``load_coco_json(json_file, image_root)`` gives, built from ``data`` (the parsed JSON,
    checked by :func:`check_coco_instance_json`) instead of a second parse: images sorted by id, each with its
    annotations in file order; ``iscrowd``, ``bbox``, ``keypoints`` and ``category_id`` as given (dataset ids), box
    mode XYWH_ABS, uncompressed RLE compressed, polygons of fewer than 3 points or odd length left out and an object
    left with none dropped (counted in one warning), keypoint x and y shifted by 0.5 (pixel centres)."""
    by_image: dict = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    try:
        images = sorted(data["images"], key=lambda image: image["id"])
    except TypeError:
        raise ValueError(
            f"'{json_file}': its image ids mix types (e.g. numbers and strings); give every image an integer id."
        ) from None
    records, dropped = [], 0
    for image in images:
        objs = []
        for ann in by_image.get(image["id"], ()):
            obj = {key: ann[key] for key in _COPIED_KEYS if key in ann}
            segm = ann["segmentation"]
            if isinstance(segm, dict):
                if isinstance(segm["counts"], list):
                    segm = mask_util.frPyObjects(segm, *segm["size"])
            else:
                segm = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]
                if not segm:
                    dropped += 1
                    continue
            obj["segmentation"] = segm
            if ann.get("keypoints"):
                obj["keypoints"] = [v if i % 3 == 2 else v + 0.5 for i, v in enumerate(ann["keypoints"])]
            obj["bbox_mode"] = BoxMode.XYWH_ABS
            objs.append(obj)
        records.append(
            {
                "file_name": os.path.join(image_root, image["file_name"]),
                "height": image["height"],
                "width": image["width"],
                "image_id": image["id"],
                "annotations": objs,
            }
        )
    if dropped:
        logger.warning(
            f"'{json_file}': {dropped} annotations have no polygon of 3 or more points (an even number of "
            "coordinates) and are left out; fix or remove them."
        )
    logger.info(f"Loaded {len(records)} images in COCO format from '{json_file}'.")
    return records


def load_coco_instances_checked(json_file: str, image_root: str, id_map: dict[int, int]) -> list[dict]:
    """The JSON parsed once, checked by :func:`check_coco_instance_json` and turned into detectron2's records by
    :func:`coco_instance_records`; then every annotation's category id mapped to its contiguous id; an id outside
    ``id_map`` (the registered categories) is a ValueError naming the file."""
    with open(json_file, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"'{json_file}' is not valid JSON ({err}); fix the file or export it again.") from None
    check_coco_instance_json(data, json_file)
    records = coco_instance_records(data, image_root, json_file)
    del data  # what the records do not use (areas, extra fields) goes now
    if not records:
        raise ValueError(f"'{json_file}' has no images; check the file.")
    for record in records:
        for ann in record["annotations"]:
            if ann["category_id"] not in id_map:
                raise ValueError(
                    f"'{json_file}': image '{os.path.basename(record['file_name'])}' has an annotation of category "
                    f"id {ann['category_id']}, which is not among the registered categories {sorted(id_map)}; add "
                    "it to the categories or fix the annotation."
                )
            ann["category_id"] = id_map[ann["category_id"]]
    return records


def register_coco_instances(name: str, *, image_root: str, json_file: str, categories=None) -> None:
    """Register a COCO instance-segmentation dataset (``json_file`` with polygons or RLE, images under
    ``image_root``) as ``name``; evaluated with COCO mask AP. ``categories``: see the module docstring (all
    things)."""
    _check_exists(name, image_root=image_root, json_file=json_file)
    cats = normalise_categories(name, categories if categories is not None else _json_categories(name, json_file))
    for c in cats:
        c["isthing"] = 1
    meta = instance_metadata(cats)
    register_checked(
        name,
        lambda: load_coco_instances_checked(json_file, image_root, meta["thing_dataset_id_to_contiguous_id"]),
        [json_file, image_root],
        _HINT,
        image_root=image_root,
        json_file=json_file,
        evaluator_type="coco",
        **meta,
    )


def register_coco_panoptic(
    name: str,
    *,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    categories=None,
    semantic_root: str | None = None,
    instances_json: str | None = None,
) -> None:
    """Register a COCO-panoptic dataset (PNGs under ``panoptic_root`` + ``panoptic_json``) as ``name``; evaluated
    with PQ, plus mIoU when ``semantic_root`` (label PNGs named as the panoptic PNGs, value = contiguous id, 255
    ignore) is given, plus mask AP when ``instances_json`` (COCO instances of the things) is given. Categories
    need ``isthing`` (default: from the JSON)."""
    _check_exists(
        name,
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        semantic_root=semantic_root,
        instances_json=instances_json,
    )
    given = categories if categories is not None else _json_categories(name, panoptic_json)
    unmarked = [c.get("name", c.get("id")) for c in given if isinstance(c, dict) and "isthing" not in c]
    if unmarked:
        logger.warning(
            f"register '{name}': {len(unmarked)} of {len(given)} categories have no 'isthing' and are treated as "
            f"things (e.g. {', '.join(map(str, unmarked[:3]))}); give stuff categories isthing 0."
        )
    cats = normalise_categories(name, given)
    meta = panoptic_metadata(cats)
    extra = {"sem_seg_root": semantic_root} if semantic_root else {}
    if instances_json:
        extra["json_file"] = instances_json
    register_checked(
        name,
        lambda: load_panoptic_json(panoptic_json, image_root, panoptic_root, semantic_root, meta),
        [panoptic_json, panoptic_root, image_root] + ([semantic_root] if semantic_root else []),
        _HINT,
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        evaluator_type="coco_panoptic_seg",
        **extra,
        **meta,
    )


def load_semantic_folder(image_root: str, label_root: str, image_ext: str, label_ext: str) -> list[dict]:
    """Pairs ``image_root/<stem><image_ext>`` with ``label_root/<stem><label_ext>`` (sorted by stem); an image
    without a label or a label without an image is a ValueError naming them."""
    images = {os.path.splitext(f)[0] for f in os.listdir(image_root) if f.endswith(image_ext)}
    labels = {os.path.splitext(f)[0] for f in os.listdir(label_root) if f.endswith(label_ext)}
    for missing, have, where in ((images - labels, image_root, label_root), (labels - images, label_root, image_root)):
        if missing:
            examples = ", ".join(sorted(missing)[:5])
            raise ValueError(
                f"{len(missing)} files of '{have}' have no counterpart in '{where}' (e.g. {examples}); pair every "
                f"image{image_ext} with a label{label_ext} of the same name."
            )
    if not images:
        raise ValueError(f"'{image_root}' holds no '*{image_ext}' images; check image_root and image_ext.")
    return [
        {
            "file_name": os.path.join(image_root, stem + image_ext),
            "sem_seg_file_name": os.path.join(label_root, stem + label_ext),
            "image_id": stem,
        }
        for stem in sorted(images)
    ]


def register_semantic_folder(
    name: str,
    *,
    image_root: str,
    label_root: str,
    class_names: list[str],
    ignore_label: int = 255,
    image_ext: str = ".jpg",
    label_ext: str = ".png",
) -> None:
    """Register a semantic-segmentation dataset as ``name``: images ``image_root/<stem><image_ext>``, label PNGs
    ``label_root/<stem><label_ext>`` whose pixel value is the class index into ``class_names`` (0..K-1) or
    ``ignore_label`` (not trained on, not evaluated); evaluated with mIoU."""
    _check_exists(name, image_root=image_root, label_root=label_root)
    cats = normalise_categories(name, [{"id": i, "name": n} for i, n in enumerate(class_names)])
    if 0 <= ignore_label < len(cats):
        raise ValueError(
            f"register '{name}': ignore_label {ignore_label} is the value of class '{cats[ignore_label]['name']}'; "
            f"pick a value outside 0..{len(cats) - 1} (usually 255)."
        )
    register_checked(
        name,
        lambda: load_semantic_folder(image_root, label_root, image_ext, label_ext),
        [image_root, label_root],
        _HINT,
        image_root=image_root,
        sem_seg_root=label_root,
        evaluator_type="sem_seg",
        **semantic_metadata(cats, ignore_label),
    )


MANIFEST = "dataset.json"


def register_manifest(folder: str) -> list[str]:
    """Register the splits of a converted dataset folder from its ``dataset.json`` (written by
    ``datasets/convert_*.py``): ``{"name", "categories", "ignore_label", "splits": {split: {"images",
    "panoptic_root", "panoptic_json", "semantic_root", "instances_json"}}}`` (paths relative to ``folder``; a
    missing entry skips that format). Returns the registered names."""
    with open(os.path.join(folder, MANIFEST)) as f:
        manifest = json.load(f)
    base, cats, names = manifest["name"], manifest["categories"], []

    def path(split: dict, key: str):
        return os.path.join(folder, split[key]) if split.get(key) else None

    for split_name, split in manifest["splits"].items():
        images, semantic_root = path(split, "images"), path(split, "semantic_root")
        if split.get("panoptic_json"):
            for suffix, sem in (("", None), ("_with_sem_seg", semantic_root)):
                if suffix and not sem:
                    continue
                names.append(f"{base}_panoptic_{split_name}{suffix}")
                register_coco_panoptic(
                    names[-1],
                    image_root=images,
                    panoptic_root=path(split, "panoptic_root"),
                    panoptic_json=path(split, "panoptic_json"),
                    categories=cats,
                    semantic_root=sem,
                    instances_json=path(split, "instances_json"),
                )
        if split.get("instances_json") and any(c["isthing"] for c in cats):
            names.append(f"{base}_instance_{split_name}")
            register_coco_instances(
                names[-1],
                image_root=images,
                json_file=path(split, "instances_json"),
                categories=[c for c in cats if c["isthing"]],
            )
        if semantic_root:
            names.append(f"{base}_sem_seg_{split_name}")
            register_checked(
                names[-1],
                functools.partial(_semantic_records, path(split, "panoptic_json"), images, semantic_root),
                [semantic_root, images],
                f"re-run the converter that wrote {folder}",
                image_root=images,
                sem_seg_root=semantic_root,
                evaluator_type="sem_seg",
                **semantic_metadata(normalise_categories(base, cats), manifest.get("ignore_label", 255)),
            )
    return names


def _semantic_records(panoptic_json: str, image_root: str, semantic_root: str) -> list[dict]:
    """Semantic records of a converted split: its images (from the split's JSON) and their label PNGs."""
    with open(panoptic_json) as f:
        data = json.load(f)
    return [
        {
            "file_name": os.path.join(image_root, img["file_name"]),
            "sem_seg_file_name": os.path.join(semantic_root, os.path.splitext(img["file_name"])[0] + ".png"),
            "image_id": img["id"],
            "height": img["height"],
            "width": img["width"],
        }
        for img in data["images"]
    ]


def register_all_custom(root: str) -> list[str]:
    """Register every converted dataset folder ``root/custom/<folder>/`` that holds a ``dataset.json`` (reads the
    directory listing and the small manifests; annotations are read when a dataset is used). A folder whose
    manifest cannot be registered is reported in one warning naming it and the reason, and skipped."""
    custom = os.path.join(root, "custom")
    if not os.path.isdir(custom):
        return []
    names = []
    for entry in sorted(os.listdir(custom)):
        folder = os.path.join(custom, entry)
        if os.path.isfile(os.path.join(folder, MANIFEST)):
            try:
                names += register_manifest(folder)
            except (OSError, ValueError, KeyError, TypeError) as err:
                logger.warning("Not registering '%s' (%s: %s); re-run its converter.", folder, type(err).__name__, err)
    return names


def add_register_argument(parser) -> None:
    """The tools' ``--register FILE`` option (repeatable); run the files with :func:`run_registration_files`."""
    parser.add_argument(
        "--register",
        action="append",
        default=[],
        metavar="FILE",
        help="Python file with your register_* calls (universal_seg.data), run first: its dataset names can then be "
        "used in the config and on the command line",
    )


def run_registration_files(paths) -> None:
    """Runs each Python file of ``paths`` (your ``register_*`` calls; the tools' ``--register FILE``) once, in
    order. Raises ValueError naming a file that does not exist or that raises (with its error)."""
    import runpy

    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"--register {path!r} does not exist; give the Python file with your register_* calls.")
        try:
            runpy.run_path(path, run_name="__register__")
        except Exception as err:  # noqa: BLE001 - whatever the user's file raises, named in one line
            message = " ".join(str(err).split())
            raise ValueError(f"--register {path!r} failed: {type(err).__name__}: {message}") from err
