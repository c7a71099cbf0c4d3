"""Prediction files in the standard formats that tools/evaluate.py (and the official libraries) read.

Layout under the output folder, per input image with file stem <stem>:

- ``semantic/<stem>.png``: argmax class ids (contiguous, 0..K-1), uint8 PNG (uint16 for K > 256);
- ``instances/<stem>.json``: that image's COCO results (image_id, dataset category_id, score, bbox XYWH,
  segmentation as compressed RLE), and ``instances.json`` (all images, written by :meth:`finish`);
- ``panoptic/<stem>.png`` (COCO-panoptic RGB ids, R + 256 G + 256^2 B) and ``panoptic/<stem>.json`` (its
  annotation: image_id, file_name, segments_info with dataset category ids), and ``panoptic.json``
  ({"annotations": [...]}, written by :meth:`finish`).

Each file is written to a temporary name and renamed (universal_seg.atomic; the combined files fsync'ed, the
per-image ones not, see ``atomic_open(durable=False)``), so an interrupted run leaves no half-written file; an image
whose files all exist and are not empty is skipped by a restarted run (:meth:`done`). Category ids are converted
from the model's contiguous ids with the metadata's thing / stuff maps exactly as detectron2's COCOEvaluator and
COCOPanopticEvaluator do; instances of classes that are not things have no COCO category and are left out (counted).
"""

import json
import logging
import os
import tempfile

import numpy as np
import pycocotools.mask as mask_util
from detectron2.structures import BoxMode
from PIL import Image

from ..atomic import atomic_open
from .inputs import file_stem

logger = logging.getLogger(__name__)

TASK_OUTPUTS = {"semantic": "sem_seg", "instance": "instances", "panoptic": "panoptic_seg"}


def check_writable(folder: str) -> None:
    """Creates ``folder`` if needed and checks that a file can be written in it (OSError naming it otherwise)."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test_"):
            pass
    except OSError as err:
        raise OSError(
            f"cannot write to output folder {folder!r} ({err.strerror or err}); choose a writable folder."
        ) from err


def default_image_id(path: str):
    """The image id of a file outside a registered dataset: its file stem, an int when it is all digits."""
    stem = file_stem(path)
    return int(stem) if stem.isdigit() else stem


def _write_json(path: str, data, durable: bool = False) -> None:
    with atomic_open(path, "w", durable=durable) as f:
        json.dump(data, f)


def _write_png(path: str, array: np.ndarray) -> None:
    with atomic_open(path, "wb", durable=False) as f:
        Image.fromarray(array).save(f, format="PNG")


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids [H, W] -> COCO-panoptic RGB uint8 [H, W, 3] (id = R + 256 G + 256^2 B)."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def _reverse(mapping) -> dict:
    return {int(v): int(k) for k, v in (mapping or {}).items()}


class PredictionWriter:
    """Writes one image's outputs for ``tasks`` under ``output_dir`` (layout in the module docstring).

    Args:
        output_dir: the folder (created; must be writable).
        tasks: subset of ("semantic", "instance", "panoptic").
        metadata: the dataset's Metadata (thing_dataset_id_to_contiguous_id, stuff_dataset_id_to_contiguous_id)
            for category ids; without these maps the model's contiguous ids are written as they are.
    """

    def __init__(self, output_dir: str, tasks, metadata=None):
        unknown = set(tasks) - set(TASK_OUTPUTS)
        if unknown or not tasks:
            raise ValueError(f"tasks must be a non-empty subset of {sorted(TASK_OUTPUTS)}, got {list(tasks)}.")
        self.output_dir, self.tasks = output_dir, tuple(tasks)
        check_writable(output_dir)
        for task in self.tasks:
            os.makedirs(os.path.join(output_dir, task if task != "instance" else "instances"), exist_ok=True)
        self.thing_to_dataset = _reverse(getattr(metadata, "thing_dataset_id_to_contiguous_id", None))
        self.stuff_to_dataset = _reverse(getattr(metadata, "stuff_dataset_id_to_contiguous_id", None))
        self.dropped_instances = 0

    def files(self, stem: str) -> list[str]:
        """Every file written for the image with file stem ``stem``."""
        out = []
        if "semantic" in self.tasks:
            out.append(os.path.join(self.output_dir, "semantic", stem + ".png"))
        if "instance" in self.tasks:
            out.append(os.path.join(self.output_dir, "instances", stem + ".json"))
        if "panoptic" in self.tasks:
            out += [os.path.join(self.output_dir, "panoptic", stem + e) for e in (".png", ".json")]
        return out

    def done(self, stem: str) -> bool:
        """Whether every file of ``stem`` exists and is not empty (a restarted run skips it; an empty file, which
        an OS crash can leave of a file written just before it, is written again)."""
        return all(os.path.isfile(f) and os.path.getsize(f) > 0 for f in self.files(stem))

    def _thing_category(self, contiguous: int) -> int | None:
        if not self.thing_to_dataset:
            return contiguous
        return self.thing_to_dataset.get(contiguous)

    def write(self, stem: str, image_id, outputs: dict) -> None:
        """Writes the files of one image from the model's outputs for it (at the image's original size)."""
        missing = [TASK_OUTPUTS[t] for t in self.tasks if TASK_OUTPUTS[t] not in outputs]
        if missing:
            raise KeyError(f"the model did not output {missing}; enable those tasks in the config.")
        if "semantic" in self.tasks:
            sem = outputs["sem_seg"]
            labels = sem.argmax(dim=0).cpu().numpy()
            labels = labels.astype(np.uint8 if sem.shape[0] <= 256 else np.uint16)
            _write_png(os.path.join(self.output_dir, "semantic", stem + ".png"), labels)
        if "instance" in self.tasks:
            _write_json(
                os.path.join(self.output_dir, "instances", stem + ".json"), self.coco_results(image_id, outputs)
            )
        if "panoptic" in self.tasks:
            seg, infos = outputs["panoptic_seg"]
            png = os.path.join(self.output_dir, "panoptic", stem + ".png")
            _write_png(png, id_to_rgb(seg.cpu().numpy()))
            segments = []
            for info in infos:
                table = self.thing_to_dataset if info["isthing"] else self.stuff_to_dataset
                category = table[int(info["category_id"])] if table else int(info["category_id"])
                segments.append({"id": int(info["id"]), "category_id": category})
            annotation = {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments}
            _write_json(os.path.join(self.output_dir, "panoptic", stem + ".json"), annotation)

    def coco_results(self, image_id, outputs: dict) -> list[dict]:
        """COCO results of one image: detectron2's instances_to_coco_json format with dataset category ids."""
        instances = outputs["instances"].to("cpu")
        boxes = BoxMode.convert(instances.pred_boxes.tensor.numpy(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS).tolist()
        results = []
        for k in range(len(instances)):
            category = self._thing_category(int(instances.pred_classes[k]))
            if category is None:
                self.dropped_instances += 1
                continue
            mask = np.asarray(instances.pred_masks[k].numpy()[:, :, None], order="F", dtype=np.uint8)
            rle = mask_util.encode(mask)[0]
            rle["counts"] = rle["counts"].decode("utf-8")
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": boxes[k],
                    "score": float(instances.scores[k]),
                    "segmentation": rle,
                }
            )
        return results

    def finish(self, stems: list[str]) -> list[str]:
        """Writes instances.json / panoptic.json (durably) from the per-image files of ``stems``; returns the paths
        written. A per-image file that is missing or unreadable is left out, and counted in a warning."""
        written = []
        if "instance" in self.tasks:
            results = []
            for per_image in self._read_per_image("instances", stems, "instances.json"):
                results.extend(per_image)
            written.append(os.path.join(self.output_dir, "instances.json"))
            _write_json(written[-1], results, durable=True)
            if self.dropped_instances:
                logger.info(
                    "%d instances of classes that are not things (no COCO category) were left out of the results.",
                    self.dropped_instances,
                )
        if "panoptic" in self.tasks:
            annotations = self._read_per_image("panoptic", stems, "panoptic.json")
            written.append(os.path.join(self.output_dir, "panoptic.json"))
            _write_json(written[-1], {"annotations": annotations}, durable=True)
        return written

    def _read_per_image(self, folder: str, stems: list[str], combined: str) -> list:
        """The parsed ``folder``/<stem>.json of every stem that has a readable one; warns with the count of the
        others."""
        out, missing = [], []
        for stem in stems:
            path = os.path.join(self.output_dir, folder, stem + ".json")
            try:
                with open(path) as f:
                    out.append(json.load(f))
            except (OSError, ValueError):  # missing, or cut short by an OS crash
                missing.append(os.path.basename(path))
        if missing:
            logger.warning(
                f"{len(missing)} of {len(stems)} images have no readable {folder}/<stem>.json (e.g. "
                f"{', '.join(missing[:3])}) and are left out of {combined}; delete any that exist and run "
                "tools/predict.py again on the same output to redo them."
            )
        return out
