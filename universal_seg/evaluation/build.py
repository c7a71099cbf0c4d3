"""Inference-time evaluators chosen by a dataset's metadata ``evaluator_type``."""

import functools
import itertools
import json
import logging
import os
from collections import OrderedDict

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)
from detectron2.evaluation.panoptic_evaluation import _print_panoptic_results
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from PIL import Image

from ..data.mappers.image_io import check_same_size, check_semantic_label
from ..modeling.meta_arch import output_tasks
from .coco import FastCOCOEvaluator
from .instance_evaluator import InstanceSegEvaluator
from .panoptic_quality import pq_compute

logger = logging.getLogger(__name__)


class CheckedSemSegEvaluator(SemSegEvaluator):
    """detectron2's SemSegEvaluator (same metrics) that first checks each ground-truth label against its
    prediction: a label of another size, with colour channels, or holding ids outside the classes and the ignore
    label raises AnnotationError naming the file (detectron2 fails with a broadcast error, or silently counts the
    stray ids)."""

    def process(self, inputs, outputs):
        for input, output in zip(inputs, outputs):
            path = self.input_file_to_gt_file[input["file_name"]]
            with PathManager.open(path, "rb") as f:
                label = np.asarray(Image.open(f)).astype(np.int64)
            check_semantic_label(label, path, self._num_classes, self._ignore_label)
            check_same_size(tuple(output["sem_seg"].shape[-2:]), label, path)
        super().process(inputs, outputs)


class PanopticEvaluator(COCOPanopticEvaluator):
    """detectron2's COCOPanopticEvaluator (same inputs, PNG encoding and result keys) with PQ computed by
    :func:`universal_seg.evaluation.panoptic_quality.pq_compute`: panopticapi's numbers, the prediction PNGs
    matched from memory in ``workers`` processes (default: the CPUs this process may use). It can leave images out
    (``exclude``, e.g. unreadable images): their ground truth is dropped, which panopticapi otherwise refuses as
    an image without a prediction."""

    def __init__(self, dataset_name, output_dir=None, workers=None):
        super().__init__(dataset_name, output_dir)
        self._workers = workers

    def reset(self):
        super().reset()
        self.excluded: set = set()

    def exclude(self, image_ids) -> None:
        """Leaves ``image_ids`` (e.g. unreadable images) out of the evaluation."""
        self.excluded.update(image_ids)

    def evaluate(self):
        # every process calls evaluate (it gathers the predictions): gather the exclusions the same way
        excluded = set().union(*comm.all_gather(self.excluded)) if comm.get_world_size() > 1 else self.excluded
        comm.synchronize()
        predictions = list(itertools.chain(*comm.gather(self._predictions)))
        if not comm.is_main_process():
            return None
        with PathManager.open(self._metadata.panoptic_json) as f:
            gt = json.load(f)
        gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] not in excluded]
        gt["images"] = [i for i in gt["images"] if i["id"] not in excluded]
        if self._output_dir:  # detectron2 writes the predictions' JSON (not their PNGs) there
            listed = [{k: v for k, v in p.items() if k != "png_string"} for p in predictions]
            with PathManager.open(os.path.join(self._output_dir, "predictions.json"), "w") as f:
                json.dump(dict(gt, annotations=listed), f)
        gt_folder = PathManager.get_local_path(self._metadata.panoptic_root)
        pq_res = pq_compute(gt, {"annotations": predictions}, gt_folder, None, workers=self._workers)
        res = {}
        for key, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            for metric in ("pq", "sq", "rq"):
                res[metric.upper() + suffix] = 100 * pq_res[key][metric]
        _print_panoptic_results(pq_res)
        return OrderedDict({"panoptic_seg": res})


def exclude_images(evaluator, image_ids) -> None:
    """Tells ``evaluator`` (or each of a DatasetEvaluators) that ``image_ids`` were not evaluated, where it needs to
    know (PanopticEvaluator); the others only see the images they process anyway."""
    for ev in getattr(evaluator, "_evaluators", [evaluator]):
        if hasattr(ev, "exclude"):
            ev.exclude(image_ids)


_PANOPTIC_TYPES = ("coco_panoptic_seg", "ade20k_panoptic_seg", "mapillary_vistas_panoptic_seg")


def _coco_instance_evaluator(name, meta, output_folder):
    """COCO AP: FastCOCOEvaluator when the thing classes are the contiguous ids 0..T-1, else InstanceSegEvaluator
    (things in a larger id space shared with stuff)."""
    ids = sorted(meta.thing_dataset_id_to_contiguous_id.values())
    cls = FastCOCOEvaluator if ids == list(range(len(ids))) else InstanceSegEvaluator
    return cls(name, output_dir=output_folder)


def _panoptic_evaluators(cfg, name, meta, output_folder):
    evaluators = []
    if "panoptic" in output_tasks(cfg):
        evaluators.append(PanopticEvaluator(name, output_folder))
    if "semantic" in output_tasks(cfg) and meta.get("sem_seg_root", None):
        evaluators.append(CheckedSemSegEvaluator(name, distributed=True, output_dir=output_folder))
    if "instance" in output_tasks(cfg) and meta.get("json_file", None):
        evaluators.append(_coco_instance_evaluator(name, meta, output_folder))
    return evaluators


def _cityscapes_evaluators(cfg, name, etype, output_folder):
    evaluators = []
    if etype == "cityscapes_instance" or (etype == "cityscapes_panoptic_seg" and "instance" in output_tasks(cfg)):
        evaluators.append(CityscapesInstanceEvaluator(name))
    if etype == "cityscapes_sem_seg" or (etype == "cityscapes_panoptic_seg" and "semantic" in output_tasks(cfg)):
        evaluators.append(CityscapesSemSegEvaluator(name))
    if etype == "cityscapes_panoptic_seg" and "panoptic" in output_tasks(cfg):
        evaluators.append(PanopticEvaluator(name, output_folder))
    return evaluators


@functools.lru_cache(maxsize=16)
def _held_out_notice(dataset_name: str, train_names: tuple) -> str:
    return held_out_notice(dataset_name, train_names)


def held_out_notice(dataset_name: str, train_names) -> str:
    """One plain sentence saying whether the images of ``dataset_name`` were trained on (DATASETS.TRAIN
    ``train_names``): all (training-set metrics), some, or none (held out). Compares image files (real paths);
    build_evaluator computes it once per process and dataset pair."""

    def files(name):
        return {os.path.realpath(r["file_name"]) for r in DatasetCatalog.get(name)}

    test = files(dataset_name)
    train = set().union(*(files(n) for n in train_names)) if train_names else set()
    shared = len(test & train)
    if shared == len(test):
        return (
            f"The metrics of '{dataset_name}' are TRAINING-SET metrics: all {len(test)} of its images are in "
            f"DATASETS.TRAIN {tuple(train_names)}; they do not measure generalisation."
        )
    if shared:
        return (
            f"The metrics of '{dataset_name}' mix training and held-out images: {shared} of its {len(test)} images "
            f"are in DATASETS.TRAIN {tuple(train_names)}."
        )
    return (
        f"The metrics of '{dataset_name}' are on held-out images: none of its {len(test)} images is in "
        f"DATASETS.TRAIN {tuple(train_names)}."
    )


def build_evaluator(cfg, dataset_name, output_folder=None):
    """The evaluator(s) for ``dataset_name`` from its metadata ``evaluator_type``:

    sem_seg -> CheckedSemSegEvaluator; coco -> FastCOCOEvaluator (faster-coco-eval; InstanceSegEvaluator when
    thing ids are not 0..T-1); coco/ade20k/mapillary panoptic -> PanopticEvaluator, + CheckedSemSegEvaluator (with
    a ``sem_seg_root``), + COCO AP (with a ``json_file``), each for a task the model outputs
    (meta_arch.output_tasks); cityscapes_* -> the Cityscapes evaluators. Returns one evaluator or a
    DatasetEvaluators.
    """
    meta = MetadataCatalog.get(dataset_name)
    etype = meta.get("evaluator_type", None)
    if cfg.DATASETS.TRAIN:
        try:
            notice = _held_out_notice(dataset_name, tuple(cfg.DATASETS.TRAIN))
        except (OSError, ValueError, KeyError) as err:  # the evaluation itself reports unloadable data
            notice = f"Could not compare the images of '{dataset_name}' with DATASETS.TRAIN ({err})."
        (logger.info if "held-out images" in notice else logger.warning)(notice)
    if etype == "sem_seg":
        evaluators = [CheckedSemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)]
    elif etype == "coco":
        evaluators = [_coco_instance_evaluator(dataset_name, meta, output_folder)]
    elif etype in _PANOPTIC_TYPES:
        evaluators = _panoptic_evaluators(cfg, dataset_name, meta, output_folder)
    elif etype is not None and etype.startswith("cityscapes"):
        evaluators = _cityscapes_evaluators(cfg, dataset_name, etype, output_folder)
    else:
        raise NotImplementedError(
            f"Dataset '{dataset_name}' has evaluator_type={etype!r}, for which there is no "
            "evaluator; set its metadata evaluator_type (see universal_seg/data/datasets)."
        )
    if not evaluators:
        raise ValueError(
            f"No evaluator enabled for '{dataset_name}'; enable one of "
            "the model's outputs (meta_arch.enable_output_task; for Mask2Former "
            "MODEL.MASK_FORMER.TEST.{PANOPTIC,SEMANTIC,INSTANCE}_ON)."
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
