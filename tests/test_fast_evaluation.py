"""The compiled COCO evaluator and the parallel PQ give the official libraries' numbers.

On a generated set of 200 images with 20 objects / segments each (universal_seg.evaluation.synthetic: sizes from a
few pixels to "large", overlaps, crowd regions, polygon / RLE / uncompressed-RLE ground truth, misses, duplicates,
wrong classes, false positives, tied scores, an image without detections, a category without ground truth and
one never detected), every number is compared with pycocotools / panopticapi run on the same data, to 1e-9.
"""

import contextlib
import copy
import io
import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator
from panopticapi.evaluation import pq_compute as panopticapi_pq_compute
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from universal_seg.evaluation.build import PanopticEvaluator
from universal_seg.evaluation.coco import FastCOCOEvaluator, evaluate_coco, fast_coco_api
from universal_seg.evaluation.offline import evaluate_instance, evaluate_panoptic
from universal_seg.evaluation.panoptic_quality import pq_compute
from universal_seg.evaluation.synthetic import instance_set, panoptic_set

TOL = 1e-9


@pytest.fixture(scope="module")
def instances():
    return instance_set(200, instances=20, seed=3)


def _pycocotools(gt, results, iou_type):
    """pycocotools on the same data, results prepared as detectron2's COCOEvaluator does (segm: no bbox)."""
    drop = "bbox" if iou_type == "segm" else "segmentation"
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([{k: v for k, v in copy.deepcopy(r).items() if k != drop} for r in results])
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_coco_ap_equals_pycocotools(instances, iou_type):
    gt, results = instances
    before = copy.deepcopy((gt, results))
    ref = _pycocotools(gt, results, iou_type)
    ours = evaluate_coco(fast_coco_api(gt), results, iou_type)
    assert (gt, results) == before  # the caller's ground truth and results are not modified
    assert len(ours.stats) == 12
    np.testing.assert_allclose(ours.stats, ref.stats, rtol=0, atol=TOL)
    np.testing.assert_allclose(ours.eval["precision"], ref.eval["precision"], rtol=0, atol=TOL)
    np.testing.assert_allclose(ours.eval["recall"], ref.eval["recall"], rtol=0, atol=TOL)
    # the set reaches every area range and has non-trivial AP (a degenerate set would compare -1 with -1)
    assert all(0.02 < s < 0.98 for s in ref.stats), ref.stats


def test_coco_ap_of_an_image_subset_equals_pycocotools(instances):
    gt, results = instances
    img_ids = [i["id"] for i in gt["images"]][::3]
    ref = _pycocotools(gt, results, "segm")
    with contextlib.redirect_stdout(io.StringIO()):
        ref.params.imgIds = img_ids
        ref.evaluate()
        ref.accumulate()
        ref.summarize()
    ours = evaluate_coco(fast_coco_api(gt), results, "segm", img_ids=img_ids)
    np.testing.assert_allclose(ours.stats, ref.stats, rtol=0, atol=TOL)


def _register(tmp_path, name, gt):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(gt))
    DatasetCatalog.register(name, lambda: [])
    ids = {c["id"]: i for i, c in enumerate(gt["categories"])}
    MetadataCatalog.get(name).set(
        json_file=str(path),
        thing_classes=[c["name"] for c in gt["categories"]],
        thing_dataset_id_to_contiguous_id=ids,
        evaluator_type="coco",
    )
    return ids


def test_fast_coco_evaluator_equals_detectron2_official_path(tmp_path, instances):
    """FastCOCOEvaluator vs detectron2's COCOEvaluator(use_fast_impl=False) (pycocotools) on the same
    predictions: every result key, per-category AP included."""
    gt, results = instances
    name = "fast_eval_instances_test"
    ids = _register(tmp_path, name, gt)
    try:
        by_image = {}
        for r in results:  # detectron2's evaluators take contiguous category ids
            by_image.setdefault(r["image_id"], []).append(dict(r, category_id=ids[r["category_id"]]))
        predictions = [{"image_id": i, "instances": v} for i, v in by_image.items()]
        metrics = []
        for cls in (COCOEvaluator, FastCOCOEvaluator):
            with contextlib.redirect_stdout(io.StringIO()):
                ev = cls(name, output_dir=str(tmp_path / cls.__name__), use_fast_impl=False)
            ev.reset()
            ev._predictions = copy.deepcopy(predictions)
            metrics.append(ev.evaluate())
        ref, ours = metrics
        assert ref.keys() == ours.keys() == {"bbox", "segm"}
        for task in ref:
            assert ref[task].keys() == ours[task].keys()
            assert len(ref[task]) == 6 + len(gt["categories"])  # AP-<class> for each class
            for key, value in ref[task].items():
                assert (np.isnan(value) and np.isnan(ours[task][key])) or abs(value - ours[task][key]) < TOL, key
        saved = [
            json.loads((tmp_path / c.__name__ / "coco_instances_results.json").read_text())
            for c in (COCOEvaluator, FastCOCOEvaluator)
        ]
        assert saved[0] == saved[1]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_offline_instance_evaluation_equals_pycocotools(tmp_path, instances):
    gt, results = instances
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "r.json").write_text(json.dumps(results))
    m = evaluate_instance(str(tmp_path / "gt.json"), str(tmp_path / "r.json"))
    for iou_type in ("segm", "bbox"):
        ref = _pycocotools(gt, results, iou_type).stats[:6]
        np.testing.assert_allclose(
            [m[iou_type][k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")], 100 * ref, rtol=0, atol=100 * TOL
        )


@pytest.fixture(scope="module")
def panoptic(tmp_path_factory):
    return panoptic_set(str(tmp_path_factory.mktemp("panoptic")), 200, segments=20, seed=5, size=(48, 64))


@pytest.fixture(scope="module")
def panopticapi_result(panoptic):
    gt_json, gt_folder, pred_json, pred_folder = panoptic
    with contextlib.redirect_stdout(io.StringIO()):
        return panopticapi_pq_compute(gt_json, pred_json, gt_folder=gt_folder, pred_folder=pred_folder)


def _assert_same_pq(ours, ref):
    for key in ("All", "Things", "Stuff"):
        assert ours[key]["n"] == ref[key]["n"]
        for metric in ("pq", "sq", "rq"):
            assert abs(ours[key][metric] - ref[key][metric]) < TOL, (key, metric)
    assert ours["per_class"].keys() == ref["per_class"].keys()
    for cat, values in ref["per_class"].items():
        for metric in ("pq", "sq", "rq"):
            assert abs(ours["per_class"][cat][metric] - values[metric]) < TOL, (cat, metric)


@pytest.mark.parametrize("workers", [1, 2])
def test_pq_equals_panopticapi(panoptic, panopticapi_result, workers):
    ref = panopticapi_result
    assert ref["Things"]["n"] == 4 and ref["Stuff"]["n"] == 3
    assert all(0.05 < ref[k][m] < 0.95 for k in ("All", "Things", "Stuff") for m in ("pq", "sq", "rq")), ref
    gt_json, gt_folder, pred_json, pred_folder = panoptic
    _assert_same_pq(pq_compute(gt_json, pred_json, gt_folder, pred_folder, workers=workers), ref)


def test_pq_from_png_bytes_equals_files(panoptic, panopticapi_result):
    gt_json, gt_folder, pred_json, pred_folder = panoptic
    pred = json.loads(open(pred_json).read())
    for ann in pred["annotations"]:
        with open(os.path.join(pred_folder, ann["file_name"]), "rb") as f:
            ann["png_string"] = f.read()
        ann["file_name"] = "not-there.png"
    _assert_same_pq(pq_compute(gt_json, pred, gt_folder, None, workers=1), panopticapi_result)


def test_offline_panoptic_evaluation_equals_panopticapi(panoptic, panopticapi_result):
    gt_json, gt_folder, pred_json, pred_folder = panoptic
    m = evaluate_panoptic(gt_json, gt_folder, pred_json, pred_folder)
    for key, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for metric in ("pq", "sq", "rq"):
            assert abs(m[metric.upper() + suffix] - 100 * panopticapi_result[key][metric]) < 100 * TOL


def test_panoptic_evaluator_equals_detectron2s(tmp_path, panoptic):
    """PanopticEvaluator (in-memory PNGs, our PQ) vs detectron2's COCOPanopticEvaluator (panopticapi) fed the
    same processed predictions, with one image excluded from ours and dropped from the reference's GT."""
    gt_json, gt_folder, pred_json, pred_folder = panoptic
    gt = json.loads(open(gt_json).read())
    pred = json.loads(open(pred_json).read())
    excluded = gt["annotations"][7]["image_id"]
    reduced = dict(gt, annotations=[a for a in gt["annotations"] if a["image_id"] != excluded])
    (tmp_path / "reduced.json").write_text(json.dumps(reduced))
    predictions = []
    for ann in pred["annotations"]:
        with open(os.path.join(pred_folder, ann["file_name"]), "rb") as f:
            predictions.append(dict(ann, png_string=f.read()))
    results = []
    for cls, json_path in ((COCOPanopticEvaluator, str(tmp_path / "reduced.json")), (PanopticEvaluator, gt_json)):
        name = f"fast_eval_panoptic_{cls.__name__}"
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(
            panoptic_json=json_path,
            panoptic_root=gt_folder,
            thing_dataset_id_to_contiguous_id={},
            stuff_dataset_id_to_contiguous_id={},
        )
        try:
            ev = cls(name, str(tmp_path / cls.__name__))
            ev.reset()
            if cls is PanopticEvaluator:
                ev.exclude([excluded])
            ev._predictions = [p for p in copy.deepcopy(predictions) if p["image_id"] != excluded]
            results.append(ev.evaluate()["panoptic_seg"])
        finally:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    ref, ours = results
    assert ref.keys() == ours.keys()
    for key, value in ref.items():
        assert abs(value - ours[key]) < 100 * TOL, key


def test_pq_refuses_a_png_that_disagrees_with_its_segments(panoptic):
    gt_json, gt_folder, pred_json, pred_folder = panoptic
    pred = json.loads(open(pred_json).read())
    pred["annotations"][0]["segments_info"].pop()
    with pytest.raises(KeyError, match="presented in PNG and not presented in JSON"):
        pq_compute(gt_json, pred, gt_folder, pred_folder, workers=1)
    pred = json.loads(open(pred_json).read())
    pred["annotations"][0]["segments_info"].append({"id": 123, "category_id": 1})
    with pytest.raises(KeyError, match="presented in JSON and not presented in PNG"):
        pq_compute(gt_json, pred, gt_folder, pred_folder, workers=1)
    pred = json.loads(open(pred_json).read())
    del pred["annotations"][3]
    with pytest.raises(ValueError, match="No prediction for the image"):
        pq_compute(gt_json, pred, gt_folder, pred_folder, workers=1)
