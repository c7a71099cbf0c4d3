"""tools/evaluate.py tasks: hand-computed cases, official libraries on perturbed ground truth, clear errors."""
import contextlib
import io
import json
import os
import shutil

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.evaluation import SemSegEvaluator
from panopticapi.evaluation import pq_compute
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import universal_seg.data  # noqa: F401
from universal_seg.evaluation.offline import (evaluate_instance, evaluate_panoptic, evaluate_pq_from_semantic,
                                              evaluate_semantic)
from universal_seg.evaluation.offline.errors import PredictionFileError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = os.path.join(REPO, "datasets", "mini")
PAN_JSON, PAN_DIR = os.path.join(MINI, "panoptic_val.json"), os.path.join(MINI, "panoptic")


def _save(folder, name, array):
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(os.path.join(folder, name))


def test_semantic_hand_computed(tmp_path):
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 2, 0]])
    _save(tmp_path / "gt", "a.png", gt)
    _save(tmp_path / "pred", "a.png", pred)
    m = evaluate_semantic(str(tmp_path / "gt"), str(tmp_path / "pred"), num_classes=3)
    # class 0: tp 3, gt 4, pred 3 -> IoU 3/4; class 1: tp 2, gt 3, pred 3 -> IoU 2/4; class 2: gt 0, pred 1
    assert m["mIoU"] == pytest.approx(100 * (0.75 + 0.5) / 3)  # class 2 counts in the denominator
    assert m["pACC"] == pytest.approx(100 * 5 / 7)
    assert m["mACC"] == pytest.approx(100 * (3 / 4 + 2 / 3) / 2)
    assert m["fwIoU"] == pytest.approx(100 * (4 / 7 * 0.75 + 3 / 7 * 0.5))


def test_semantic_matches_detectron2_sem_seg_evaluator(tmp_path):
    gt_dir = os.path.join(MINI, "semantic")
    rng = np.random.RandomState(0)
    evaluator = SemSegEvaluator("mini_sem_seg_val", distributed=False)
    evaluator.reset()
    gt_of_image = evaluator.input_file_to_gt_file
    for f in sorted(os.listdir(gt_dir)):
        gt = np.asarray(Image.open(os.path.join(gt_dir, f))).astype(np.int64)
        pred = np.where(rng.rand(*gt.shape) < 0.2, rng.randint(0, 21, gt.shape), np.where(gt == 255, 0, gt))
        _save(tmp_path, f, pred)
        onehot = torch.nn.functional.one_hot(torch.from_numpy(pred), 21).permute(2, 0, 1).float()
        image = next(k for k, v in gt_of_image.items() if os.path.abspath(v) == os.path.join(gt_dir, f))
        evaluator.process([{"file_name": image}], [{"sem_seg": onehot}])
    with contextlib.redirect_stdout(io.StringIO()):
        ref = evaluator.evaluate()["sem_seg"]
    ours = evaluate_semantic(gt_dir, str(tmp_path), num_classes=21)
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-9)


def test_semantic_errors(tmp_path):
    _save(tmp_path / "gt", "a.png", np.zeros((2, 2)))
    _save(tmp_path / "gt", "b.png", np.zeros((2, 2)))
    _save(tmp_path / "pred", "a.png", np.zeros((2, 3)))
    with pytest.raises(PredictionFileError, match="lack 1"):
        evaluate_semantic(str(tmp_path / "gt"), str(tmp_path / "pred"), 3)
    _save(tmp_path / "pred", "b.png", np.zeros((2, 2)))
    with pytest.raises(PredictionFileError, match="original image size"):
        evaluate_semantic(str(tmp_path / "gt"), str(tmp_path / "pred"), 3)
    _save(tmp_path / "pred", "a.png", np.full((2, 2), 7))
    with pytest.raises(PredictionFileError, match="unknown class ids"):
        evaluate_semantic(str(tmp_path / "gt"), str(tmp_path / "pred"), 3)


def test_pq_of_mini_ground_truth_against_itself_is_100():
    m = evaluate_panoptic(PAN_JSON, PAN_DIR, PAN_JSON, PAN_DIR)
    assert m["PQ"] == m["PQ_th"] == m["PQ_st"] == pytest.approx(100.0)


def _perturbed_prediction(tmp_path):
    """Prediction = GT with one person segment given to background and one segment relabelled."""
    gt = json.load(open(PAN_JSON))
    pred_dir = tmp_path / "pan"
    shutil.copytree(PAN_DIR, pred_dir)
    ann = gt["annotations"][1]  # 2011_000006: background, 4 persons, ...
    rgb = np.asarray(Image.open(pred_dir / ann["file_name"])).astype(np.int64)
    ids = rgb[..., 0].astype(np.int64) + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    ids[ids == 2] = 1  # person segment 2 merged into background
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(pred_dir / ann["file_name"])
    ann["segments_info"] = [s for s in ann["segments_info"] if s["id"] != 2]
    gt["annotations"][2]["segments_info"][1]["category_id"] = 7  # a bus labelled car
    pred_json = tmp_path / "pred.json"
    json.dump({"annotations": gt["annotations"]}, open(pred_json, "w"))
    return str(pred_json), str(pred_dir)


def test_panoptic_matches_panopticapi_on_perturbed_prediction(tmp_path):
    pred_json, pred_dir = _perturbed_prediction(tmp_path)
    ours = evaluate_panoptic(PAN_JSON, PAN_DIR, pred_json, pred_dir)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = pq_compute(PAN_JSON, pred_json, gt_folder=PAN_DIR, pred_folder=pred_dir)
    assert ours["PQ"] == pytest.approx(100 * ref["All"]["pq"]) and ours["PQ"] < 100
    assert ours["RQ_th"] == pytest.approx(100 * ref["Things"]["rq"])
    assert ours["SQ_st"] == pytest.approx(100 * ref["Stuff"]["sq"])


def test_panoptic_errors(tmp_path):
    gt = json.load(open(PAN_JSON))
    bad = tmp_path / "p.json"
    json.dump({"annotations": gt["annotations"][:2]}, open(bad, "w"))
    with pytest.raises(PredictionFileError, match="lack 1 image id"):
        evaluate_panoptic(PAN_JSON, PAN_DIR, str(bad), PAN_DIR)
    gt["annotations"][0]["segments_info"][0]["category_id"] = 99
    json.dump({"annotations": gt["annotations"]}, open(bad, "w"))
    with pytest.raises(PredictionFileError, match="unknown category ids"):
        evaluate_panoptic(PAN_JSON, PAN_DIR, str(bad), PAN_DIR)


def test_pq_from_semantic_hand_checked():
    # mini GT semantic as prediction: stuff (one background segment per image) is perfect; things are perfect
    # exactly for the images with one instance per class: 2011_000003 has 2 persons, 2011_000006 4 persons,
    # 2011_000025 2 buses, so some thing classes fail to match.
    m = evaluate_pq_from_semantic(PAN_JSON, PAN_DIR, os.path.join(MINI, "semantic"))
    assert m["PQ_st"] == pytest.approx(100.0)
    assert 0 < m["PQ_th"] < 100


def _gt_as_results(gt_json):
    coco = json.load(open(gt_json))
    imgs = {i["id"]: i for i in coco["images"]}
    results = []
    for a in coco["annotations"]:
        img = imgs[a["image_id"]]
        rle = mask_util.merge(mask_util.frPyObjects(a["segmentation"], img["height"], img["width"]))
        rle["counts"] = rle["counts"].decode()
        results.append({"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": rle,
                        "bbox": a["bbox"], "score": 0.9})
    return results


def test_instance_perfect_and_perturbed_match_pycocotools(tmp_path):
    gt_json = os.path.join(MINI, "instances_val.json")
    results = _gt_as_results(gt_json)
    path = tmp_path / "r.json"
    json.dump(results, open(path, "w"))
    m = evaluate_instance(gt_json, str(path))
    assert m["segm"]["AP"] == pytest.approx(100.0) and m["bbox"]["AP"] == pytest.approx(100.0)
    results[0]["category_id"] = 7
    results[3]["score"] = 0.1
    results[3]["bbox"] = [0, 0, 10, 10]
    json.dump(results, open(path, "w"))
    m = evaluate_instance(gt_json, str(path))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        for iou_type in ("segm", "bbox"):
            ev = COCOeval(gt, gt.loadRes(str(path)), iou_type)
            ev.evaluate(), ev.accumulate(), ev.summarize()
            assert m[iou_type]["AP"] == pytest.approx(100 * ev.stats[0])
            assert m[iou_type]["AP50"] == pytest.approx(100 * ev.stats[1])
    assert m["bbox"]["AP"] < 100


def test_instance_errors(tmp_path):
    gt_json = os.path.join(MINI, "instances_val.json")
    results = _gt_as_results(gt_json)
    path = tmp_path / "r.json"
    for change, match in (({"image_id": 99}, "image_id 99"), ({"category_id": 0}, "unknown category_id")):
        json.dump([dict(results[0], **change)], open(path, "w"))
        with pytest.raises(PredictionFileError, match=match):
            evaluate_instance(gt_json, str(path))
    json.dump([dict(results[0], segmentation=dict(results[0]["segmentation"], size=[5, 5]))], open(path, "w"))
    with pytest.raises(PredictionFileError, match="has size"):
        evaluate_instance(gt_json, str(path))


def test_cli_semantic_and_error_exit(tmp_path):
    import subprocess
    import sys
    _save(tmp_path / "gt", "a.png", np.array([[0, 1]]))
    _save(tmp_path / "pred", "a.png", np.array([[0, 0]]))
    cmd = [sys.executable, os.path.join(REPO, "tools", "evaluate.py"), "semantic", "--gt-folder", str(tmp_path / "gt"),
           "--num-classes", "2"]
    ok = subprocess.run(cmd + ["--pred-folder", str(tmp_path / "pred")], capture_output=True, text=True)
    assert ok.returncode == 0 and "pACC" in ok.stdout and "50.000" in ok.stdout
    bad = subprocess.run(cmd + ["--pred-folder", str(tmp_path / "gt"), "--num-classes", "1"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "unknown class ids" in bad.stderr
