"""Registration (layout only, fake trees in a temp dir), clear missing-file errors, and the mini dataset."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import universal_seg.data  # noqa: F401
from universal_seg.data.datasets import register_all

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = os.path.join(REPO, "datasets", "mini")


def _png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


@pytest.fixture()
def fake_root(tmp_path):
    yield str(tmp_path)
    register_all()  # restore the default root for other tests


def test_missing_dataset_error_names_path_and_script(fake_root):
    register_all(fake_root)
    with pytest.raises(FileNotFoundError, match=r"prepare_mini\.py"):
        DatasetCatalog.get("mini_panoptic_val")


# a missing released file names its download (a preparation script cannot make it); a missing derived file names
# the script that makes it from the release
@pytest.mark.parametrize(
    "name, present, missing, how",
    [
        ("ade20k_sem_seg_val", [], "ADEChallengeData2016/images/validation", "download ADEChallengeData2016.zip"),
        (
            "ade20k_sem_seg_val",
            ["ADEChallengeData2016/images/validation"],
            "ADEChallengeData2016/annotations_detectron2/validation",
            "make it with `python datasets/prepare_ade20k_sem_seg.py`",
        ),
        (
            "ade20k_panoptic_val",
            ["ADEChallengeData2016/images/validation"],
            "ADEChallengeData2016/ade20k_panoptic_val.json",
            "make it with `python datasets/prepare_ade20k_pan_ins.py`",
        ),
        ("cityscapes_fine_sem_seg_train", [], "cityscapes/leftImg8bit/train", "download leftImg8bit_trainvaltest.zip"),
        (
            "cityscapes_fine_sem_seg_train",
            ["cityscapes/leftImg8bit/train"],
            "cityscapes/gtFine/train",
            "download gtFine_trainvaltest.zip",
        ),
        ("coco_2017_val_panoptic", [], "coco/annotations/panoptic_val2017.json", "download COCO 2017"),
        (
            "coco_2017_val_panoptic_with_sem_seg",
            ["coco/annotations/panoptic_val2017.json", "coco/panoptic_val2017", "coco/val2017"],
            "coco/panoptic_semseg_val2017",
            "make it with `python datasets/prepare_coco_semantic_from_panoptic.py`",
        ),
        ("mapillary_vistas_sem_seg_val", [], "mapillary_vistas/validation/images", "download Mapillary Vistas v1.2"),
    ],
)
def test_missing_file_error_names_the_download_or_the_script(fake_root, name, present, missing, how):
    for path in present:
        os.makedirs(os.path.join(fake_root, path))
    register_all(fake_root)
    with pytest.raises(FileNotFoundError) as info:
        DatasetCatalog.get(name)
    message = str(info.value)
    assert message.startswith(f"Dataset '{name}' needs '{os.path.join(fake_root, missing)}', which does not exist; ")
    assert how in message and "$DETECTRON2_DATASETS" in message


def test_ade20k_semantic_layout(fake_root):
    ade = os.path.join(fake_root, "ADEChallengeData2016")
    for split in ("training", "validation"):
        os.makedirs(os.path.join(ade, "images", split))
        Image.new("RGB", (4, 3)).save(os.path.join(ade, "images", split, "ADE_x_1.jpg"))
        _png(os.path.join(ade, "annotations_detectron2", split, "ADE_x_1.png"), np.zeros((3, 4)))
    register_all(fake_root)
    records = DatasetCatalog.get("ade20k_sem_seg_train")
    assert len(records) == 1 and records[0]["sem_seg_file_name"].endswith("training/ADE_x_1.png")
    meta = MetadataCatalog.get("ade20k_sem_seg_val")
    assert len(meta.stuff_classes) == 150 and len(meta.stuff_colors) == 150 and meta.ignore_label == 255
    assert meta.evaluator_type == "sem_seg"
    pan = MetadataCatalog.get("ade20k_panoptic_val")
    assert len(pan.thing_classes) == 100 and len(pan.stuff_classes) == 150
    assert len(MetadataCatalog.get("ade20k_instance_val").thing_classes) == 100


def _panoptic_tree(root, pan_json, pan_dir, image_dir, sem_dir, category_id):
    os.makedirs(image_dir, exist_ok=True)
    Image.new("RGB", (4, 3)).save(os.path.join(image_dir, "img1.jpg"))
    _png(os.path.join(pan_dir, "img1.png"), np.zeros((3, 4, 3)))
    if sem_dir:
        _png(os.path.join(sem_dir, "img1.png"), np.zeros((3, 4)))
    os.makedirs(os.path.dirname(pan_json), exist_ok=True)
    with open(pan_json, "w") as f:
        json.dump(
            {
                "images": [{"id": 1, "file_name": "img1.jpg", "height": 3, "width": 4}],
                "annotations": [
                    {
                        "image_id": 1,
                        "file_name": "img1.png",
                        "segments_info": [{"id": 5, "category_id": category_id, "iscrowd": 0}],
                    }
                ],
                "categories": [],
            },
            f,
        )


def test_coco_panoptic_with_sem_seg_layout(fake_root):
    c = os.path.join(fake_root, "coco")
    _panoptic_tree(
        fake_root,
        f"{c}/annotations/panoptic_val2017.json",
        f"{c}/panoptic_val2017",
        f"{c}/val2017",
        f"{c}/panoptic_semseg_val2017",
        category_id=1,
    )
    register_all(fake_root)
    (rec,) = DatasetCatalog.get("coco_2017_val_panoptic_with_sem_seg")
    assert rec["segments_info"][0]["category_id"] == 0 and rec["segments_info"][0]["isthing"]
    assert rec["sem_seg_file_name"].endswith("panoptic_semseg_val2017/img1.png")
    meta = MetadataCatalog.get("coco_2017_val_panoptic_with_sem_seg")
    assert len(meta.thing_classes) == 80 and len(meta.stuff_classes) == 133
    assert meta.evaluator_type == "coco_panoptic_seg"


def test_mapillary_layout(fake_root):
    v = os.path.join(fake_root, "mapillary_vistas", "validation")
    _panoptic_tree(
        fake_root, f"{v}/panoptic/panoptic_2018.json", f"{v}/panoptic", f"{v}/images", f"{v}/labels", category_id=1
    )  # panoptic id 1 = label 0 "Bird" (a thing)
    register_all(fake_root)
    assert DatasetCatalog.get("mapillary_vistas_sem_seg_val")[0]["sem_seg_file_name"].endswith("labels/img1.png")
    (rec,) = DatasetCatalog.get("mapillary_vistas_panoptic_val")
    assert rec["segments_info"][0] == {"id": 5, "category_id": 0, "iscrowd": 0, "isthing": True}
    assert MetadataCatalog.get("mapillary_vistas_sem_seg_val").ignore_label == 65
    assert len(MetadataCatalog.get("mapillary_vistas_sem_seg_val").stuff_classes) == 65


def test_coco_stuff_10k_layout(fake_root):
    base = os.path.join(fake_root, "coco", "coco_stuff_10k")
    os.makedirs(f"{base}/images_detectron2/train")
    Image.new("RGB", (4, 3)).save(f"{base}/images_detectron2/train/a.jpg")
    _png(f"{base}/annotations_detectron2/train/a.png", np.zeros((3, 4)))
    register_all(fake_root)
    assert len(DatasetCatalog.get("coco_2017_train_stuff_10k_sem_seg")) == 1
    assert len(MetadataCatalog.get("coco_2017_train_stuff_10k_sem_seg").stuff_classes) == 171


def test_cityscapes_layout(fake_root):
    cs = os.path.join(fake_root, "cityscapes")
    city = "aachen"
    stem = f"{city}_000000_000019"
    os.makedirs(f"{cs}/leftImg8bit/val/{city}")
    Image.new("RGB", (8, 4)).save(f"{cs}/leftImg8bit/val/{city}/{stem}_leftImg8bit.png")
    gt = f"{cs}/gtFine/val/{city}"
    labels = np.full((4, 8), 7, np.uint8)  # road
    inst = np.full((4, 8), 7, np.uint16)
    inst[:2, :2] = 26 * 1000 + 1  # a car instance
    os.makedirs(gt)
    Image.fromarray(inst).save(f"{gt}/{stem}_gtFine_instanceIds.png")
    _png(f"{gt}/{stem}_gtFine_labelIds.png", labels)
    _png(f"{gt}/{stem}_gtFine_labelTrainIds.png", np.zeros((4, 8)))
    with open(f"{gt}/{stem}_gtFine_polygons.json", "w") as f:
        json.dump({"imgHeight": 4, "imgWidth": 8, "objects": []}, f)
    register_all(fake_root)
    (rec,) = DatasetCatalog.get("cityscapes_fine_sem_seg_val")
    assert rec["sem_seg_file_name"].endswith("labelTrainIds.png")
    (rec,) = DatasetCatalog.get("cityscapes_fine_instance_seg_val")
    assert [a["category_id"] for a in rec["annotations"]] == [2]  # car = 3rd thing class
    assert MetadataCatalog.get("cityscapes_fine_panoptic_val").evaluator_type == "cityscapes_panoptic_seg"
    with pytest.raises(FileNotFoundError, match="prepare_cityscapes.py"):
        DatasetCatalog.get("cityscapes_fine_panoptic_val")
    # the downloaded files without the trainId labels that prepare_cityscapes.py makes (detectron2 asserts on them)
    os.remove(f"{gt}/{stem}_gtFine_labelTrainIds.png")
    with pytest.raises(FileNotFoundError, match=r"_gtFine_labelTrainIds\.png', and there are none; make it with "):
        DatasetCatalog.get("cityscapes_fine_sem_seg_val")


def test_mini_registrations():
    pan = DatasetCatalog.get("mini_panoptic_val_with_sem_seg")
    inst = DatasetCatalog.get("mini_instance_train")
    sem = DatasetCatalog.get("mini_sem_seg_train")
    assert len(pan) == len(inst) == len(sem) == 3
    assert sum(len(r["annotations"]) for r in inst) == 12  # labelme's 12 polygons
    things = [s for r in pan for s in r["segments_info"] if s["isthing"]]
    assert len(things) == 12
    meta = MetadataCatalog.get("mini_panoptic_val")
    assert meta.stuff_classes[0] == "background" and meta.stuff_classes[15] == "person"
    assert len(meta.thing_classes) == 20 and meta.thing_dataset_id_to_contiguous_id[15] == 15
    # semantic PNG equals labelme's VOC class PNG (values 0-20, 255 ignore) for 2011_000003: person, bottle
    assert set(np.unique(np.asarray(Image.open(sem[0]["sem_seg_file_name"])))) == {0, 5, 15, 255}
    assert MetadataCatalog.get("mini_instance_val").thing_classes[14] == "person"


def test_mini_video_clip():
    frames = sorted(os.listdir(os.path.join(MINI, "video", "frames")))
    labels = sorted(os.listdir(os.path.join(MINI, "video", "labels")))
    assert len(frames) == len(labels) == 5
    label = np.asarray(Image.open(os.path.join(MINI, "video", "labels", labels[0])))
    assert label.shape == (563, 1000) and set(np.unique(label)) == {0, 1, 2}


def test_prepare_mini_is_a_quick_noop_when_built():
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "datasets", "prepare_mini.py")],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert "up to date" in out.stdout


def test_panoptic_json_with_an_unknown_category_names_the_segment_and_the_fix(tmp_path):
    from universal_seg.data.datasets.panoptic_json import load_panoptic_json

    path = tmp_path / "pan.json"
    ann = {"image_id": 1, "file_name": "a.png", "segments_info": [{"id": 5, "category_id": 9, "iscrowd": 0}]}
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [ann]}))
    metadata = {"thing_dataset_id_to_contiguous_id": {1: 0}, "stuff_dataset_id_to_contiguous_id": {1: 0, 2: 1}}
    with pytest.raises(
        ValueError,
        match=r"uses category id 9 \(segment 5 of a.png\), which is not in the dataset's "
        r"category table \(ids \[1, 2\]\); fix the annotation",
    ):
        load_panoptic_json(str(path), "img", "pan", None, metadata)
