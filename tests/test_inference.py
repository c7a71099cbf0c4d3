"""universal_seg.Predictor, tiled inference on real models, and tools/predict.py -> tools/evaluate.py, on the CPU with
the mini configs.

Truths: one-by-one predictions (for batches, bit for bit; the network's raw outputs captured by a hook),
whole-image inference (for tiling), detectron2's in-training evaluators (COCOPanopticEvaluator, COCOEvaluator,
SemSegEvaluator) on the same model (for the written files), the input files themselves (for errors and restarts).
"""

import importlib.util
import json
import logging
import os
import time

import numpy as np
import pytest
import torch
from conftest import logged_records
from PIL import Image

import universal_seg
import universal_seg.data  # noqa: F401
import universal_seg.modeling  # noqa: F401
from universal_seg.config import load_config
from universal_seg.inference import ImageTooLargeError, InputError, Predictor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool(name: str):
    """Imports tools/<name>.py as a module (under a private name)."""
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


evaluate_tool, predict_tool = load_tool("evaluate"), load_tool("predict")

M2F = os.path.join(ROOT, "configs", "mini", "panoptic", "m2f_r18.yaml")
SEGFORMER = os.path.join(ROOT, "configs", "mini", "semantic", "segformer_b0.yaml")
IMAGES = sorted(os.path.join(ROOT, "datasets", "mini", "images", f) for f in os.listdir(f"{ROOT}/datasets/mini/images"))
MINI = os.path.join(ROOT, "datasets", "mini")


def m2f_cfg(*opts):
    """The mini Mask2Former with all three outputs, every query a panoptic segment candidate."""
    return load_config(
        M2F,
        [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.MASK_FORMER.TEST.INSTANCE_ON",
            "True",
            "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD",
            "0.0",
            "INPUT.MIN_SIZE_TEST",
            "160",
            "INPUT.MAX_SIZE_TEST",
            "256",
            *opts,
        ],
    )


@pytest.fixture(scope="module")
def m2f_predictor():
    torch.manual_seed(0)
    return Predictor(m2f_cfg(), weights="")


def mixed_inputs():
    """Five inputs of three padded sizes, of every input type: paths, an RGB array, a BGR array via a tensor, a PIL
    image (two images share the first's size, one the crop's)."""
    a = np.asarray(Image.open(IMAGES[1]).convert("RGB"))
    return [IMAGES[1], IMAGES[0], a[:, ::-1].copy(), Image.open(IMAGES[2]), a[:150, :200].copy()]


class RawOutputs:
    """Forward hook on sem_seg_head: records pred_logits [B, Q, K+1] and pred_masks [B, Q, h, w] per image."""

    def __init__(self, model):
        self.images = []
        self.handle = model.sem_seg_head.register_forward_hook(self)

    def __call__(self, module, inputs, outputs):
        for logits, masks in zip(outputs["pred_logits"], outputs["pred_masks"]):
            self.images.append((logits.clone(), masks.clone()))


def test_batched_predictions_equal_one_by_one(m2f_predictor):
    """batch_size 3 on five images of mixed sizes and every input type: the network's raw outputs, the semantic
    scores, the instances (masks, scores, classes, boxes) and the panoptic maps are bit for bit the one-by-one
    results (CPU batches run under universal_seg.ops.batch_invariant). Before it, 4-13 mask pixels per image and raw
    logits up to 1e-4 differed: PyTorch's convolution backend choice and its channels-last GroupNorm depend on N."""
    predictor, inputs = m2f_predictor, mixed_inputs()
    prepared = [predictor.prepare(x) for x in inputs]
    groups = {}
    for i, x in enumerate(prepared):
        groups.setdefault(predictor._padded_size(x["image"]), []).append(i)
    assert len(groups) >= 2 and max(len(g) for g in groups.values()) >= 3  # mixed sizes, and real batches
    calls = []
    counter = predictor.model.register_forward_pre_hook(lambda m, args: calls.append(len(args[0])))
    hook = RawOutputs(predictor.model)
    try:
        predictor.batch_size = 3
        batched = predictor(inputs)
        batched_raw, hook.images = hook.images, []
        predictor.batch_size = 1
        single = [predictor(x) for x in inputs]
        single_raw = hook.images
    finally:
        hook.handle.remove()
        counter.remove()
    expected_calls = [len(g[k : k + 3]) for g in groups.values() for k in range(0, len(g), 3)]
    assert calls == expected_calls + [1] * len(inputs)
    order = [i for g in groups.values() for i in g]  # the images in batched forward order
    for pos, i in enumerate(order):
        for b, s in zip(batched_raw[pos], single_raw[i]):  # pred_logits, pred_masks
            assert torch.equal(b, s), f"image {i}: raw outputs differ by {(b - s).abs().max():.2e}"
    for i, (b, s) in enumerate(zip(batched, single)):
        assert b["sem_seg"].shape == s["sem_seg"].shape == (21, *np.asarray(load(inputs[i])).shape[:2])
        assert torch.equal(b["sem_seg"], s["sem_seg"])
        bi, si = b["instances"], s["instances"]
        assert len(bi) == 20 and torch.equal(bi.pred_classes, si.pred_classes)
        assert torch.equal(bi.scores, si.scores) and torch.equal(bi.pred_boxes.tensor, si.pred_boxes.tensor)
        assert torch.equal(bi.pred_masks, si.pred_masks), f"image {i}: {(bi.pred_masks ^ si.pred_masks).sum()} pixels"
        (bp, binfo), (sp, sinfo) = b["panoptic_seg"], s["panoptic_seg"]
        assert binfo == sinfo and len(sinfo) >= 1 and torch.equal(bp, sp)


def load(x):
    return Image.open(x) if isinstance(x, str) else x


def test_bad_inputs_are_one_sentence_errors_naming_the_input(m2f_predictor, tmp_path):
    predictor = m2f_predictor
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a JPEG")
    rgb = np.zeros((40, 50, 3), np.uint8)
    cases = [
        (str(broken), "cannot read image .*broken.jpg"),
        (str(tmp_path / "missing.png"), "missing.png' does not exist"),
        (12, "input 1 \\(int\\) is not a supported image type"),
        (np.zeros((0, 50, 3), np.uint8), "input 1 \\(ndarray\\) is empty"),
        (np.zeros((40, 50), np.uint8), "shape \\[40, 50\\]; an array must be \\[H, W, 3\\]"),
        (np.zeros((40, 50, 4), np.uint8), "shape \\[40, 50, 4\\]"),
        (np.zeros((40, 50, 3), np.float32), "dtype float32; pass uint8"),
        (torch.zeros(40, 50, 3, dtype=torch.uint8), "a tensor must be \\[3, H, W\\]"),
    ]
    for bad, message in cases:
        with pytest.raises(InputError, match=message):
            predictor([rgb, bad])  # checked before anything runs
    with pytest.raises(InputError, match="list of images is empty"):
        predictor([])
    with pytest.raises(InputError, match="format must be one of"):
        predictor(rgb, format="HSV")


def test_pil_images_are_read_as_training_reads_their_files(tmp_path):
    """Before: a PIL image of an EXIF-rotated JPEG was predicted sideways (its path was turned upright), and 16-bit
    or float PIL images were refused. Now a PIL image gives the pixels its file gives in training."""
    from universal_seg.inference.predictor import load_image

    rng = np.random.RandomState(0)
    rgb = rng.randint(0, 256, (4, 7, 3)).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # the stored image is turned 90 degrees clockwise for display
    Image.fromarray(rgb).save(tmp_path / "rotated.png", exif=exif.tobytes())
    v16 = rng.randint(0, 65536, (3, 5)).astype(np.uint16)
    Image.fromarray(v16).save(tmp_path / "deep.png")
    deep = np.floor(v16.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    for name, expected in (("rotated.png", np.rot90(rgb, k=-1)), ("deep.png", np.repeat(deep[..., None], 3, 2))):
        with Image.open(tmp_path / name) as pil:
            np.testing.assert_array_equal(load_image(pil), expected, err_msg=name)
        np.testing.assert_array_equal(load_image(str(tmp_path / name)), expected, err_msg=name)
    raw = Image.fromarray(np.array([[0.0, 4000.0]], np.float32), "F")
    with pytest.raises(InputError, match=r"input \(Image\): a floating-point image with values in \[0, 4000\]"):
        load_image(raw)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"cannot read image .*empty.png \(UnidentifiedImageError"):
        load_image(str(tmp_path / "empty.png"))


def test_universal_seg_exports_the_predictor_and_formats_agree(m2f_predictor):
    """universal_seg.Predictor is the class; an RGB array, its BGR version and the PIL image give one result."""
    assert universal_seg.Predictor is Predictor
    rgb = np.asarray(Image.open(IMAGES[0]).convert("RGB"))
    a = m2f_predictor(rgb)["sem_seg"]
    b = m2f_predictor(np.ascontiguousarray(rgb[:, :, ::-1]), format="BGR")["sem_seg"]
    c = m2f_predictor(torch.from_numpy(rgb).permute(2, 0, 1))["sem_seg"]
    assert torch.equal(a, b) and torch.equal(a, c)


def test_whole_image_above_the_pixel_budget_is_refused_naming_tiling():
    torch.manual_seed(0)
    predictor = Predictor(m2f_cfg("TEST.MAX_OUTPUT_PIXELS", "10000"), weights="")
    small = np.zeros((80, 100, 3), np.uint8)
    assert predictor(small)["sem_seg"].shape == (21, 80, 100)
    with pytest.raises(ImageTooLargeError, match="101x100 = 0.0 Mpx, above TEST.MAX_OUTPUT_PIXELS .*TEST.TILING"):
        predictor(np.zeros((101, 100, 3), np.uint8))
    # tiling on, but the network input fits one tile, so it would run whole: before, the budget was skipped
    whole = Predictor(m2f_cfg("TEST.MAX_OUTPUT_PIXELS", "10000", "TEST.TILING.ENABLED", "True"), weights="")
    with pytest.raises(ImageTooLargeError, match=r"fits one 512x512 tile, so it would run whole; set INPUT.MIN_SIZE"):
        whole(np.zeros((101, 100, 3), np.uint8))
    opts = ["TEST.TILING.ENABLED", "True", "TEST.TILING.TILE_SIZE", "(64, 64)", "TEST.TILING.OVERLAP", "16"]
    tiled = Predictor(m2f_cfg("TEST.MAX_OUTPUT_PIXELS", "10000", "INPUT.MIN_SIZE_TEST", "0", *opts), weights="")
    assert tiled(np.zeros((101, 100, 3), np.uint8))["sem_seg"].shape == (21, 101, 100)  # tiled: no budget


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The mini Mask2Former trained for 40 iterations at 128-pixel crops, batch 1 (seeded), saved; its config with
    all three outputs, evaluating on mini_panoptic_val_with_sem_seg."""
    from detectron2.utils.env import seed_all_rng

    from universal_seg.engine import Trainer

    out = tmp_path_factory.mktemp("trained")
    opts = ["INPUT.IMAGE_SIZE", "128", "SOLVER.MAX_ITER", "40", "SOLVER.STEPS", "(35,)", "SOLVER.IMS_PER_BATCH", "1"]
    opts += ["MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "1024", "DATALOADER.NUM_WORKERS", "0", "SEED", "0"]
    opts += ["SOLVER.CHECKPOINT_PERIOD", "100000", "OUTPUT_DIR", str(out)]
    cfg = m2f_cfg(*opts)  # OBJECT_MASK_THRESHOLD 0: a briefly trained model's queries are not yet confident
    seed_all_rng(0)  # the data order too (detectron2's TrainingSampler draws its seed from numpy)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    t0 = time.perf_counter()
    trainer.train()
    print(f"trained in {time.perf_counter() - t0:.0f} s")
    weights = str(out / "model_final.pth")
    assert os.path.isfile(weights)
    cfg.MODEL.WEIGHTS = weights
    return cfg


def test_predict_then_evaluate_equals_the_in_training_evaluators(trained, tmp_path):
    """tools/predict.py on the mini images (batch 2), then tools/evaluate.py on its files: PQ, mask AP and mIoU
    equal those of detectron2's evaluators run by Trainer.test on the same model, to 1e-6."""
    from universal_seg.engine import Trainer

    cfg = trained
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", cfg.MODEL.WEIGHTS]
    opts += ["MODEL.MASK_FORMER.TEST.INSTANCE_ON", "True", "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "256"]
    opts += ["MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.0"]
    out = tmp_path / "pred"
    argv = ["--config-file", M2F, "--input", os.path.join(MINI, "images"), "--output", str(out)]
    argv += ["--dataset", "mini_panoptic_val", "--batch-size", "2", "--opts", *opts]
    assert predict_tool.main(argv) == 0
    assert json.load(open(out / "errors.json")) == {}

    def evaluate(*args):
        assert evaluate_tool.main(["--output", str(tmp_path / "m.json"), *args]) == 0
        return json.load(open(tmp_path / "m.json"))

    offline = {
        "sem_seg": evaluate(
            "semantic", "--gt-folder", f"{MINI}/semantic", "--pred-folder", str(out / "semantic"), "--num-classes", "21"
        ),
        "panoptic_seg": evaluate(
            "panoptic",
            *("--gt-json", f"{MINI}/panoptic_val.json", "--gt-folder", f"{MINI}/panoptic"),
            *("--pred-json", str(out / "panoptic.json"), "--pred-folder", str(out / "panoptic")),
        ),
        "segm": evaluate("instance", "--gt", f"{MINI}/instances_val.json", "--pred", str(out / "instances.json"))[
            "segm"
        ],
    }
    predictor = Predictor(cfg)
    online = Trainer.test(cfg, predictor.model)
    print(
        {k: {m: round(v, 4) for m, v in offline[k].items() if m in ("PQ", "SQ", "AP", "AP50", "mIoU")} for k in offline}
    )
    assert offline["sem_seg"]["mIoU"] > 5  # not a comparison of zeros (PQ and AP of so short a training may be 0)
    for key, metrics in (
        ("panoptic_seg", ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")),
        ("sem_seg", ("mIoU", "fwIoU", "mACC", "pACC")),
    ):
        for m in metrics:
            assert offline[key][m] == pytest.approx(online[key][m], abs=1e-6), (key, m)
    for m in ("AP", "AP50", "AP75"):
        assert offline["segm"][m] == pytest.approx(online["segm"][m], abs=1e-6), m


def tiled_and_whole(cfg, image, *opts):
    """Outputs of one image at its native size (no test resize) whole and with TEST.TILING (256 tiles, 96 overlap)."""
    cfg = cfg.clone()
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", "0", *opts])
    whole = Predictor(cfg)
    cfg.merge_from_list(["TEST.TILING.ENABLED", "True", "TEST.TILING.TILE_SIZE", "[256, 256]"])
    cfg.merge_from_list(["TEST.TILING.OVERLAP", "96", "TEST.TILING.BATCH_SIZE", "3"])
    tiled = Predictor(cfg)
    calls = []
    hook = tiled.model.register_forward_pre_hook(lambda m, args: calls.append([x["image"].shape for x in args[0]]))
    out = tiled(image), whole(image)
    hook.remove()
    return out, calls


def semantic_agreement(a, b):
    """(max abs difference, mean abs difference, fraction of pixels with the same argmax) of [K, H, W] maps."""
    diff = (a - b).abs()
    return float(diff.max()), float(diff.mean()), float((a.argmax(0) == b.argmax(0)).float().mean())


def test_tiled_inference_of_an_image_that_fits_whole(trained):
    """The briefly trained mini Mask2Former on a 375x500 photo at native size: 6 tiles of 256x256 in 2 batches of 3.
    Stated tolerance (tiles see less context than the whole image; measured over two trainings: mean 0.043 / 0.038,
    same argmax on 84.6% / 73.6% of pixels): the tiled semantic scores are within a mean 0.06 of the whole-image
    scores, with the same argmax on over 60% of pixels; panoptic and instance outputs are merged into full-size
    results."""
    (tiled, whole), calls = tiled_and_whole(trained, IMAGES[1])
    assert [len(c) for c in calls] == [3, 3] and all(s == (3, 256, 256) for c in calls for s in c)
    assert tiled["sem_seg"].shape == whole["sem_seg"].shape == (21, 375, 500)
    max_diff, mean_diff, same = semantic_agreement(tiled["sem_seg"], whole["sem_seg"])
    print(f"Mask2Former tiled vs whole: max {max_diff:.4f}, mean {mean_diff:.4f}, same argmax {same:.4f}")
    assert mean_diff < 0.06 and same > 0.6
    seg, infos = tiled["panoptic_seg"]
    assert seg.shape == (375, 500) and [s["id"] for s in infos] == list(range(1, len(infos) + 1))
    assert set(torch.unique(seg).tolist()) - {0} == {s["id"] for s in infos}
    inst = tiled["instances"]
    assert inst.pred_masks.shape[1:] == (375, 500) and len(inst) <= 20
    assert torch.all(inst.scores[:-1] >= inst.scores[1:])


def test_tiled_inference_of_a_per_pixel_model():
    """SegFormer-B0 (mini, untrained, seeded) on the 375x500 photo: the tiles' logits average to class
    probabilities (summing to 1) within a mean 0.01 of the whole image's (measured 0.007; untrained, its
    near-uniform probabilities make the argmax meaningless)."""
    torch.manual_seed(0)
    cfg = load_config(SEGFORMER, ["MODEL.DEVICE", "cpu"])
    (tiled, whole), calls = tiled_and_whole(cfg, IMAGES[1])
    assert [len(c) for c in calls] == [3, 3]
    max_diff, mean_diff, same = semantic_agreement(tiled["sem_seg"], whole["sem_seg"])
    print(f"SegFormer tiled vs whole: max {max_diff:.4f}, mean {mean_diff:.4f}, same argmax {same:.4f}")
    assert torch.allclose(tiled["sem_seg"].sum(0), torch.ones(375, 500), atol=1e-5)
    assert mean_diff < 0.01


def test_predict_tool_reports_failures_goes_on_and_restarts(tmp_path, capsys):
    """A folder with two photos and a broken file: the photos are written, the broken file is listed in
    errors.json and on stderr, exit status 1. A second run skips the finished photos (files untouched); an
    unwritable output folder is exit status 2 with one line naming it."""
    folder = tmp_path / "in"
    folder.mkdir()
    for path in IMAGES[:2]:
        (folder / os.path.basename(path)).write_bytes(open(path, "rb").read())
    (folder / "broken.png").write_bytes(b"not a PNG")
    out = tmp_path / "out"
    opts = ["--opts", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", "128"]
    argv = ["--config-file", M2F, "--input", str(folder), "--output", str(out), "--batch-size", "3", *opts]
    assert predict_tool.main(argv) == 1
    errors = json.load(open(out / "errors.json"))
    assert list(errors) == [str(folder / "broken.png")] and "cannot read image" in errors[str(folder / "broken.png")]
    stems = sorted(os.path.splitext(os.path.basename(p))[0] for p in IMAGES[:2])
    assert sorted(os.listdir(out / "panoptic")) == sorted(f"{s}{e}" for s in stems for e in (".json", ".png"))
    assert sorted(os.listdir(out / "semantic")) == [f"{s}.png" for s in stems]  # the config outputs both tasks
    pan = json.load(open(out / "panoptic.json"))["annotations"]
    assert [a["image_id"] for a in pan] == stems  # not numeric: the stem is the id
    for stem in stems:
        png = np.asarray(Image.open(out / "semantic" / f"{stem}.png"))
        assert png.shape == np.asarray(Image.open(folder / f"{stem}.jpg")).shape[:2] and png.max() < 21
    assert "broken.png" in capsys.readouterr().err
    mtimes = {f: os.stat(out / "semantic" / f).st_mtime_ns for f in os.listdir(out / "semantic")}
    os.remove(folder / "broken.png")
    assert predict_tool.main(argv) == 0
    assert {f: os.stat(out / "semantic" / f).st_mtime_ns for f in os.listdir(out / "semantic")} == mtimes
    capsys.readouterr()
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert predict_tool.main([*argv[:4], "--output", str(blocker / "out"), *opts]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write to output folder" in err[0] and "file/out" in err[0]


def test_predict_restart_redoes_an_image_whose_file_an_os_crash_left_empty(tmp_path):
    """Per-image files are renamed into place without fsync (two per file would cost more than the write), so an
    OS crash can leave one empty. Before, a restart counted such an image as done and finish() stopped on the
    empty JSON; now the restart predicts it again and the combined panoptic.json has every image. A per-image
    JSON missing at finish() is left out with a warning that counts it."""
    out = tmp_path / "out"
    opts = ["--opts", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", "96"]
    argv = ["--config-file", M2F, "--input", *IMAGES[:2], "--output", str(out), *opts]
    assert predict_tool.main(argv) == 0
    stems = sorted(os.path.splitext(os.path.basename(p))[0] for p in IMAGES[:2])
    whole = json.load(open(out / "panoptic.json"))["annotations"]
    (out / "panoptic" / f"{stems[0]}.json").write_bytes(b"")
    inodes = {s: os.stat(out / "semantic" / f"{s}.png").st_ino for s in stems}  # a rewrite renames a new file in
    assert predict_tool.main(argv) == 0
    assert os.stat(out / "semantic" / f"{stems[1]}.png").st_ino == inodes[stems[1]]  # kept
    assert os.stat(out / "semantic" / f"{stems[0]}.png").st_ino != inodes[stems[0]]  # predicted again
    assert json.load(open(out / "panoptic.json"))["annotations"] == whole

    from universal_seg.inference.writers import PredictionWriter

    writer = PredictionWriter(str(out), ["panoptic"])
    os.remove(out / "panoptic" / f"{stems[1]}.json")
    with logged_records("universal_seg.inference.writers", logging.WARNING) as warnings:
        writer.finish(stems)
    assert json.load(open(out / "panoptic.json"))["annotations"] == whole[:1]
    expected = f"1 of 2 images have no readable panoptic/<stem>.json (e.g. {stems[1]}.json)"
    assert any(expected in r.getMessage() for r in warnings)


def test_input_patterns_that_match_nothing_are_kept_to_be_reported(tmp_path, capsys):
    """Before: a glob matching nothing was dropped without a word ("1 of 1 images" for three patterns). Now it is
    kept, so predict.py lists it in errors.json as missing (exit status 1); an empty folder is a warning."""
    from universal_seg.inference.inputs import expand_inputs

    folder, empty = tmp_path / "in", tmp_path / "empty"
    folder.mkdir()
    empty.mkdir()
    for name in ("b.jpg", "a.jpg"):
        (folder / name).write_bytes(open(IMAGES[0], "rb").read())
    nothing = str(tmp_path / "*.JPEG")
    with logged_records("universal_seg.inference", logging.WARNING) as warnings:
        paths = expand_inputs([str(folder / "a.jpg"), str(folder / "*.jpg"), nothing, str(empty)])
    assert paths == [str(folder / "a.jpg"), str(folder / "b.jpg"), nothing]  # in order, no repeats
    assert any(f"{empty}: the folder holds no image files" in r.getMessage() for r in warnings)
    out = tmp_path / "out"
    opts = ["--opts", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", "64"]
    argv = ["--config-file", M2F, "--input", str(folder / "a.jpg"), nothing, "--output", str(out), *opts]
    assert predict_tool.main(argv) == 1
    assert list(json.load(open(out / "errors.json"))) == [nothing]
    assert "1 of 2 images have predictions" in capsys.readouterr().out
    assert predict_tool.main([*argv, "INPUT.FORMAT", "BGRA"]) == 2  # was a ValueError traceback
    assert "error: INPUT.FORMAT 'BGRA' is not supported by the predictor; use RGB or BGR." in capsys.readouterr().err
    assert predict_tool.main([*argv, "INPUT.MIN_SIZE_TEST", "-5"]) == 2  # was accepted: no resize at all
    assert "INPUT.MIN_SIZE_TEST -5 / MAX_SIZE_TEST 400: sizes are positive" in capsys.readouterr().err


def test_amp_runs_in_bfloat16_on_the_cpu_and_stays_close(m2f_predictor):
    """amp=True: the network runs under bfloat16 autocast (its pixel decoder output is bfloat16); the semantic
    scores come back in float32 within 0.1 of the float32 run (bfloat16 keeps 8 bits of mantissa)."""
    predictor = m2f_predictor
    dtypes = []
    hook = predictor.model.sem_seg_head.register_forward_hook(lambda m, i, o: dtypes.append(o["pred_masks"].dtype))
    try:
        fp32 = predictor(IMAGES[0])["sem_seg"]
        predictor.amp = True
        amp = predictor(IMAGES[0])["sem_seg"]
    finally:
        predictor.amp = False
        hook.remove()
    assert dtypes == [torch.float32, torch.bfloat16]
    assert amp.dtype == torch.float32 and (amp - fp32).abs().max() < 0.1


def test_predict_tool_on_a_semantic_dataset_names_files_by_stem(tmp_path):
    """Semantic datasets (detectron2's sem_seg loader) carry no image_id: --dataset writes one label PNG per image,
    named by its file stem, at the image's size."""
    from detectron2.data import DatasetCatalog

    dicts = DatasetCatalog.get("mini_sem_seg_val")
    assert "image_id" not in dicts[0]  # the case this test is about
    out = tmp_path / "out"
    opts = ["--opts", "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]
    argv = ["--config-file", SEGFORMER, "--dataset", "mini_sem_seg_val", "--output", str(out), *opts]
    assert predict_tool.main(argv) == 0
    for d in dicts:
        stem = os.path.splitext(os.path.basename(d["file_name"]))[0]
        png = np.asarray(Image.open(out / "semantic" / f"{stem}.png"))
        assert png.shape == np.asarray(Image.open(d["file_name"])).shape[:2] and png.max() < 21


def test_predictor_on_cuda_without_a_gpu_names_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^device 'cuda' was asked for but no CUDA device is available; pass device="):
        Predictor(m2f_cfg(), device="cuda")


def test_predict_restart_with_another_config_warns_that_finished_images_are_kept(tmp_path):
    """A restart skips images whose files exist; when the config or weights changed since, they would silently
    stay the earlier model's: the run says so (and --overwrite redoes them)."""
    out = tmp_path / "out"
    base = ["--config-file", M2F, "--input", IMAGES[0], "--output", str(out), "--opts", "MODEL.DEVICE", "cpu"]
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("universal_seg.predict").addHandler(handler)
    warned = []
    try:
        for size, overwrite in (("96", False), ("96", False), ("128", False), ("128", False), ("128", True)):
            records.clear()
            extra = ["--overwrite"] if overwrite else []
            assert predict_tool.main(base[:6] + extra + base[6:] + ["INPUT.MIN_SIZE_TEST", size]) == 0
            warned.append(any("earlier run with other config" in r.getMessage() for r in records))
    finally:
        logging.getLogger("universal_seg.predict").removeHandler(handler)
    assert warned == [False, False, True, True, False]  # the kept images stay the first run's until --overwrite
    assert json.load(open(out / "predict_run.json"))["config_sha256"]
