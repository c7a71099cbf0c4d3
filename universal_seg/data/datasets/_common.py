"""Helpers shared by the registration modules: lazy existence checks, category-table metadata and the COCO JSON
image-id checks."""

import functools
import os

from detectron2.data import DatasetCatalog, MetadataCatalog


def dataset_root():
    """The datasets root: $DETECTRON2_DATASETS, default ``./datasets`` (read at registration, never listed)."""
    return os.getenv("DETECTRON2_DATASETS", "datasets")


def check_paths(name, paths, how):
    """Raise one FileNotFoundError naming the first missing path of dataset ``name`` and how to get it.

    ``paths`` holds paths, each got as ``how`` says (a clause such as :func:`made_by`'s), or ``(path, how)`` pairs
    for those got another way (e.g. a download, while the rest are made from it by a script)."""
    for entry in paths:
        path, path_how = entry if isinstance(entry, tuple) else (entry, how)
        if path and not os.path.exists(path):
            raise FileNotFoundError(f"Dataset '{name}' needs '{path}', which does not exist; {path_how}.")


def made_by(script: str) -> str:
    """How a built-in dataset's derived file is made: ``script`` (a datasets/ file) on the root."""
    return f"make it with `python datasets/{script}` (layouts in datasets/README.md) or {_SET_ROOT}"


def downloaded(what: str, where: str = "") -> str:
    """How a built-in dataset's released files are got: download ``what`` and unpack it into the root's
    ``where``."""
    return f"download {what} and unpack it into $DETECTRON2_DATASETS{'/' + where if where else ''}, or {_SET_ROOT}"


_SET_ROOT = "set $DETECTRON2_DATASETS to the folder that holds it"


def images_by_id(images, json_file: str) -> dict:
    """{id: entry} of a COCO JSON's ``images`` list; ValueError naming both files when an id is used twice."""
    out = {}
    for image in images:
        key = image.get("id")
        if key in out:
            raise ValueError(
                f"'{json_file}': image id {key!r} is used by both '{out[key].get('file_name')}' and "
                f"'{image.get('file_name')}'; give every image its own id."
            )
        out[key] = image
    return out


def unlisted_image(json_file: str, annotation: str, image_id) -> ValueError:
    """The error for ``annotation`` (how to name it) of an image id that the JSON's ``images`` does not list."""
    return ValueError(
        f"'{json_file}': {annotation} belongs to image id {image_id!r}, which 'images' does not list; add the image "
        "or remove the annotation."
    )


def _checked_call(name, paths, how, loader):
    check_paths(name, paths, how)
    return loader()


def register_checked(name, loader, paths, how, **metadata):
    """Register ``loader`` (a no-argument callable) as ``name``; existence of ``paths`` is checked when it is
    called (``DatasetCatalog.get``), never at import (``paths`` and ``how`` as in :func:`check_paths`). Replaces an
    existing registration (e.g. detectron2's)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, functools.partial(_checked_call, name, list(paths), how, loader))
    MetadataCatalog.get(name).set(**metadata)


def semantic_metadata(categories, ignore_label=255):
    """Metadata of a semantic dataset whose label value i is the i-th category (``stuff_*`` keys)."""
    return dict(
        stuff_classes=[c["name"] for c in categories],
        stuff_colors=[tuple(c["color"]) for c in categories],
        stuff_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(categories)},
        ignore_label=ignore_label,
    )


def panoptic_metadata(categories):
    """Mask2Former's panoptic convention: one contiguous space over all classes; ``thing_*`` lists the things
    (with ids into that space), ``stuff_*`` lists every class (so semantic evaluation covers all of them)."""
    things = [c for c in categories if c["isthing"]]
    return dict(
        thing_classes=[c["name"] for c in things],
        thing_colors=[tuple(c["color"]) for c in things],
        thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(categories) if c["isthing"]},
        stuff_classes=[c["name"] for c in categories],
        stuff_colors=[tuple(c["color"]) for c in categories],
        stuff_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(categories)},
        ignore_label=255,
        label_divisor=1000,
    )


def instance_metadata(categories):
    """Metadata of a COCO-format instance dataset over the thing categories."""
    things = [c for c in categories if c["isthing"]]
    return dict(
        thing_classes=[c["name"] for c in things],
        thing_colors=[tuple(c["color"]) for c in things],
        thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(things)},
    )
