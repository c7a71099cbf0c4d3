"""Your own data: the registration API, datasets/convert_labelme.py and tools/check_dataset.py, against hand-built
inputs whose pixels are known, pycocotools (RLE decoding, areas), panopticapi (PNG ids) and labelme's own export
of its examples (datasets/mini); every broken input of the own-data issue gives an error naming the file or a
counted skip."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import rgb2id
from PIL import Image
from pycocotools import mask as mask_util

import universal_seg.data  # noqa: F401
from universal_seg.data import (
    register_coco_instances,
    register_coco_panoptic,
    register_manifest,
    register_semantic_folder,
)
from universal_seg.data.datasets.categories.mini import VOC_CLASS_NAMES

MINI = ROOT / "datasets" / "mini"
H, W = 40, 60


def _module(path, name):
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert_labelme = _module("datasets/convert_labelme.py", "convert_labelme")
check_dataset = _module("tools/check_dataset.py", "check_dataset")


def rect(label, x0, y0, x1, y1, group_id=None):
    return {"label": label, "points": [[x0, y0], [x1, y1]], "shape_type": "rectangle", "group_id": group_id}


def poly(label, points, group_id=None):
    return {"label": label, "points": points, "shape_type": "polygon", "group_id": group_id}


def labelme_file(folder, stem, shapes, size=(H, W), image_size=None, image_bytes=None):
    """A labelme JSON (version 5 layout) next to a PNG image ``stem.png`` of ``image_size`` (default: ``size``)."""
    os.makedirs(folder, exist_ok=True)
    image_path = os.path.join(folder, stem + ".png")
    if image_bytes is not None:
        with open(image_path, "wb") as f:
            f.write(image_bytes)
    else:
        h, w = image_size or size
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(image_path)
    ann = {"version": "5.0.1", "flags": {}, "shapes": shapes, "imagePath": stem + ".png", "imageData": None}
    ann.update(imageHeight=size[0], imageWidth=size[1])
    with open(os.path.join(folder, stem + ".json"), "w") as f:
        json.dump(ann, f)


def labels_file(path, names=("__ignore__", "_background_", "car", "road")):
    with open(path, "w") as f:
        f.write("\n".join(names) + "\n")
    return str(path)


def run_labelme(tmp_path, *extra, labels=None, input_dir=None, stuff="road"):
    labels = labels or labels_file(tmp_path / "labels.txt")
    out = tmp_path / "out"
    status = convert_labelme.main(
        [str(input_dir or tmp_path / "in"), str(out), "--labels", labels, "--stuff", stuff, *extra]
    )
    return status, out


def test_labelme_hand_built_shapes_against_pycocotools_and_panopticapi(tmp_path, capsys):
    shapes = [
        rect("car", 10, 10, 29, 19),  # instance A: 20 x 10 pixels (PIL draws both corners)
        poly("car", [[40, 5], [49, 5], [49, 14], [40, 14]], group_id=1),  # instance B: 10 x 10 ...
        rect("car", 40, 20, 44, 24, group_id=1),  # ... + 5 x 5, the same group
        rect("road", 0, 30, 59, 39),  # stuff
        rect("road", 25, 15, 35, 35),  # drawn later: covers A's x 25..29, y 15..19
        rect("__ignore__", 0, 0, 4, 4),  # void
        poly("car", [[1, 1], [5, 5]]),  # < 3 points: skipped
        poly("car", [[50, 30], [59, 39], [59, 30], [50, 39]]),  # bow tie: skipped
        {"label": "car", "points": [[0, 0], [9, 9]], "shape_type": "line", "group_id": None},  # no area: skipped
    ]
    labelme_file(tmp_path / "in", "img1", shapes)
    status, out = run_labelme(tmp_path)
    printed = capsys.readouterr().out
    assert status == 0
    assert "skipped 1 polygons with fewer than 3 points: img1.json#6" in printed
    assert "skipped 1 self-intersecting polygons" in printed and "img1.json#7" in printed
    assert "skipped 1 line shapes (no area): img1.json#8" in printed

    background, car, road, void = 0, 1, 2, 255  # label values; category id = value + 1
    sem = np.full((H, W), background, np.uint8)
    car_a, car_b = np.zeros((H, W), bool), np.zeros((H, W), bool)
    car_a[10:20, 10:30] = True
    car_b[5:15, 40:50] = True
    car_b[20:25, 40:45] = True
    road_mask = np.zeros((H, W), bool)
    road_mask[30:40, 0:60] = True
    road_mask[15:36, 25:36] = True
    car_a &= ~road_mask
    sem[car_a | car_b] = car
    sem[road_mask] = road
    sem[0:5, 0:5] = void
    np.testing.assert_array_equal(np.asarray(Image.open(out / "semantic" / "img1.png")), sem)

    instances = json.loads((out / "instances_train.json").read_text())
    assert [c["name"] for c in instances["categories"]] == ["car"]
    by_area = sorted(instances["annotations"], key=lambda a: a["area"])
    for ann, expected in zip(by_area, (car_b, car_a)):
        decoded = mask_util.decode(ann["segmentation"]).astype(bool)
        np.testing.assert_array_equal(decoded, expected)
        assert ann["area"] == expected.sum() and ann["category_id"] == car + 1
    assert [a["area"] for a in by_area] == [125, 175]

    panoptic = json.loads((out / "panoptic_train.json").read_text())
    ids = rgb2id(np.asarray(Image.open(out / "panoptic" / "img1.png")))
    (entry,) = panoptic["annotations"]
    expected = {background + 1: [sem == background], road + 1: [road_mask], car + 1: [car_a, car_b]}
    got = {}
    for seg in entry["segments_info"]:
        mask = ids == seg["id"]
        assert seg["area"] == mask.sum()
        got.setdefault(seg["category_id"], []).append(mask)
    assert sorted(got) == sorted(expected)
    for cat, masks in expected.items():
        assert sorted(m.sum() for m in got[cat]) == sorted(m.sum() for m in masks)
        for m in masks:
            assert any(np.array_equal(m, g) for g in got[cat])
    assert (ids[0:5, 0:5] == 0).all()  # void

    names = register_manifest(str(out))
    assert set(names) == {"out_panoptic_train", "out_panoptic_train_with_sem_seg", "out_instance_train"} | {
        "out_sem_seg_train"
    }
    meta = MetadataCatalog.get("out_panoptic_train")
    assert meta.stuff_classes == ["background", "car", "road"] and meta.thing_classes == ["car"]
    for name in names:
        records, report = check_dataset.check(name)
        assert report.errors == [] and len(records) == 1


def test_labelme_mask_and_circle_shapes(tmp_path):
    import base64
    import io

    bitmap = np.zeros((3, 4), bool)
    bitmap[0, :] = bitmap[:, 0] = True  # 4 + 2 = 6 pixels
    png = io.BytesIO()
    Image.fromarray(bitmap).save(png, format="PNG")
    shapes = [
        {"label": "car", "points": [[7, 2], [10, 4]], "shape_type": "mask", "group_id": None,
         "mask": base64.b64encode(png.getvalue()).decode()},
        {"label": "road", "points": [[30, 20], [30, 28]], "shape_type": "circle", "group_id": None},
    ]  # fmt: skip
    labelme_file(tmp_path / "in", "m", shapes)
    status, out = run_labelme(tmp_path)
    assert status == 0
    sem = np.asarray(Image.open(out / "semantic" / "m.png"))
    expected_car = np.zeros((H, W), bool)
    expected_car[2:5, 7:11] = bitmap
    np.testing.assert_array_equal(sem == 1, expected_car)
    yy, xx = np.mgrid[:H, :W]
    d2 = (yy - 20) ** 2 + (xx - 30) ** 2
    road = sem == 2  # radius 8, drawn as labelme does (PIL ellipse with its outline): the disc, within radius 9
    assert road[d2 <= 8**2].all() and not road[d2 > 9**2].any()


def test_labelme_conversion_reproduces_labelmes_own_export_of_its_examples(tmp_path):
    """labelme's VOC export of its 3 annotated photos (datasets/mini/semantic: its SegmentationClass) and its COCO
    export (datasets/mini/instances_train.json: its 12 polygons) are the truth."""
    status, out = run_labelme(
        tmp_path,
        "--self-intersecting",
        "paint",
        labels=str(MINI / "labelme" / "voc" / "labels.txt"),
        input_dir=MINI / "labelme" / "voc",
        stuff="",
    )
    assert status == 0
    for png in sorted(os.listdir(MINI / "semantic")):
        ours = np.asarray(Image.open(out / "semantic" / png))
        theirs = np.asarray(Image.open(MINI / "semantic" / png))
        assert (ours == theirs).mean() > 0.9999, png
    ours = json.loads((out / "instances_train.json").read_text())
    theirs = json.loads((MINI / "instances_train.json").read_text())
    assert len(ours["annotations"]) == len(theirs["annotations"]) == 12
    name_of = {c["id"]: c["name"] for c in ours["categories"]}
    their_name = {c["id"]: c["name"] for c in theirs["categories"]}
    image_of = {i["id"]: i for i in theirs["images"]}
    our_image = {i["file_name"]: i["id"] for i in ours["images"]}
    for t in theirs["annotations"]:
        img = image_of[t["image_id"]]
        rle = mask_util.merge(mask_util.frPyObjects(t["segmentation"], img["height"], img["width"]))
        candidates = [
            a
            for a in ours["annotations"]
            if a["image_id"] == our_image[img["file_name"]]
            and name_of[a["category_id"]] == their_name[t["category_id"]]
        ]
        best = max(float(mask_util.iou([a["segmentation"]], [rle], [0])[0][0]) for a in candidates)
        assert best > 0.85, (img["file_name"], their_name[t["category_id"]], best)


@pytest.mark.parametrize(
    "case,expected",
    [
        ("truncated_jpeg", "cannot be decoded (truncated or not an image)"),
        ("zero_byte_image", "is an empty (0-byte) file"),
        ("unknown_label", "has label 'bus', which is not in --labels; add it to the labels file"),
        ("size_mismatch", "is 30x60 (HxW) but its annotation says 40x60; re-annotate it"),
        ("duplicate_names", "both annotate an image named 'img.png'; rename one image"),
    ],
)
def test_labelme_broken_inputs_are_one_line_errors_naming_the_file_and_nothing_is_registered(
    tmp_path, capsys, case, expected
):
    shapes = [rect("car", 1, 1, 5, 5)]
    folder = tmp_path / "in"
    if case == "truncated_jpeg":
        jpg = (MINI / "images" / "2011_000003.jpg").read_bytes()
        labelme_file(folder, "img", shapes, size=(338, 500), image_bytes=jpg[: len(jpg) // 2])
    elif case == "zero_byte_image":
        labelme_file(folder, "img", shapes, image_bytes=b"")
    elif case == "unknown_label":
        labelme_file(folder, "img", [rect("bus", 1, 1, 5, 5)])
    elif case == "size_mismatch":
        labelme_file(folder, "img", shapes, image_size=(30, W))
    elif case == "duplicate_names":
        labelme_file(folder / "a", "img", shapes)
        labelme_file(folder / "b", "img", shapes)
    labelme_file(folder, "good", shapes)
    status, out = run_labelme(tmp_path)
    err = capsys.readouterr().err
    assert status == 1
    lines = [line for line in err.splitlines() if line.startswith("[convert_labelme] error:")]
    assert len(lines) == 1 and expected in lines[0] and "img" in lines[0]
    assert "nothing registered" in err
    assert not (out / "dataset.json").exists()


def test_labelme_images_sharing_a_stem_are_refused_before_anything_is_written(tmp_path, capsys):
    """f.png and f.jpg (each with its own JSON) would both be labelled by panoptic/f.png and semantic/f.png."""
    folder = tmp_path / "in"
    labelme_file(folder, "f", [rect("car", 1, 1, 5, 5)])
    labelme_file(folder, "good", [rect("car", 1, 1, 5, 5)])
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder / "f.jpg")
    ann = json.loads((folder / "f.json").read_text())
    ann.update(imagePath="f.jpg", shapes=[rect("car", 20, 20, 30, 30)])
    (folder / "f_jpg.json").write_text(json.dumps(ann))
    status, out = run_labelme(tmp_path)
    err = capsys.readouterr().err
    assert status == 1
    lines = [line for line in err.splitlines() if line.startswith("[convert_labelme] error:")]
    assert len(lines) == 1, err
    for named in (str(folder / "f.json"), str(folder / "f_jpg.json"), "'f.png'", "'f.jpg'", "rename one image"):
        assert named in lines[0], (named, lines[0])
    assert not out.exists()  # refused before any image or label file was written


@pytest.mark.parametrize(
    "names,expected",
    [
        (("__ignore__", "_background_", "car", "road", "car"), "the class 'car' (lines 3, 5) more than once"),
        (("_background_", "car", "background"), "the class 'background' (lines 1, 3) more than once"),
    ],
)
def test_labelme_labels_file_with_a_name_twice_is_refused(tmp_path, names, expected):
    """Two categories of one name would be refused when the dataset is registered; the converter says which lines."""
    labelme_file(tmp_path / "in", "f", [rect("car", 1, 1, 5, 5)])
    labels = labels_file(tmp_path / "labels.txt", names)
    with pytest.raises(SystemExit, match=re.escape(expected) + "; keep one line per class name") as exc:
        run_labelme(tmp_path, labels=labels, stuff="")
    assert str(exc.value).count("\n") == 0 and str(labels) in str(exc.value)
    assert not (tmp_path / "out").exists()


class Interrupted(Exception):
    pass


def test_labelme_interrupted_run_leaves_no_partial_file_and_rerun_completes(tmp_path, monkeypatch):
    for i in range(3):
        labelme_file(tmp_path / "in", f"img{i}", [rect("car", 1, 1, 5 + i, 5)])
    status, out = run_labelme(tmp_path)
    assert status == 0 and (out / "dataset.json").exists()
    saves = {"n": 0}
    real_save = Image.Image.save

    def save_then_die(self, fp, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] == 3:  # the second image's panoptic PNG: killed half-way through writing it
            if hasattr(fp, "write"):  # an open file (the atomic writer's temporary file)
                fp.write(b"\x89PNG partial")
            else:
                with open(fp, "wb") as f:
                    f.write(b"\x89PNG partial")
            raise Interrupted(fp)
        return real_save(self, fp, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Image.Image, "save", save_then_die)
        with pytest.raises(Interrupted):
            run_labelme(tmp_path)
    files = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs]
    assert not any(os.path.basename(f).startswith(".tmp-") for f in files)
    assert not (out / "dataset.json").exists()  # the half-rewritten folder is not registered
    for f in files:
        if f.endswith(".png"):
            Image.open(f).load()  # every file there is complete
    status, out = run_labelme(tmp_path)
    assert status == 0 and len(json.loads((out / "panoptic_train.json").read_text())["images"]) == 3


def test_labelme_split_by_stems(tmp_path):
    for i in range(4):
        labelme_file(tmp_path / "in", f"f{i}", [rect("car", 1, 1, 5, 5)])
    status, out = run_labelme(tmp_path, "--val", "f1,f3")
    assert status == 0
    names = {
        s: [i["file_name"] for i in json.loads((out / f"panoptic_{s}.json").read_text())["images"]]
        for s in ("train", "val")
    }
    assert names == {"train": ["f0.png", "f2.png"], "val": ["f1.png", "f3.png"]}
    with pytest.raises(SystemExit, match="--val names \\['f9'\\]"):
        run_labelme(tmp_path, "--val", "f9")
    with pytest.raises(SystemExit, match=r"the hold-out \(--val-every 1\) takes all 4 images, leaving none to train"):
        run_labelme(tmp_path, "--val-every", "1")
    with pytest.raises(SystemExit, match=r"--val-every 5 holds out no image of 4 .*at most 4"):
        run_labelme(tmp_path, "--val-every", "5")


# ------------------------------------------------------------------------------------ registration API
def test_registration_checks_paths_at_call_time_and_categories(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"image_root '{tmp_path}/nope' does not exist"):
        register_semantic_folder("x", image_root=str(tmp_path / "nope"), label_root=str(tmp_path), class_names=["a"])
    with pytest.raises(ValueError, match=r"category names \['a'\] appear more than once"):
        register_semantic_folder("x", image_root=str(tmp_path), label_root=str(tmp_path), class_names=["a", "a"])
    with pytest.raises(ValueError, match="ignore_label 1 is the value of class 'b'"):
        register_semantic_folder(
            "x", image_root=str(tmp_path), label_root=str(tmp_path), class_names=["a", "b"], ignore_label=1
        )


def _edited_copy(tmp_path, source, edit, name):
    """A copy of the mini JSON ``source`` changed by ``edit(data)`` (in place), written to tmp_path/name."""
    data = json.loads((MINI / source).read_text())
    edit(data)
    (tmp_path / name).write_text(json.dumps(data))
    return str(tmp_path / name)


def _drop(entry, key):
    del entry[key]


def _entries_of_image_1(data):
    return [(data["images"][0], "id")] + [(a, "image_id") for a in data["annotations"] if a["image_id"] == 1]


INSTANCE_JSON_CASES = {
    # before: "cannot be loaded: 'bbox'" / "'height'" (bare KeyErrors), an AssertionError, an image silently
    # dropped, an annotation silently dropped, or a training crash ("Cannot find field 'gt_masks'")
    "no_bbox": (lambda d: _drop(d["annotations"][2], "bbox"), r"annotation \d+ has no bbox; COCO instance annotat"),
    "no_height": (lambda d: _drop(d["images"][1], "height"), r"images\[1\] has no height; COCO images need id, "),
    "image_id_twice": (
        lambda d: d["images"][1].update(id=d["images"][0]["id"]),
        r"image id \d+ is used by both '2011_000003.jpg' and '2011_000006.jpg'; give every image its own id",
    ),
    "annotation_id_twice": (
        lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]),
        r"annotation id \d+ is used more than once",
    ),
    "orphan": (
        lambda d: d["annotations"][0].update(image_id=999),
        r"belongs to image id 999, which 'images' does not list",
    ),
    "no_segmentation": (lambda d: _drop(d["annotations"][0], "segmentation"), "has no segmentation"),
    "empty_segmentation": (
        lambda d: d["annotations"][0].update(segmentation=[]),
        r"annotation \d+ of image '2011_0000\d\d.jpg' has an empty segmentation; give the object its polygon",
    ),
    # before: an AssertionError, a bare KeyError 'counts', a TypeError "object of type 'float' has no len()" and
    # detectron2's ValueError without the fix
    "ignore": (
        lambda d: d["annotations"][0].update(ignore=1),
        r"annotation \d+ of image '2011_0000\d\d.jpg' has 'ignore' 1, which is not supported; mark such regions",
    ),
    "rle_without_counts": (
        lambda d: d["annotations"][0].update(segmentation={"size": [2, 2]}),
        r"has an RLE segmentation without 'counts' and 'size'; give both",
    ),
    "flat_polygon": (
        lambda d: d["annotations"][0].update(segmentation=d["annotations"][0]["segmentation"][0]),
        r"neither an RLE dict nor a list of polygons; write each polygon as a list \[x1, y1, x2, y2, ...\] inside",
    ),
    "empty_bbox": (
        lambda d: d["annotations"][0].update(bbox=[]),
        r"has an empty bbox; give its box as \[x, y, width, height\]",
    ),
    "image_ids_of_two_types": (
        lambda d: [e.update({k: "first"}) for e, k in _entries_of_image_1(d)],
        r"its image ids mix types \(e.g. numbers and strings\); give every image an integer id",
    ),
}


@pytest.mark.parametrize("case", sorted(INSTANCE_JSON_CASES))
def test_coco_instance_json_problems_are_named_when_the_dataset_is_loaded(tmp_path, case):
    edit, message = INSTANCE_JSON_CASES[case]
    json_file = _edited_copy(tmp_path, "instances_train.json", edit, "ins.json")
    register_coco_instances(f"own_bad_{case}", image_root=str(MINI / "images"), json_file=json_file)
    try:
        with pytest.raises(ValueError, match=message):
            DatasetCatalog.get(f"own_bad_{case}")
    finally:
        DatasetCatalog.remove(f"own_bad_{case}")
        MetadataCatalog.remove(f"own_bad_{case}")


def _runs(mask):
    """Uncompressed COCO RLE counts of ``mask``: run lengths in column-major order, the first run of zeros."""
    flat, counts, value, run = mask.flatten(order="F"), [], 0, 0
    for pixel in flat:
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    return counts + [run]


def synthetic_instances_json(path):
    """A COCO instance JSON with every case detectron2's reader treats specially; returns (path, categories)."""
    mask = np.zeros((30, 40), np.uint8)
    mask[5:12, 8:20] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode()
    crowd = np.zeros((20, 20), np.uint8)
    crowd[2:9, 3:5] = 1
    categories = [{"id": 9, "name": "kite"}, {"id": 2, "name": "bus", "supercategory": "x"}, {"id": 5, "name": "ox"}]
    square = [[1.0, 1.0, 10.0, 1.0, 10.0, 10.0, 1.0, 10.0]]
    annotations = [
        # image 7: two polygons, the second of two points (left out); keypoints; unknown fields
        {"id": 40, "image_id": 7, "category_id": 2, "bbox": [1, 1, 9, 9], "iscrowd": 0, "area": 81.0,
         "segmentation": square + [[3.0, 3.0, 4.0, 4.0]], "keypoints": [2, 3, 2, 0, 0, 0, 7, 8, 1],
         "num_keypoints": 2, "attributes": {"occluded": True}},
        # image 3 (its id written as 3.0 here, as some exporters do): compressed RLE, no iscrowd, empty keypoints
        {"id": 41, "image_id": 3.0, "category_id": 9, "bbox": [8, 5, 12, 7], "segmentation": rle, "keypoints": []},
        # image 7: only a polygon of two points and one of odd length: the annotation is dropped
        {"id": 42, "image_id": 7, "category_id": 5, "bbox": [0, 0, 2, 2], "iscrowd": 0,
         "segmentation": [[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 0.0, 2.0]]},
        # image 3: uncompressed RLE (list counts), a crowd
        {"id": 43, "image_id": 3, "category_id": 5, "bbox": [3, 2, 2, 7], "iscrowd": 1,
         "segmentation": {"size": [20, 20], "counts": _runs(crowd)}},
        # image 7 again after image 3's: the per-image order is the file's
        {"id": 44, "image_id": 7, "category_id": 9, "bbox": [2, 2, 5, 5], "iscrowd": 0, "ignore": 0,
         "segmentation": [[2.0, 2.0, 7.0, 2.0, 7.0, 7.0]]},
        # image 7: a polygon of odd length next to a good one (only the odd one left out)
        {"id": 45, "image_id": 7, "category_id": 2, "bbox": [1, 1, 9, 9], "iscrowd": 0,
         "segmentation": [[1.0, 1.0, 5.0, 1.0, 5.0], *square]},
    ]  # fmt: skip
    data = {
        "info": {"description": "synthetic"},
        "licenses": [{"id": 1, "name": "CC"}],
        "images": [  # not in id order; image 12 has no annotation
            {"id": 7, "file_name": "a/seven.jpg", "height": 30, "width": 40, "license": 1, "coco_url": "x"},
            {"id": 12, "file_name": "twelve.jpg", "height": 20, "width": 20},
            {"id": 3, "file_name": "three.png", "height": 30, "width": 40, "date_captured": "2020"},
        ],
        "annotations": annotations,
        "categories": categories,
    }
    path.write_text(json.dumps(data))
    return str(path), categories


def _instance_sources(case, tmp_path):
    if case == "mini":
        return str(MINI / "instances_train.json"), str(MINI / "images")
    return synthetic_instances_json(tmp_path / "synthetic.json")[0], str(tmp_path / "images")


@pytest.mark.parametrize("case", ["mini", "synthetic"])
def test_coco_instance_records_equal_detectron2s_load_coco_json(tmp_path, case):
    """Our one-parse reader against detectron2's load_coco_json (pycocotools' parse) on the same file: the same
    records field by field, and the same count of annotations left out for want of a valid polygon."""
    from conftest import logged_records
    from detectron2.data.datasets import load_coco_json

    json_file, image_root = _instance_sources(case, tmp_path)
    os.makedirs(image_root, exist_ok=True)
    categories = json.loads(open(json_file).read())["categories"]
    contiguous = {c["id"]: i for i, c in enumerate(categories)}  # the JSON's order: what registration gives
    with logged_records("detectron2.data.datasets.coco") as theirs_log:
        theirs = load_coco_json(json_file, image_root, None)
    for record in theirs:
        for ann in record["annotations"]:
            ann["category_id"] = contiguous[ann["category_id"]]
    register_coco_instances(f"own_equal_{case}", image_root=image_root, json_file=json_file)
    try:
        with logged_records("universal_seg.data.datasets.custom") as ours_log:
            ours = DatasetCatalog.get(f"own_equal_{case}")
    finally:
        DatasetCatalog.remove(f"own_equal_{case}")
        MetadataCatalog.remove(f"own_equal_{case}")
    assert [r["image_id"] for r in ours] == [r["image_id"] for r in theirs]
    for mine, reference in zip(ours, theirs):
        assert mine == reference
    assert ours == theirs

    def dropped(messages, pattern):
        return [int(m) for text in messages for m in re.findall(pattern, text)]

    assert dropped(ours_log.messages, r"(\d+) annotations have no polygon of 3") == dropped(
        theirs_log.messages, r"Filtered out (\d+) instances without valid segmentation"
    )
    if case == "synthetic":  # the file holds what it is meant to test
        assert [r["image_id"] for r in theirs] == [3, 7, 12] and theirs[2]["annotations"] == []
        assert dropped(theirs_log.messages, r"Filtered out (\d+) instances") == [1]
        crowd = theirs[0]["annotations"][1]
        assert isinstance(crowd["segmentation"]["counts"], bytes)
        assert (mask_util.decode(crowd["segmentation"])[2:9, 3:5] == 1).all()
        assert mask_util.decode(crowd["segmentation"]).sum() == 14
        assert theirs[1]["annotations"][0]["keypoints"] == [2.5, 3.5, 2, 0.5, 0.5, 0, 7.5, 8.5, 1]


def test_coco_instance_json_is_opened_once_per_load(tmp_path, monkeypatch):
    """Before: the JSON was parsed for the checks and again by detectron2's reader (pycocotools), each parse of
    COCO train2017's 448 MB taking about 20 s and several GB."""
    import builtins

    json_file, categories = synthetic_instances_json(tmp_path / "synthetic.json")
    register_coco_instances("own_once", image_root=str(tmp_path), json_file=json_file)
    opened, real_open = [], builtins.open

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) == os.path.abspath(json_file):
            opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    try:
        records = DatasetCatalog.get("own_once")
        assert len(records) == 3 and len(opened) == 1
        DatasetCatalog.get("own_once")
        assert len(opened) == 2
    finally:
        DatasetCatalog.remove("own_once")
        MetadataCatalog.remove("own_once")


def test_coco_panoptic_json_problems_are_named_and_image_folders_kept(tmp_path):
    """Before: a repeated image id was reported as a size mismatch of another image's PNG, an image without an
    annotation was dropped without a word, and an image file_name with a folder lost the folder."""
    import logging

    from conftest import logged_records

    def register(json_file):
        register_coco_panoptic(
            "own_pan_json", image_root=str(tmp_path / "images"), panoptic_root=str(MINI / "panoptic"),
            panoptic_json=json_file,
        )  # fmt: skip
        return lambda: DatasetCatalog.get("own_pan_json")

    (tmp_path / "images" / "sub").mkdir(parents=True)
    try:
        for edit, message in (
            (lambda d: d["images"][1].update(id=d["images"][0]["id"]), r"image id \d+ is used by both '2011_000003"),
            (lambda d: d["annotations"][1].update(image_id=d["annotations"][0]["image_id"]), "more than one annot"),
            (lambda d: d["annotations"][0].update(image_id=999), "belongs to image id 999, which 'images' does"),
            (lambda d: _drop(d["annotations"][0], "segments_info"), r"annotations\[0\] has no segments_info"),
            (lambda d: _drop(d["annotations"][0]["segments_info"][0], "category_id"), "a segment of .* has no cat"),
        ):
            with pytest.raises(ValueError, match=message):
                register(_edited_copy(tmp_path, "panoptic_train.json", edit, "pan.json"))()

        def one_in_a_folder_one_unannotated(data):
            data["images"][0]["file_name"] = "sub/" + data["images"][0]["file_name"]
            data["annotations"].pop()

        def also_one_category_unmarked(data):
            one_in_a_folder_one_unannotated(data)
            del data["categories"][0]["isthing"]

        with logged_records("universal_seg.data", logging.WARNING) as warnings:
            load = register(_edited_copy(tmp_path, "panoptic_train.json", also_one_category_unmarked, "pan.json"))
            records = load()
        first = json.loads((MINI / "panoptic_train.json").read_text())["images"][0]["file_name"]
        assert records[0]["file_name"] == str(tmp_path / "images" / "sub" / first) and len(records) == 2
        messages = [r.getMessage() for r in warnings]
        assert any("1 of 3 images have no annotation and are left out" in m for m in messages)
        assert any("1 of 21 categories have no 'isthing' and are treated as things" in m for m in messages), messages
    finally:
        DatasetCatalog.remove("own_pan_json")
        MetadataCatalog.remove("own_pan_json")


def test_the_documented_registration_example_runs_on_the_bundled_data(monkeypatch):
    import textwrap

    from universal_seg.data.datasets import custom

    doc = custom.__doc__
    example = doc[doc.index("bundled data)::") + len("bundled data)::") : doc.index("Folders written by")]
    monkeypatch.chdir(ROOT)
    exec(textwrap.dedent(example), {})  # noqa: S102 - our own docstring
    pan, ins, sem = (DatasetCatalog.get(f"voc3_{k}") for k in ("panoptic", "instance", "sem_seg"))
    assert len(pan) == len(ins) == len(sem) == 3
    raw = json.loads((MINI / "instances_train.json").read_text())
    person = next(c["id"] for c in raw["categories"] if c["name"] == "person")
    things = MetadataCatalog.get("voc3_instance").thing_classes
    n_person = sum(a["category_id"] == person for a in raw["annotations"])
    assert sum(things[a["category_id"]] == "person" for r in ins for a in r["annotations"]) == n_person == 6
    assert MetadataCatalog.get("voc3_sem_seg").stuff_classes == VOC_CLASS_NAMES
    assert MetadataCatalog.get("voc3_panoptic").thing_classes == VOC_CLASS_NAMES[1:]
    for name in ("voc3_panoptic", "voc3_instance", "voc3_sem_seg"):
        assert check_dataset.check(name)[1].errors == []


# ------------------------------------------------------------------------------------ check_dataset
def _semantic_tree(tmp_path, label_values=(0, 1), label_size=(8, 10), image_bytes=None, extra=None):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(exist_ok=True)
    labels.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(images / "a.jpg")
    label = np.resize(np.array(label_values, np.uint8), label_size)
    Image.fromarray(label).save(labels / "a.png")
    if image_bytes is not None:
        (images / "a.jpg").write_bytes(image_bytes)
    register_semantic_folder("own_broken", image_root=str(images), label_root=str(labels), class_names=["a", "b"])


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"label_values": (0, 1, 7, 255)}, "has values [7] outside [0, 2) and the ignore label 255"),
        ({"label_size": (8, 9)}, "is 8x9 but its image is 8x10; re-create the label at the image's size"),
        ({"image_bytes": b""}, "is an empty (0-byte) file"),
        ({"image_bytes": b"\xff\xd8\xff\xe0 truncated"}, "cannot be decoded (truncated or not an image)"),
    ],
)
def test_check_dataset_reports_semantic_problems_and_exits_1(tmp_path, capsys, kwargs, expected):
    _semantic_tree(tmp_path, **kwargs)
    assert check_dataset.main(["own_broken"]) == 1
    out = capsys.readouterr().out
    assert expected in out and ("a.png" in out or "a.jpg" in out)


def test_check_dataset_panoptic_and_instance_problems(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(images / "a.jpg")
    (tmp_path / "pan").mkdir()
    ids = np.zeros((8, 10), np.int64)
    ids[:4] = 1
    ids[4:] = 2  # segment 2 is not in the JSON
    Image.fromarray(np.stack([ids, ids * 0, ids * 0], -1).astype(np.uint8)).save(tmp_path / "pan" / "a.png")
    cats = [{"id": 1, "name": "thing", "isthing": 1}, {"id": 2, "name": "stuff", "isthing": 0}]
    image = {"id": 1, "file_name": "a.jpg", "height": 8, "width": 10}
    pan = {"images": [image], "categories": cats}
    pan["annotations"] = [{"image_id": 1, "file_name": "a.png", "segments_info": [{"id": 1, "category_id": 1}]}]
    (tmp_path / "pan.json").write_text(json.dumps(pan))
    register_coco_panoptic(
        "own_pan", image_root=str(images), panoptic_root=str(tmp_path / "pan"), panoptic_json=str(tmp_path / "pan.json")
    )
    instances = {"images": [image], "categories": cats[:1]}
    instances["annotations"] = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "bbox": [0, 0, 2, 2],
            "iscrowd": 0,
            "area": 4,
            "segmentation": [[0, 0, 2, 0]],
        },
        {
            "id": 2,
            "image_id": 1,
            "category_id": 1,
            "bbox": [0, 0, 30, 2],
            "iscrowd": 0,
            "area": 4,
            "segmentation": [[0, 0, 30, 0, 30, 2]],
        },
    ]
    (tmp_path / "ins.json").write_text(json.dumps(instances))
    register_coco_instances("own_ins", image_root=str(images), json_file=str(tmp_path / "ins.json"))
    assert check_dataset.main(["own_pan", "own_ins"]) == 1
    out = capsys.readouterr().out
    assert "has segment ids [2] that its JSON entry does not list" in out
    assert "annotation 1 of image 'a.jpg' has a polygon with fewer than 3 points" in out
    assert "box [0, 0, 30, 2] lies outside the 8x10 image" in out
    # duplicate file names and a self-intersecting (bow-tie) polygon
    instances["images"] = [dict(image, file_name="a.jpg"), dict(image, id=2, file_name="sub/a.jpg")]
    (images / "sub").mkdir()
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(images / "sub" / "a.jpg")
    instances["annotations"].append(
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 4, 4], "iscrowd": 0, "area": 8,
         "segmentation": [[0, 0, 4, 4, 4, 0, 0, 4]]}
    )  # fmt: skip
    (tmp_path / "ins.json").write_text(json.dumps(instances))
    assert check_dataset.main(["own_ins"]) == 1
    out = capsys.readouterr().out
    assert f"images '{images}/a.jpg' and '{images}/sub/a.jpg' have the same file name; rename one." in out
    assert "warning: 1 self-intersecting polygons" in out and "annotation 3 of image 'sub/a.jpg'" in out
    instances["annotations"][1]["category_id"] = 5
    (tmp_path / "ins.json").write_text(json.dumps(instances))
    assert check_dataset.main(["own_ins", "no_such_dataset"]) == 2
    out = capsys.readouterr().out
    assert "category id 5, which is not among the registered categories [1]" in out
    assert "dataset 'no_such_dataset' is not registered" in out


@pytest.mark.parametrize(
    "script",
    [
        "datasets/convert_labelme.py",
        "datasets/convert_semantic_to_panoptic.py",
        "datasets/convert_coco_semantic_to_panoptic.py",
        "tools/check_dataset.py",
    ],
)
def test_help(script):
    out = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage:" in out.stdout


# ------------------------------------------------------------------------------------ semantic -> panoptic
convert_semantic = _module("datasets/convert_semantic_to_panoptic.py", "convert_semantic_to_panoptic")
convert_coco_semantic = _module("datasets/convert_coco_semantic_to_panoptic.py", "convert_coco_semantic_to_panoptic")


def _semantic_input(tmp_path, label, stem="s1", image_hw=None):
    (tmp_path / "img").mkdir(exist_ok=True)
    (tmp_path / "lab").mkdir(exist_ok=True)
    h, w = image_hw or label.shape
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(tmp_path / "img" / f"{stem}.png")
    Image.fromarray(label.astype(np.uint8)).save(tmp_path / "lab" / f"{stem}.png")
    (tmp_path / "classes.txt").write_text("sky\ncar\n")


def _two_cars():
    label = np.zeros((6, 8), np.uint8)  # sky
    label[1:3, 1:3] = 1  # car blob 1 (4 pixels)
    label[3:6, 5:8] = 1  # car blob 2 (9 pixels), not touching blob 1
    label[0, 7] = 255  # void
    return label


@pytest.mark.parametrize("components", [False, True])
def test_semantic_to_panoptic_segments_match_the_label_map(tmp_path, components):
    label = _two_cars()
    _semantic_input(tmp_path, label)
    out = tmp_path / "out"
    argv = [str(tmp_path / "img"), str(tmp_path / "lab"), str(out), "--classes", str(tmp_path / "classes.txt")]
    argv += ["--things", "car"] + (["--connected-components"] if components else [])
    assert convert_semantic.main(argv) == 0
    ids = rgb2id(np.asarray(Image.open(out / "panoptic" / "s1.png")))
    (entry,) = json.loads((out / "panoptic_train.json").read_text())["annotations"]
    car_masks = sorted((ids == s["id"] for s in entry["segments_info"] if s["category_id"] == 2), key=np.sum)
    sky = [ids == s["id"] for s in entry["segments_info"] if s["category_id"] == 1]
    assert len(sky) == 1 and np.array_equal(sky[0], label == 0)
    assert ids[0, 7] == 0
    if components:
        blob1, blob2 = np.zeros_like(label, bool), np.zeros_like(label, bool)
        blob1[1:3, 1:3], blob2[3:6, 5:8] = True, True
        assert [m.sum() for m in car_masks] == [4, 9]
        assert np.array_equal(car_masks[0], blob1) and np.array_equal(car_masks[1], blob2)
        anns = json.loads((out / "instances_train.json").read_text())["annotations"]
        decoded = sorted((mask_util.decode(a["segmentation"]).astype(bool) for a in anns), key=np.sum)
        assert np.array_equal(decoded[0], blob1) and np.array_equal(decoded[1], blob2)
    else:
        assert len(car_masks) == 1 and np.array_equal(car_masks[0], label == 1)
        assert not (out / "instances_train.json").exists()
    names = register_manifest(str(out))
    for name in names:
        assert check_dataset.check(name)[1].errors == []


@pytest.mark.parametrize(
    "case,expected",
    [
        ("value", "has values [7] outside [0, 2) and the ignore label 255; add classes to --classes"),
        ("size", "is 6x8 but its image is 6x9; re-create it at the image's size"),
        ("unpaired", "'s2' in"),
        ("same_stem", "'s1.jpg' and 's1.png' in"),
    ],
)
def test_semantic_to_panoptic_bad_inputs(tmp_path, capsys, case, expected):
    label = _two_cars()
    if case == "value":
        label[0, 0] = 7
    _semantic_input(tmp_path, label, image_hw=(6, 9) if case == "size" else None)
    if case == "unpaired":
        Image.fromarray(label).save(tmp_path / "lab" / "s2.png")
    if case == "same_stem":  # s1.png and s1.jpg would both pair with lab/s1.png: neither may be dropped silently
        Image.fromarray(np.full((6, 8, 3), 10, np.uint8)).save(tmp_path / "img" / "s1.jpg")
    out = tmp_path / "out"
    argv = [str(tmp_path / "img"), str(tmp_path / "lab"), str(out), "--classes", str(tmp_path / "classes.txt")]
    assert convert_semantic.main(argv) == 1
    err = capsys.readouterr().err
    assert expected in err and not (out / "dataset.json").exists()
    if case in ("unpaired", "same_stem"):  # the folders do not pair up: refused before anything is written
        assert not out.exists()


def test_semantic_to_panoptic_classes_file_with_a_name_twice_is_refused(tmp_path):
    _semantic_input(tmp_path, _two_cars())
    (tmp_path / "classes.txt").write_text("sky\ncar\n\nsky\n")  # line 3 is blank: 'sky' is on lines 1 and 4
    out = tmp_path / "out"
    argv = [str(tmp_path / "img"), str(tmp_path / "lab"), str(out), "--classes", str(tmp_path / "classes.txt")]
    with pytest.raises(SystemExit, match=re.escape("the class 'sky' (lines 1, 4) more than once; keep one line")):
        convert_semantic.main(argv)
    assert not out.exists()


def test_coco_instances_plus_semantic_stuff_to_panoptic(tmp_path, capsys):
    h, w = 20, 30
    (tmp_path / "img").mkdir()
    (tmp_path / "sem").mkdir()
    Image.fromarray(np.full((h, w, 3), 50, np.uint8)).save(tmp_path / "img" / "a.png")
    sem = np.zeros((h, w), np.uint8)  # 0 grass (stuff)
    sem[10:, :] = 1  # 1 road (stuff)
    sem[2:6, 2:6] = 2  # 2 person (a thing): no instance covers it -> void
    sem[0, :] = 255
    Image.fromarray(sem).save(tmp_path / "sem" / "a.png")
    (tmp_path / "classes.txt").write_text("grass\nroad\nperson\n")
    big = [[10, 5, 25, 5, 25, 15, 10, 15]]
    small = [[12, 8, 16, 8, 16, 12, 12, 12]]
    coco = {
        "images": [{"id": 7, "file_name": "a.png", "height": h, "width": w}],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "bag"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "segmentation": small, "iscrowd": 0, "bbox": [12, 8, 4, 4]},
            {"id": 2, "image_id": 7, "category_id": 1, "segmentation": big, "iscrowd": 0, "bbox": [10, 5, 15, 10]},
            {
                "id": 3,
                "image_id": 7,
                "category_id": 1,
                "segmentation": [[1, 1, 2, 2]],
                "iscrowd": 0,
                "bbox": [1, 1, 1, 1],
            },
        ],
    }
    (tmp_path / "ins.json").write_text(json.dumps(coco))
    out = tmp_path / "out"
    argv = [str(out), "--instances", str(tmp_path / "ins.json"), "--images", str(tmp_path / "img")]
    argv += ["--semantic", str(tmp_path / "sem"), "--semantic-classes", str(tmp_path / "classes.txt")]
    assert convert_coco_semantic.main(argv) == 0
    assert "skipped 1 polygons with fewer than 3 points: a.png:3" in capsys.readouterr().out
    # truth: pycocotools' rasterisation of the polygons, the larger painted first
    big_mask = mask_util.decode(mask_util.merge(mask_util.frPyObjects(big, h, w))).astype(bool)
    small_mask = mask_util.decode(mask_util.merge(mask_util.frPyObjects(small, h, w))).astype(bool)
    person, bag, grass, road = 0, 1, 2, 3  # things (JSON order), then stuff (file order)
    expected = np.full((h, w), 255, np.int64)
    expected[sem == 0], expected[sem == 1] = grass, road
    expected[big_mask] = person
    expected[small_mask] = bag
    np.testing.assert_array_equal(np.asarray(Image.open(out / "semantic" / "a.png")), expected)
    ids = rgb2id(np.asarray(Image.open(out / "panoptic" / "a.png")))
    (entry,) = json.loads((out / "panoptic_train.json").read_text())["annotations"]
    cats = {s["category_id"]: ids == s["id"] for s in entry["segments_info"]}
    assert sorted(cats) == [1, 2, 3, 4]
    assert np.array_equal(cats[person + 1], big_mask & ~small_mask) and np.array_equal(cats[bag + 1], small_mask)
    assert np.array_equal(cats[road + 1], (sem == 1) & ~big_mask)
    assert (ids[2:6, 2:6] == 0).all()  # person pixels of the semantic map without an instance: void
    instances = json.loads((out / "instances_train.json").read_text())
    assert sorted(a["category_id"] for a in instances["annotations"]) == [1, 2]
    for name in register_manifest(str(out)):
        assert check_dataset.check(name)[1].errors == []
    coco["annotations"][0]["category_id"] = 9
    (tmp_path / "ins.json").write_text(json.dumps(coco))
    assert convert_coco_semantic.main(argv) == 1
    assert "annotation 1 has category id 9, which is not in its 'categories'" in capsys.readouterr().err
    (tmp_path / "classes.txt").write_text("grass\nroad\n\ngrass\n")  # a class named twice: was two categories
    with pytest.raises(SystemExit, match=r"lists the class 'grass' \(lines 1, 4\) more than once"):
        convert_coco_semantic.main(argv)


def test_evaluation_says_whether_its_images_were_trained_on(tmp_path):
    from universal_seg.evaluation.build import held_out_notice

    assert held_out_notice("mini_panoptic_val", ["mini_panoptic_train"]).startswith(
        "The metrics of 'mini_panoptic_val' are TRAINING-SET metrics: all 3 of its images are in DATASETS.TRAIN"
    )
    for i in range(3):
        labelme_file(tmp_path / "in", f"f{i}", [rect("car", 1, 1, 5, 5)])
    status, out = run_labelme(tmp_path, "--val", "f2", "--name", "heldout")
    register_manifest(str(out))
    assert "are on held-out images: none of its 1 images" in held_out_notice(
        "heldout_panoptic_val", ["heldout_panoptic_train"]
    )
    register_semantic_folder(
        "heldout_all",
        image_root=str(out / "images"),
        label_root=str(out / "semantic"),
        class_names=["bg", "car", "road"],
        image_ext=".png",
    )
    assert "mix training and held-out images: 1 of its 3 images" in held_out_notice(
        "heldout_all", ["heldout_panoptic_val"]
    )


def test_polygon_crosses_hand_cases():
    from universal_seg.data.datasets.geometry import polygon_crosses

    assert not polygon_crosses([[0, 0], [4, 0], [4, 4], [0, 4]])  # square
    assert not polygon_crosses([[0, 0], [4, 0], [4, 1], [1, 1], [1, 4], [0, 4]])  # L shape (concave)
    assert polygon_crosses([[0, 0], [4, 4], [4, 0], [0, 4]])  # bow tie
    star = [[np.cos(a), np.sin(a)] for a in np.pi / 2 + 4 * np.pi / 5 * np.arange(5)]  # pentagram
    assert polygon_crosses(star)


def test_tools_register_your_datasets_with_register_file(tmp_path):
    """--register FILE runs your register_* calls in the tool's process (every process of a multi-process run):
    train_net then knows the name (it stops at the class-count check, naming the registered dataset: 21 classes,
    NUM_CLASSES 3), and the demo refuses to label a 3-class model's drawing with that dataset's 21 names. A missing
    file is one line."""
    registration = tmp_path / "my_data.py"
    registration.write_text(
        "from universal_seg.data import register_coco_panoptic\n"
        f"register_coco_panoptic('regfile_train', image_root={str(MINI / 'images')!r}, "
        f"panoptic_root={str(MINI / 'panoptic')!r}, panoptic_json={str(MINI / 'panoptic_train.json')!r})\n"
    )
    config = str(ROOT / "configs" / "mini" / "panoptic" / "m2f_r18.yaml")
    common = [sys.executable]
    train = [
        str(ROOT / "tools" / "train_net.py"),
        "--register",
        str(registration),
        "--config-file",
        config,
        "DATASETS.TRAIN",
        "('regfile_train',)",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
        "3",
        "OUTPUT_DIR",
        str(tmp_path / "out"),
    ]
    proc = subprocess.run(common + train, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("error: MODEL.SEM_SEG_HEAD.NUM_CLASSES is 3 but training dataset 'regfile_train' has 21 classes")
    )
    demo = [
        str(ROOT / "demo" / "demo.py"),
        "--register",
        str(registration),
        "--config-file",
        config,
        "--input",
        str(sorted((MINI / "images").glob("*.jpg"))[0]),
        "--output",
        str(tmp_path / "vis"),
        "--opts",
        "MODEL.DEVICE",
        "cpu",
        "DATASETS.TEST",
        "('regfile_train',)",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
        "3",
    ]
    proc = subprocess.run(common + demo, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "error: the model has 3 classes (MODEL.SEM_SEG_HEAD.NUM_CLASSES) but dataset 'regfile_train', whose class "
            "names label the drawings, has 21"
        )
    )
    train[2] = str(tmp_path / "nope.py")
    proc = subprocess.run(common + train, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: --register {str(tmp_path / 'nope.py')!r} does not exist; give the Python file with your register_* "
        "calls."
    )
