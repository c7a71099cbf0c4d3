"""The dataset preparation scripts (datasets/prepare_*.py) on tiny synthetic trees: hand-computed outputs, a second
run skips finished files, an interrupted write leaves no partial file, and the registrations load the result."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
from detectron2.data import DatasetCatalog
from PIL import Image

import universal_seg.data  # noqa: F401
from universal_seg.data.datasets import register_all

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = (
    "prepare_coco_semantic_from_panoptic",
    "prepare_ade20k_sem_seg",
    "prepare_ade20k_pan_ins",
    "prepare_cityscapes",
    "prepare_coco_stuff_10k",
)


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "datasets", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _png(path, array, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array), mode).save(path)


def _jpg(path, w=4, h=4):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (w, h), (10, 20, 30)).save(path)


def _read(path):
    return np.asarray(Image.open(path))


def _files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def _mtimes(folder):
    return {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in _files(folder)}


@pytest.fixture()
def root(tmp_path):
    yield str(tmp_path)
    register_all()  # restore the default root for other tests


class Interrupted(Exception):
    pass


def _check_interrupt_then_rerun(monkeypatch, run, out_dir):
    """With every PNG save writing a few bytes and then failing (a process killed mid-write), run() adds no file
    under out_dir (no partial output, no temporary file); with saving restored, run() completes."""

    def broken_save(self, fp, *args, **kwargs):
        if hasattr(fp, "write"):  # an open file (the atomic writer's temporary file)
            fp.write(b"\x89PNG partial")
        else:
            with open(fp, "wb") as f:
                f.write(b"\x89PNG partial")
        raise Interrupted(fp)

    before = _files(out_dir)
    with monkeypatch.context() as m:
        m.setattr(Image.Image, "save", broken_save)
        with pytest.raises(Interrupted):
            run()
    assert _files(out_dir) == before
    run()


def _check_second_run_skips(run, out_dir):
    before = _mtimes(out_dir)
    run()
    assert _mtimes(out_dir) == before


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name):
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "datasets", name + ".py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "usage:" in out.stdout and "Output" in out.stdout


# ---------------------------------------------------------------- COCO semantic from panoptic
def _coco_panoptic_tree(root):
    coco = os.path.join(root, "coco")
    ids = np.array([[1, 1, 0], [261, 261, 1]])  # 261 = R 5 + 256 * G 1: exercises the G channel
    rgb = np.stack([ids % 256, ids // 256, ids // 65536], -1).astype(np.uint8)
    segments = [{"id": 1, "category_id": 1, "iscrowd": 0}, {"id": 261, "category_id": 200, "iscrowd": 1}]
    for split in ("train", "val"):
        _png(os.path.join(coco, f"panoptic_{split}2017", "000000000001.png"), rgb)
        _jpg(os.path.join(coco, f"{split}2017", "000000000001.jpg"), 3, 2)
        os.makedirs(os.path.join(coco, "annotations"), exist_ok=True)
        with open(os.path.join(coco, "annotations", f"panoptic_{split}2017.json"), "w") as f:
            json.dump(
                {
                    "images": [{"id": 1, "file_name": "000000000001.jpg", "height": 2, "width": 3}],
                    "annotations": [{"image_id": 1, "file_name": "000000000001.png", "segments_info": segments}],
                    "categories": [],
                },
                f,
            )
    return coco


def test_coco_semantic_from_panoptic(root, monkeypatch):
    coco = _coco_panoptic_tree(root)
    script = _script("prepare_coco_semantic_from_panoptic")
    out_dir = os.path.join(coco, "panoptic_semseg_val2017")
    _check_interrupt_then_rerun(monkeypatch, lambda: script.main(["--root", root]), out_dir)
    # person (id 1) -> contiguous 0, rug-merged (id 200, the last of the 133) -> 132, void -> 255
    np.testing.assert_array_equal(_read(os.path.join(out_dir, "000000000001.png")), [[0, 0, 255], [132, 132, 0]])
    _check_second_run_skips(lambda: script.main(["--root", root]), out_dir)
    register_all(root)
    (record,) = DatasetCatalog.get("coco_2017_val_panoptic_with_sem_seg")
    assert record["sem_seg_file_name"] == os.path.join(out_dir, "000000000001.png")


def test_coco_semantic_missing_input_names_path(root):
    with pytest.raises(FileNotFoundError, match=r"coco/annotations/panoptic_train2017\.json"):
        _script("prepare_coco_semantic_from_panoptic").main(["--root", root])


# ---------------------------------------------------------------- ADE20K semantic
ADE_SEMANTIC = np.array([[1, 1, 3, 3], [1, 8, 8, 3], [13, 13, 0, 3], [13, 8, 0, 0]], np.uint8)


def _ade_tree(root, with_instances=True):
    ade = os.path.join(root, "ADEChallengeData2016")
    instance = np.zeros((4, 4, 3), np.uint8)
    for (y, x), (cls, ins) in {
        (1, 1): (1, 1),
        (1, 2): (1, 1),
        (2, 0): (4, 2),
        (2, 1): (4, 2),
        (3, 0): (4, 2),
        (0, 3): (1, 3),
    }.items():
        instance[y, x, :2] = cls, ins  # R: instance class (1 bed, 4 person), G: instance id
    for folder in ("training", "validation"):
        _jpg(os.path.join(ade, "images", folder, "ADE_x_00000001.jpg"))
        _png(os.path.join(ade, "annotations", folder, "ADE_x_00000001.png"), ADE_SEMANTIC)
        if with_instances:
            _png(os.path.join(ade, "annotations_instance", folder, "ADE_x_00000001.png"), instance)
    return ade


def test_ade20k_sem_seg(root, monkeypatch):
    ade = _ade_tree(root, with_instances=False)
    script = _script("prepare_ade20k_sem_seg")
    out_dir = os.path.join(ade, "annotations_detectron2")
    _check_interrupt_then_rerun(monkeypatch, lambda: script.main(["--root", root]), out_dir)
    expected = [[0, 0, 2, 2], [0, 7, 7, 2], [12, 12, 255, 2], [12, 7, 255, 255]]  # label - 1, 0 -> 255
    for folder in ("training", "validation"):
        np.testing.assert_array_equal(_read(os.path.join(out_dir, folder, "ADE_x_00000001.png")), expected)
    _check_second_run_skips(lambda: script.main(["--root", root]), out_dir)
    register_all(root)
    (record,) = DatasetCatalog.get("ade20k_sem_seg_val")
    assert record["sem_seg_file_name"].endswith("annotations_detectron2/validation/ADE_x_00000001.png")


def test_ade20k_sem_seg_missing_input_names_path(root):
    with pytest.raises(FileNotFoundError, match=r"ADEChallengeData2016/annotations/training"):
        _script("prepare_ade20k_sem_seg").main(["--root", root])


# ---------------------------------------------------------------- ADE20K panoptic + instance
def test_ade20k_pan_ins(root, monkeypatch):
    ade = _ade_tree(root)
    script = _script("prepare_ade20k_pan_ins")
    out_dir = os.path.join(ade, "ade20k_panoptic_train")
    _check_interrupt_then_rerun(monkeypatch, lambda: script.main(["--root", root]), out_dir)
    # stuff first (wall 1 -> segment 1, sky 3 -> 2), then instances in G order (bed 8 -> 3, person 13 -> 4,
    # bed 8 -> 5, which covers a sky pixel); the bed pixel outside every instance and label 0 are void
    expected_ids = [[1, 1, 2, 5], [1, 3, 3, 2], [4, 4, 0, 2], [4, 0, 0, 0]]
    rgb = _read(os.path.join(out_dir, "ADE_x_00000001.png")).astype(np.int64)
    np.testing.assert_array_equal(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2], expected_ids)
    with open(os.path.join(ade, "ade20k_panoptic_train.json")) as f:
        pan = json.load(f)
    assert pan["images"] == [{"id": 1, "file_name": "ADE_x_00000001.jpg", "height": 4, "width": 4}]
    segs = [(s["id"], s["category_id"], s["area"], s["bbox"]) for s in pan["annotations"][0]["segments_info"]]
    assert segs == [
        (1, 1, 3, [0, 0, 2, 2]),
        (2, 3, 3, [2, 0, 2, 3]),
        (3, 8, 2, [1, 1, 2, 1]),
        (4, 13, 3, [0, 2, 2, 2]),
        (5, 8, 1, [3, 0, 1, 1]),
    ]
    assert len(pan["categories"]) == 150 and sum(c["isthing"] for c in pan["categories"]) == 100
    with open(os.path.join(ade, "ade20k_instance_train.json")) as f:
        ins = json.load(f)
    assert [(a["id"], a["category_id"], a["area"], a["bbox"]) for a in ins["annotations"]] == [
        (1, 8, 2, [1, 1, 2, 1]),
        (2, 13, 3, [0, 2, 2, 2]),
        (3, 8, 1, [3, 0, 1, 1]),
    ]  # ADE semantic ids
    assert len(ins["categories"]) == 100 and ins["categories"][3]["name"] == "person"
    _check_second_run_skips(lambda: script.main(["--root", root]), ade)
    _script("prepare_ade20k_sem_seg").main(["--root", root])
    register_all(root)
    (record,) = DatasetCatalog.get("ade20k_panoptic_train")
    assert [(s["category_id"], s["isthing"]) for s in record["segments_info"]] == [
        (0, False),
        (2, False),
        (7, True),
        (12, True),
        (7, True),
    ]
    (record,) = DatasetCatalog.get("ade20k_instance_val")
    assert [a["category_id"] for a in record["annotations"]] == [0, 3, 0]
    from pycocotools import mask as mask_util

    np.testing.assert_array_equal(
        mask_util.decode(record["annotations"][1]["segmentation"]), (np.array(expected_ids) == 4).astype(np.uint8)
    )


def test_ade20k_pan_ins_missing_instances_names_path(root):
    _ade_tree(root, with_instances=False)
    with pytest.raises(FileNotFoundError, match=r"annotations_instance/training.*annotations_instance\.tar"):
        _script("prepare_ade20k_pan_ins").main(["--root", root])


# ---------------------------------------------------------------- COCO-Stuff-10k
def test_coco_stuff_10k(root, monkeypatch):
    base = os.path.join(root, "coco", "coco_stuff_10k")
    labels = np.array([[0, 1, 92], [182, 12, 91]], np.uint8)
    os.makedirs(os.path.join(base, "imageLists"))
    os.makedirs(os.path.join(base, "annotations"))
    for split, name in (("train", "COCO_train2014_000000000077"), ("test", "COCO_train2014_000000000078")):
        with open(os.path.join(base, "imageLists", f"{split}.txt"), "w") as f:
            f.write(name + "\n")
        _jpg(os.path.join(base, "images", name + ".jpg"), 3, 2)
        scipy.io.savemat(os.path.join(base, "annotations", name + ".mat"), {"S": labels})
    script = _script("prepare_coco_stuff_10k")
    out_dir = os.path.join(base, "annotations_detectron2")
    _check_interrupt_then_rerun(monkeypatch, lambda: script.main(["--root", root]), out_dir)
    # unlabeled 0 -> 255, person 1 -> 0, banner 92 -> 80 (first stuff), wood 182 -> 170, unused 12 / 91 -> 255
    np.testing.assert_array_equal(
        _read(os.path.join(out_dir, "train", "COCO_train2014_000000000077.png")), [[255, 0, 80], [170, 255, 255]]
    )
    _check_second_run_skips(lambda: script.main(["--root", root]), base)
    register_all(root)
    (record,) = DatasetCatalog.get("coco_2017_test_stuff_10k_sem_seg")
    assert record["file_name"].endswith("images_detectron2/test/COCO_train2014_000000000078.jpg")
    assert os.path.exists(record["sem_seg_file_name"])


# ---------------------------------------------------------------- Cityscapes
def _cityscapes_tree(root):
    cs = os.path.join(root, "cityscapes")
    polygons = {
        "imgHeight": 2,
        "imgWidth": 4,
        "objects": [
            {"label": "road", "polygon": [[0, 0], [3, 0], [3, 1], [0, 1]]},
            {"label": "sky", "polygon": [[2, 0], [3, 0], [3, 1], [2, 1]]},
        ],
    }
    instance_ids = np.array([[7, 7, 23, 23], [26001, 26001, 23, 23]], np.uint16)  # road, sky, one car
    for split, city in (("train", "aachen"), ("val", "frankfurt")):
        stem = f"{city}_000000_000019"
        gt = os.path.join(cs, "gtFine", split, city)
        os.makedirs(gt)
        with open(os.path.join(gt, stem + "_gtFine_polygons.json"), "w") as f:
            json.dump(polygons, f)
        _png(os.path.join(gt, stem + "_gtFine_instanceIds.png"), instance_ids)
        _png(os.path.join(gt, stem + "_gtFine_labelIds.png"), np.zeros((2, 4), np.uint8))
        _png(os.path.join(cs, "leftImg8bit", split, city, stem + "_leftImg8bit.png"), np.zeros((2, 4, 3), np.uint8))
    return cs


def test_cityscapes(root, monkeypatch):
    cs = _cityscapes_tree(root)
    script = _script("prepare_cityscapes")
    _check_interrupt_then_rerun(monkeypatch, lambda: script.main(["--cityscapes", cs, "--skip-panoptic"]), cs)
    # a panoptic split interrupted mid-way leaves neither its folder nor its JSON (only a temporary folder)
    with monkeypatch.context() as m:
        m.setattr(Image.Image, "save", lambda *a, **k: (_ for _ in ()).throw(Interrupted()))
        with pytest.raises(Interrupted):
            script.main(["--cityscapes", cs])
    assert not any(os.path.exists(os.path.join(cs, "gtFine", "cityscapes_panoptic_train" + e)) for e in ("", ".json"))
    script.main(["--cityscapes", cs])
    assert not os.path.exists(os.path.join(cs, "gtFine", ".tmp-cityscapes_panoptic_train"))
    # road (trainId 0) everywhere, then sky (trainId 10) drawn over columns 2-3
    np.testing.assert_array_equal(
        _read(os.path.join(cs, "gtFine", "val", "frankfurt", "frankfurt_000000_000019_gtFine_labelTrainIds.png")),
        [[0, 0, 10, 10], [0, 0, 10, 10]],
    )
    with open(os.path.join(cs, "gtFine", "cityscapes_panoptic_val.json")) as f:
        pan = json.load(f)
    assert sorted((s["id"], s["category_id"], s["area"]) for s in pan["annotations"][0]["segments_info"]) == [
        (7, 7, 2),
        (23, 23, 4),
        (26001, 26, 2),
    ]
    _check_second_run_skips(lambda: script.main(["--cityscapes", cs]), cs)
    register_all(root)
    (record,) = DatasetCatalog.get("cityscapes_fine_sem_seg_train")
    assert os.path.exists(record["sem_seg_file_name"])
    (record,) = DatasetCatalog.get("cityscapes_fine_panoptic_val")
    assert os.path.exists(record["pan_seg_file_name"]) and len(record["segments_info"]) == 3


def test_cityscapes_missing_input_names_path(root):
    with pytest.raises(FileNotFoundError, match=r"gtFine.*_gtFine_polygons\.json.*CITYSCAPES_DATASET"):
        _script("prepare_cityscapes").main(["--cityscapes", os.path.join(root, "nowhere")])


# ---------------------------------------------------------------- category tables the scripts rely on
def test_verified_category_tables():
    from universal_seg.data.datasets.categories.ade20k import ADE20K_150_CATEGORIES, ADE20K_INSTANCE_CATEGORIES
    from universal_seg.data.datasets.categories.mapillary import MAPILLARY_VISTAS_CATEGORIES

    things = {c["name"]: c["isthing"] for c in ADE20K_150_CATEGORIES}
    assert sum(things.values()) == 100 and things["stairs"] == 1 and things["blanket, cover"] == 0
    # instance class k (1-100) is the k-th thing in label order (the official mapping is monotonic)
    assert [c["name"] for c in ADE20K_INSTANCE_CATEGORIES] == [c["name"] for c in ADE20K_150_CATEGORIES if c["isthing"]]
    assert ADE20K_INSTANCE_CATEGORIES[30]["name"] == "stairs" and ADE20K_INSTANCE_CATEGORIES[99]["name"] == "flag"
    mapillary = {c["name"]: c["isthing"] for c in MAPILLARY_VISTAS_CATEGORIES}
    assert sum(mapillary.values()) == 37 and mapillary["On Rails"] == 0


@pytest.mark.parametrize("name", SCRIPTS)
def test_missing_input_from_the_command_line_is_one_line(name, tmp_path):
    """Before, a missing input ended in a traceback above its message; now it is the message alone, exit status 2."""
    flag = "--cityscapes" if name == "prepare_cityscapes" else "--root"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "datasets", name + ".py"), flag, str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(tmp_path / "empty") in errors[0], proc.stderr
