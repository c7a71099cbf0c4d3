#!/usr/bin/env python
"""Build datasets/mini/ from the PASCAL VOC examples of the labelme 6.3.1 sdist (3 photos + a 5-frame clip).

Layout (train and val are the same 3 images; a smoke-test set):
  mini/images/<stem>.jpg
  mini/panoptic/<stem>.png, mini/panoptic_{train,val}.json   COCO panoptic; "background" (VOC 0) is stuff,
                                                             the 20 VOC classes are things; category id = VOC value
  mini/semantic/<stem>.png                                   label values 0-20, 255 = ignore (from the panoptic PNG)
  mini/instances_{train,val}.json                            COCO instance polygons (labelme's), category ids 1-20
  mini/video/frames/<frame>.jpg, mini/video/labels/<frame>.png, mini/video/class_names.txt
                                                             5 street frames, labels 0 background, 1 car, 2 track
  mini/labelme/voc/<stem>.{jpg,json}, labels.txt             labelme's own annotations of the 3 photos and of the
  mini/labelme/street/<frame>.{jpg,json}, labels.txt         5 street frames (input of datasets/convert_labelme.py)
Idempotent and restartable: finished files are skipped; each file is written atomically; a stamp marks completion.
"""

import argparse
import io
import os
import subprocess
import sys
import tarfile
import time

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atomic import id2rgb, write_bytes, write_json, write_png  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSION = "6.3.1"
SDIST = f"labelme-{VERSION}.tar.gz"
EX = f"labelme-{VERSION}/examples/"
STAMP = ".complete-v2"
VOC = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "potted plant",
    "sheep",
    "sofa",
    "train",
    "tv/monitor",
]
VOC_COLORS = [
    (0, 0, 0),
    (128, 0, 0),
    (0, 128, 0),
    (128, 128, 0),
    (0, 0, 128),
    (128, 0, 128),
    (0, 128, 128),
    (128, 128, 128),
    (64, 0, 0),
    (192, 0, 0),
    (64, 128, 0),
    (192, 128, 0),
    (64, 0, 128),
    (192, 0, 128),
    (64, 128, 128),
    (192, 128, 128),
    (0, 64, 0),
    (128, 64, 0),
    (0, 192, 0),
    (128, 192, 0),
    (0, 64, 128),
]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", os.path.join(REPO, "datasets")),
        help="datasets root; the output goes to ROOT/mini (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    p.add_argument(
        "--cache",
        default=os.path.join(REPO, ".cache", "labelme"),
        help="where the labelme sdist is (downloaded with pip when missing)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even when the completion stamp exists")
    return p.parse_args()


def fetch_sdist(cache):
    path = os.path.join(cache, SDIST)
    if not os.path.exists(path):
        print(f"[prepare_mini] downloading {SDIST} into {cache}")
        # only labelme as an sdist (the wheel has no examples): ":all:" would also force pip to build labelme's
        # build dependencies from source, which takes many minutes without a pip cache
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                "labelme",
                f"labelme=={VERSION}",
                "-d",
                cache,
            ],
            check=True,
        )
    return path


def read_members(sdist):
    """All example files we need, as {path under examples/: bytes}."""
    wanted = (
        "instance_segmentation/data_dataset_voc/",
        "instance_segmentation/data_dataset_coco/annotations.json",
        "video_annotation/data_dataset_voc/JPEGImages/",
        "video_annotation/data_dataset_voc/SegmentationClassPNG/",
        "instance_segmentation/data_annotated/",
        "instance_segmentation/labels.txt",
        "video_annotation/data_annotated/",
        "video_annotation/labels.txt",
    )
    out = {}
    with tarfile.open(sdist) as tar:
        for m in tar.getmembers():
            rel = m.name[len(EX) :] if m.name.startswith(EX) else None
            if m.isfile() and rel and rel.startswith(wanted):
                out[rel] = tar.extractfile(m).read()
    return out


def png_array(data):
    return np.asarray(Image.open(io.BytesIO(data)))


def panoptic_of(cls, obj):
    """VOC class [H, W] (255 ignore) + object ids [H, W] -> (segment ids [H, W], segments_info).
    Each object becomes a thing segment of its majority class; class-0 pixels one "background" stuff segment;
    ignore pixels (and object-free non-background pixels) are void (0)."""
    ids = np.zeros(cls.shape, np.int64)
    segments = []

    def add(mask, category):
        ys, xs = np.nonzero(mask)
        sid = len(segments) + 1
        ids[mask] = sid
        segments.append(
            {
                "id": sid,
                "category_id": int(category),
                "iscrowd": 0,
                "area": int(mask.sum()),
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
            }
        )

    background = (cls == 0) & (obj == 0)
    if background.any():
        add(background, 0)
    for k in sorted(int(v) for v in np.unique(obj) if v not in (0, 255)):
        mask = (obj == k) & (cls != 255) & (cls != 0)
        if mask.any():
            add(mask, np.bincount(cls[mask]).argmax())
    return ids, segments


def build_still_images(files, out, stems, coco, bar):
    image_records, pan_annotations = [], []
    for image_id, stem in enumerate(stems, start=1):
        jpg = files[f"instance_segmentation/data_dataset_voc/JPEGImages/{stem}.jpg"]
        cls = png_array(files[f"instance_segmentation/data_dataset_voc/SegmentationClass/{stem}.png"])
        obj = png_array(files[f"instance_segmentation/data_dataset_voc/SegmentationObject/{stem}.png"])
        ids, segments = panoptic_of(cls, obj)
        semantic = np.full(cls.shape, 255, np.uint8)
        for s in segments:
            semantic[ids == s["id"]] = s["category_id"]
        for path, write in (
            (f"images/{stem}.jpg", lambda p: write_bytes(p, jpg)),
            (f"panoptic/{stem}.png", lambda p: write_png(p, id2rgb(ids))),
            (f"semantic/{stem}.png", lambda p: write_png(p, semantic)),
        ):
            if not os.path.exists(os.path.join(out, path)):
                write(os.path.join(out, path))
            bar.update(1)
        h, w = cls.shape
        image_records.append({"id": image_id, "file_name": f"{stem}.jpg", "height": h, "width": w})
        pan_annotations.append({"image_id": image_id, "file_name": f"{stem}.png", "segments_info": segments})
    return image_records, pan_annotations


def instance_annotations(coco, stems):
    """labelme's COCO polygons re-keyed to our image ids (1..3 by sorted stem) and annotation ids (1..n)."""
    stem_of = {img["id"]: os.path.splitext(os.path.basename(img["file_name"]))[0] for img in coco["images"]}
    annotations = []
    for a in sorted(coco["annotations"], key=lambda a: (stems.index(stem_of[a["image_id"]]), a["id"])):
        annotations.append(dict(a, id=len(annotations) + 1, image_id=stems.index(stem_of[a["image_id"]]) + 1))
    return annotations


def build_video(files, out, bar):
    frames = sorted(
        os.path.basename(p)[:-4] for p in files if p.startswith("video_annotation/data_dataset_voc/JPEGImages/")
    )
    for frame in frames:
        jpg = files[f"video_annotation/data_dataset_voc/JPEGImages/{frame}.jpg"]
        label = png_array(files[f"video_annotation/data_dataset_voc/SegmentationClassPNG/{frame}.png"]).astype(np.uint8)
        for path, write in (
            (f"video/frames/{frame}.jpg", lambda p: write_bytes(p, jpg)),
            (f"video/labels/{frame}.png", lambda p: write_png(p, label)),
        ):
            if not os.path.exists(os.path.join(out, path)):
                write(os.path.join(out, path))
            bar.update(1)
    write_bytes(os.path.join(out, "video/class_names.txt"), b"background\ncar\ntrack\n")


LABELME_FOLDERS = {"voc": "instance_segmentation", "street": "video_annotation"}


def copy_labelme(files, out, bar):
    """labelme's annotated examples as they are: mini/labelme/{voc,street}/ (JSON + image) and labels.txt."""
    for name, example in LABELME_FOLDERS.items():
        for path, data in sorted(files.items()):
            if path.startswith(f"{example}/data_annotated/") or path == f"{example}/labels.txt":
                target = os.path.join(out, "labelme", name, os.path.basename(path))
                if not os.path.exists(target):
                    write_bytes(target, data)
                bar.update(1)


def main():
    args = parse_args()
    out = os.path.join(args.root, "mini")
    if os.path.exists(os.path.join(out, STAMP)) and not args.force:
        print(f"[prepare_mini] {out} is up to date")
        return
    start = time.time()
    import json

    files = read_members(fetch_sdist(args.cache))
    coco = json.loads(files["instance_segmentation/data_dataset_coco/annotations.json"])
    stems = sorted(os.path.basename(p)[:-4] for p in files if "data_dataset_voc/JPEGImages/2011" in p)
    with tqdm(total=3 * len(stems) + 10 + 18, desc="mini dataset", unit="file") as bar:
        images, pan_annotations = build_still_images(files, out, stems, coco, bar)
        build_video(files, out, bar)
        copy_labelme(files, out, bar)
    categories = [
        {"id": i, "name": n, "isthing": int(i > 0), "color": list(VOC_COLORS[i]), "supercategory": "voc"}
        for i, n in enumerate(VOC)
    ]
    panoptic = {"images": images, "annotations": pan_annotations, "categories": categories}
    instances = {
        "images": images,
        "annotations": instance_annotations(coco, stems),
        "categories": [c for c in categories if c["isthing"]],
    }
    for split in ("train", "val"):
        write_json(os.path.join(out, f"panoptic_{split}.json"), panoptic)
        write_json(os.path.join(out, f"instances_{split}.json"), instances)
    write_bytes(os.path.join(out, STAMP), b"ok\n")
    print(f"[prepare_mini] built {out} in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
