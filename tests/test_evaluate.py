"""tools/evaluate.py tasks: hand-computed cases (mIoU, PQ, COCO AP), detectron2's SemSegEvaluator, clear errors."""

import contextlib
import io
import json
import logging
import os
import re

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from conftest import logged_records
from detectron2.evaluation import SemSegEvaluator
from PIL import Image

import universal_seg.data  # noqa: F401
from universal_seg.evaluation.offline import (
    evaluate_instance,
    evaluate_panoptic,
    evaluate_pq_from_semantic,
    evaluate_semantic,
)
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


def _save_ids(folder, name, ids):
    """Segment ids [H, W] -> COCO-panoptic RGB PNG (id = R + 256 G + 256^2 B)."""
    ids = np.asarray(ids, np.int64)
    _save(folder, name, np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1))


def test_panoptic_hand_computed(tmp_path):
    """One 4x6 image, categories person (thing, id 1) and sky (stuff, id 2); segment ids S sky, A / B / C persons.

        GT          prediction
        S S S S S S   S S S S S S
        S S S S S S   S S S S A A
        A A A B B B   A A A S S C
        A A A B B B   A A A C B B

    sky: pred 12 px, GT 12, overlap 10 -> IoU 10/14 = 5/7, TP.          PQ = SQ = 5/7, RQ = 1
    person: A pred 8, GT 6, overlap 6 -> IoU 3/4, TP; GT B matches neither pred B (2 px, IoU 2/6) nor C (2 px,
    IoU 2/6): FN 1, FP 2.      PQ = 0.75 / (1 + 0.5 * 2 + 0.5 * 1) = 0.3, SQ = 0.75, RQ = 1 / 2.5 = 0.4
    """
    S, A, B, C = 1, 2, 3, 4
    gt_ids = [[S] * 6, [S] * 6, [A, A, A, B, B, B], [A, A, A, B, B, B]]
    pred_ids = [[S] * 6, [S, S, S, S, A, A], [A, A, A, S, S, C], [A, A, A, C, B, B]]
    _save_ids(tmp_path / "gt", "x.png", gt_ids)
    _save_ids(tmp_path / "pred", "x.png", pred_ids)
    categories = [{"id": 1, "name": "person", "isthing": 1}, {"id": 2, "name": "sky", "isthing": 0}]

    def segments(ids, areas=None):
        return [
            {"id": i, "category_id": 2 if i == S else 1, "iscrowd": 0, **({"area": areas[i]} if areas else {})}
            for i in ids
        ]

    gt = {
        "images": [{"id": 7, "file_name": "x.jpg", "height": 4, "width": 6}],
        "categories": categories,
        "annotations": [
            {"image_id": 7, "file_name": "x.png", "segments_info": segments([S, A, B], {S: 12, A: 6, B: 6})}
        ],
    }
    pred = {"annotations": [{"image_id": 7, "file_name": "x.png", "segments_info": segments([S, A, B, C])}]}
    json.dump(gt, open(tmp_path / "gt.json", "w"))
    json.dump(pred, open(tmp_path / "pred.json", "w"))
    m = evaluate_panoptic(
        str(tmp_path / "gt.json"), str(tmp_path / "gt"), str(tmp_path / "pred.json"), str(tmp_path / "pred")
    )
    expected = {
        "PQ_th": 0.3,
        "SQ_th": 0.75,
        "RQ_th": 0.4,
        "PQ_st": 5 / 7,
        "SQ_st": 5 / 7,
        "RQ_st": 1.0,
        "PQ": (0.3 + 5 / 7) / 2,
        "SQ": (0.75 + 5 / 7) / 2,
        "RQ": (0.4 + 1.0) / 2,
    }
    assert m == pytest.approx({k: 100 * v for k, v in expected.items()})


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


def test_panoptic_string_ids_name_the_fix(tmp_path):
    """File-stem image ids (tools/predict.py without --dataset) name --dataset; a category id "15" is named as a
    string that must be an integer, not as an unknown id."""
    gt = json.load(open(PAN_JSON))
    bad = tmp_path / "p.json"
    stems = [dict(a, image_id=os.path.splitext(a["file_name"])[0]) for a in gt["annotations"]]
    json.dump({"annotations": stems}, open(bad, "w"))
    with pytest.raises(PredictionFileError, match=r"tools/predict.py --dataset NAME gives the dataset's image ids"):
        evaluate_panoptic(PAN_JSON, PAN_DIR, str(bad), PAN_DIR)
    first = gt["annotations"][0]
    category = first["segments_info"][0]["category_id"]
    first["segments_info"][0]["category_id"] = str(category)
    json.dump({"annotations": gt["annotations"]}, open(bad, "w"))
    expected = f"image {first['image_id']} gives category ids as strings ['{category}']; category ids must be integers"
    with pytest.raises(PredictionFileError, match=re.escape(expected)):
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
        results.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "segmentation": rle,
                "bbox": a["bbox"],
                "score": 0.9,
            }
        )
    return results


def test_instance_gt_as_prediction_is_100(tmp_path):
    gt_json = os.path.join(MINI, "instances_val.json")
    path = tmp_path / "r.json"
    json.dump(_gt_as_results(gt_json), open(path, "w"))
    m = evaluate_instance(gt_json, str(path))
    assert m["segm"]["AP"] == pytest.approx(100.0) and m["bbox"]["AP"] == pytest.approx(100.0)


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


def test_instance_hand_computed(tmp_path):
    """One 10x10 image, one category, GT squares g1 (rows/cols 0-3) and g2 (rows/cols 6-9), 16 px each.

    p1 (score 0.9) = g1: IoU 1 (mask and box). p2 (score 0.8): mask = g2's columns 6-7 plus row 6 of columns 8-9,
    10 px, mask IoU 10/16 = 0.625; box [6, 6, 2.9, 4], box IoU 2.9 * 4 / 16 = 0.725.
    At an IoU threshold p2 passes, both GT are found: AP_t = 1. Where it fails, recall stops at 1/2 with precision 1,
    so of the 101 recall points 0, 0.01, ..., 1 the 51 up to 0.5 have precision 1 and the rest 0: AP_t = 51/101.
    segm: p2 passes 0.50, 0.55, 0.60 (3 of 10 thresholds); bbox: 0.50 ... 0.70 (5 of 10).
    """
    g1, g2, p2 = np.zeros((3, 10, 10), np.uint8)
    g1[0:4, 0:4] = 1
    g2[6:10, 6:10] = 1
    p2[6:10, 6:8] = 1
    p2[6, 8:10] = 1
    gt = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}],
        "categories": [{"id": 3, "name": "thing"}],
        "annotations": [
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": 3,
                "iscrowd": 0,
                "area": 16.0,
                "bbox": box,
                "segmentation": _rle(m),
            }
            for i, (m, box) in enumerate([(g1, [0, 0, 4, 4]), (g2, [6, 6, 4, 4])])
        ],
    }
    results = [
        {"image_id": 1, "category_id": 3, "score": 0.9, "segmentation": _rle(g1), "bbox": [0, 0, 4, 4]},
        {"image_id": 1, "category_id": 3, "score": 0.8, "segmentation": _rle(p2), "bbox": [6, 6, 2.9, 4]},
    ]
    json.dump(gt, open(tmp_path / "gt.json", "w"))
    json.dump(results, open(tmp_path / "r.json", "w"))
    m = evaluate_instance(str(tmp_path / "gt.json"), str(tmp_path / "r.json"))
    for iou_type, passes in (("segm", 3), ("bbox", 5)):
        assert m[iou_type]["AP"] == pytest.approx(100 * (passes + (10 - passes) * 51 / 101) / 10)
        assert m[iou_type]["AP50"] == pytest.approx(100.0)
        assert m[iou_type]["AP75"] == pytest.approx(100 * 51 / 101)


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


def test_instance_string_ids_name_the_fix(tmp_path):
    """tools/predict.py without --dataset names images by file stem (e.g. '2011_000003'): the error names the GT
    image of that file and the fix (--dataset); string ids that would be valid as numbers are named as strings."""
    gt_json = os.path.join(MINI, "instances_val.json")
    gt = json.load(open(gt_json))
    first = gt["images"][0]
    stem = os.path.splitext(first["file_name"])[0]
    results = _gt_as_results(gt_json)
    result = next(r for r in results if r["image_id"] == first["id"])
    category = result["category_id"]
    path = tmp_path / "r.json"
    for change, messages in (
        (
            {"image_id": stem},
            [f"image_id '{stem}', the file name of ground-truth image {first['id']}", "predict.py with --dataset"],
        ),
        ({"image_id": "holiday_photo"}, ["a string, but the ground truth's image ids are numbers", "--dataset NAME"]),
        ({"image_id": str(first["id"])}, [f"image_id '{first['id']}', a string: image ids must be integers"]),
        ({"image_id": 99}, ["image_id 99 not in the ground truth"]),
        ({"category_id": str(category)}, [f"category_id '{category}', a string: category ids must be integers"]),
        ({"category_id": [category]}, [f"unknown category_id [{category}]"]),
    ):
        json.dump([dict(result, **change)], open(path, "w"))
        with pytest.raises(PredictionFileError) as info:
            evaluate_instance(gt_json, str(path))
        assert all(m in str(info.value) for m in messages), (change, str(info.value))


def test_instance_empty_results_score_zero_where_the_ground_truth_has_objects(tmp_path):
    """A model that found nothing writes ``[]`` (tools/predict.py's instances.json). Before, evaluate.py refused
    it; now it scores COCO's definition: no detection recalls nothing, so AP = 0 in every area range with ground
    truth; without small objects in the ground truth APs is undefined (NaN)."""
    gt = json.load(open(os.path.join(MINI, "instances_val.json")))
    small = [a for a in gt["annotations"] if a["area"] < 32**2 and not a.get("iscrowd")]
    assert small and len(small) < len(gt["annotations"])  # the mini val set has small objects, and others
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with logged_records("universal_seg.evaluation", logging.WARNING) as warnings:
        metrics = evaluate_instance(os.path.join(MINI, "instances_val.json"), str(empty))
    assert any("holds no results" in r.getMessage() for r in warnings)
    for iou_type in ("segm", "bbox"):
        assert metrics[iou_type] == {k: 0.0 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    gt["annotations"] = [a for a in gt["annotations"] if a not in small]
    no_small = tmp_path / "gt.json"
    no_small.write_text(json.dumps(gt))
    metrics = evaluate_instance(str(no_small), str(empty), ("segm",))["segm"]
    assert np.isnan(metrics.pop("APs")) and set(metrics.values()) == {0.0}
    empty.write_text("{}")
    with pytest.raises(PredictionFileError, match="must be a JSON list of COCO results"):
        evaluate_instance(os.path.join(MINI, "instances_val.json"), str(empty))


def test_cli_semantic_and_error_exit(tmp_path):
    import subprocess
    import sys

    _save(tmp_path / "gt", "a.png", np.array([[0, 1]]))
    _save(tmp_path / "pred", "a.png", np.array([[0, 0]]))
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools", "evaluate.py"),
        "semantic",
        "--gt-folder",
        str(tmp_path / "gt"),
        "--num-classes",
        "2",
    ]
    ok = subprocess.run(cmd + ["--pred-folder", str(tmp_path / "pred")], capture_output=True, text=True)
    assert ok.returncode == 0 and "pACC" in ok.stdout and "50.000" in ok.stdout
    bad = subprocess.run(
        cmd + ["--pred-folder", str(tmp_path / "gt"), "--num-classes", "1"], capture_output=True, text=True
    )
    # too small a --num-classes: the ground truth's value 1 is out of range, reported before any prediction
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert bad.returncode == 2 and len(errors) == 1 and "check --num-classes" in errors[0]


def _evaluate_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_tool_evaluate", os.path.join(REPO, "tools", "evaluate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_output_is_checked_before_the_evaluation_and_its_folder_created(tmp_path, capsys):
    """--output under a file, a folder, or in a folder that cannot be written: one line, exit 2, and no metrics
    printed (the evaluation did not run). A missing folder is created and gets the metrics (and no temporary file)."""
    _save(tmp_path / "gt", "a.png", np.array([[0, 1]]))
    _save(tmp_path / "pred", "a.png", np.array([[0, 0]]))
    task = ["semantic", "--gt-folder", str(tmp_path / "gt"), "--pred-folder", str(tmp_path / "pred")]
    task += ["--num-classes", "2"]
    tool = _evaluate_tool()
    (tmp_path / "a_file").write_text("x")
    bad = [
        (tmp_path / "a_file" / "m.json", "which is not a folder"),
        (tmp_path / "gt", "is a folder; give a file name, e.g. --output " + str(tmp_path / "gt" / "metrics.json")),
    ]
    if os.path.isdir("/proc/self"):  # Linux: no file can be created in /proc, even by root
        bad.append(("/proc/m.json", "folder '/proc' is not writable"))
    for output, message in bad:
        assert tool.main(["--output", str(output), *task]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("error: --output ") and len(err.strip().splitlines()) == 1
        assert message in err
    assert sorted(os.listdir(tmp_path / "gt")) == ["a.png"]
    output = tmp_path / "new" / "sub" / "metrics.json"
    assert tool.main(["--output", str(output), *task]) == 0
    # gt [0, 1], pred [0, 0]: class 0 IoU 1/2, class 1 IoU 0, pixel accuracy 1/2
    metrics = json.loads(output.read_text())
    assert metrics["pACC"] == pytest.approx(50.0) and metrics["mIoU"] == pytest.approx(25.0)
    assert "pACC" in capsys.readouterr().out and os.listdir(output.parent) == ["metrics.json"]
