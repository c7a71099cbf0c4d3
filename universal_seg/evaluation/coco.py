"""COCO box and mask AP through faster-coco-eval's compiled evaluator, with pycocotools' numbers.

pycocotools matches detections to ground truth and accumulates precision in Python loops; faster-coco-eval
(pinned in requirements.txt) does both in C++ with the same rules (stable score sort, crowd IoU, area ranges,
max detections), so the 12 summary statistics and the precision array [T, R, K, A, M] are equal to
pycocotools' (``tests/test_fast_evaluation.py`` checks all of them to 1e-9 on a generated set). detectron2's own
C++ path (``use_fast_impl=True``) needs ``detectron2._C``, which our pure-Python detectron2 build does not have.

``FastCOCOEvaluator`` is detectron2's COCOEvaluator with only the AP computation replaced (subclassed, nothing
patched): the same inputs, the same ``coco_instances_results.json``, the same result keys (per-category AP too).
"""

import copy
import itertools
import json
import os

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from detectron2.utils.file_io import PathManager
from faster_coco_eval import COCO as FastCOCO
from faster_coco_eval import COCOeval_faster


def _quiet(*args, **kwargs):
    """faster-coco-eval prints its progress and summary table through this; detectron2 logs its own table."""


def fast_coco_api(dataset: dict) -> FastCOCO:
    """A faster-coco-eval COCO index of a COCO ground-truth dict. Evaluation adds fields ("ignore", "rle") to the
    annotations, so they (and the image entries) are copied one level deep: the caller's dict, e.g. pycocotools'
    ``COCO.dataset``, stays as it was. (faster-coco-eval's ``use_deepcopy`` would also deep-copy every result
    list given to ``loadRes``, which costs more than the evaluation.)"""
    data = dict(dataset)
    for key in ("images", "annotations"):
        if key in data:
            data[key] = [dict(entry) for entry in data[key]]
    return FastCOCO(data, use_deepcopy=False, print_function=_quiet)


def evaluate_coco(coco_gt: FastCOCO, results: list, iou_type: str, img_ids=None, max_dets_per_image=None):
    """COCO evaluation of ``results`` (a list of COCO result dicts; not modified) against ``coco_gt``.

    Args:
        iou_type: "segm" or "bbox". For "segm" each result's "bbox" is dropped first, so that a detection's area
            (which decides its area range) is its mask area, as in detectron2's COCOEvaluator; for "bbox" the
            "segmentation" is dropped, so that the box is used.
        img_ids: evaluate only these images (default: all of the ground truth).
        max_dets_per_image: the 3 maxDets (default [1, 10, 100]); the AP statistics use the last, like
            detectron2's COCOevalMaxDets.

    An empty ``results`` is evaluated too (faster-coco-eval loads it; pycocotools' loadRes cannot): 0 for every
    statistic whose area range has ground truth, -1 for the others.

    Returns:
        the evaluator after evaluate / accumulate / summarize: ``stats`` (12 numbers, pycocotools' order: AP,
        AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl), ``eval["precision"]`` [T, R, K, A, M] and
        ``eval["recall"]`` [T, K, A, M].
    """
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"evaluate_coco computes 'segm' or 'bbox' AP, not {iou_type!r}.")
    drop = "bbox" if iou_type == "segm" else "segmentation"
    results = [{k: v for k, v in r.items() if k != drop} for r in results]  # loadRes writes into the dicts
    coco_dt = coco_gt.loadRes(results)
    ev = COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=_quiet)
    if max_dets_per_image is not None:
        if len(max_dets_per_image) != 3:
            raise ValueError(f"max_dets_per_image needs 3 entries, e.g. [1, 10, 100] (has {list(max_dets_per_image)}).")
        ev.params.maxDets = list(max_dets_per_image)
    if img_ids is not None:
        ev.params.imgIds = list(img_ids)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    ev.stats = ev.stats[:12]
    return ev


class FastCOCOEvaluator(COCOEvaluator):
    """detectron2's COCOEvaluator, segm and bbox AP computed by :func:`evaluate_coco` (faster-coco-eval).
    Keypoint AP, which no universal_seg model predicts, keeps pycocotools' path. ``use_fast_impl`` is ignored
    (detectron2's C++ path is not built)."""

    def __init__(self, dataset_name, *args, **kwargs):
        kwargs["use_fast_impl"] = False
        super().__init__(dataset_name, *args, **kwargs)
        self._fast_coco_api = None

    def _fast_api(self) -> FastCOCO:
        if self._fast_coco_api is None:  # built once, reused by every evaluation of this evaluator
            self._fast_coco_api = fast_coco_api(self._coco_api.dataset)
        return self._fast_coco_api

    def _eval_predictions(self, predictions, img_ids=None):
        """COCOEvaluator._eval_predictions with the AP computation of :func:`evaluate_coco`."""
        self._logger.info("Preparing results for COCO format ...")
        coco_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(coco_results)
        if hasattr(self._metadata, "thing_dataset_id_to_contiguous_id"):
            to_dataset = {v: k for k, v in self._metadata.thing_dataset_id_to_contiguous_id.items()}
            for result in coco_results:
                if result["category_id"] not in to_dataset:
                    raise ValueError(
                        f"A prediction has class {result['category_id']}, but the dataset's contiguous thing ids "
                        f"are {sorted(to_dataset)}; predict contiguous ids (pred_classes) of the dataset's classes."
                    )
                result["category_id"] = to_dataset[result["category_id"]]
        if self._output_dir:
            file_path = os.path.join(self._output_dir, "coco_instances_results.json")
            self._logger.info(f"Saving results to {file_path}")
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(coco_results))
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return
        self._logger.info("Evaluating predictions with faster-coco-eval (pycocotools' numbers, compiled) ...")
        for task in sorted(tasks):
            if not coco_results:
                coco_eval = None  # detectron2 reports NaN metrics
            elif task in ("segm", "bbox"):
                coco_eval = evaluate_coco(
                    self._fast_api(), coco_results, task, img_ids=img_ids, max_dets_per_image=self._max_dets_per_image
                )
            else:
                coco_eval = _evaluate_predictions_on_coco(
                    self._coco_api,
                    copy.deepcopy(coco_results),
                    task,
                    kpt_oks_sigmas=self._kpt_oks_sigmas,
                    use_fast_impl=False,
                    img_ids=img_ids,
                    max_dets_per_image=self._max_dets_per_image,
                )
            self._results[task] = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes")
            )
