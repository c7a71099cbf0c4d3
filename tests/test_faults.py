"""Fault injection (issue 14): every case reproduces a failure the project had, with an independent truth.

kill -9 during checkpoint saves and during training (subprocesses), truncated / empty checkpoint files, diverged
weights, missing and corrupt training / validation images, 16-bit / EXIF / gray / RGBA images through the
training, evaluation and demo readers, malformed prediction files for tools/evaluate.py, a tampered sdist for the
installer, a config with a `!!python` tag, file modes of prepared data, interrupted pickle writes, weight pickles
of every protocol, and the smaller items (unregistered dataset names, TTA, softmax in place, semantic_inference
under autograd, the demo's input / output checks and 0-frame video).
"""

import contextlib
import importlib.util
import json
import logging
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from conftest import logged_records
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from torch import nn

import universal_seg.data  # noqa: F401  (registers the datasets)
import universal_seg.modeling  # noqa: F401  (registers the models)
from universal_seg.checkpoint import (
    CheckpointUnreadableError,
    UniversalSegCheckpointer,
    UnsafeCheckpointError,
    load_pickle_safely,
    save_detectron2_pickle,
)
from universal_seg.config import load_config

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "datasets" / "mini"
needs_mini = pytest.mark.skipif(not (MINI / "panoptic_train.json").is_file(), reason="datasets/mini not built")


def _import_path(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _filled(value, size=(4, 4)):
    model = nn.Linear(*size)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model


# ------------------------------------------------------------------------------------------------ checkpoints
KILL_SCRIPT = """
import sys, torch
from torch import nn
from universal_seg.checkpoint import UniversalSegCheckpointer
model = nn.Linear(4096, 4096)  # 64 MiB: a save takes long enough to be killed in the middle
ck = UniversalSegCheckpointer(model, sys.argv[1])
i = 0
while True:
    with torch.no_grad():
        model.weight.fill_(i)
        model.bias.fill_(i)
    ck.save("model_final", iteration=i)
    if i == 0:
        print("saved", flush=True)
    i += 1
"""


def test_kill_during_checkpoint_save_keeps_an_intact_checkpoint(tmp_path):
    """kill -9 while model_final.pth is re-saved in place (as when a finished run is extended): before, the kill
    left a truncated model_final.pth that last_checkpoint named, and --resume crashed (PytorchStreamReader failed);
    now the file and last_checkpoint are always a complete, consistent pair."""
    for attempt in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert proc.stdout.readline().strip() == "saved"
        time.sleep(0.4 + 0.3 * attempt)  # the loop only saves: the kill lands inside a save
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        target = UniversalSegCheckpointer(nn.Linear(4096, 4096), str(tmp_path))
        assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
        with logged_records("fvcore.common.checkpoint") as log:
            extra = target.resume_or_load("", resume=True)
        assert not any("unreadable" in m for m in log.messages), log.messages
        # the weights are those of the iteration the file records (a complete save, not a mix)
        assert torch.all(target.model.weight == extra["iteration"]) and torch.all(
            target.model.bias == extra["iteration"]
        )


def test_resume_removes_the_temporary_files_of_killed_saves(tmp_path):
    """A kill -9 mid-save leaves its temporary file (up to a checkpoint's size) beside the checkpoints; before, it
    stayed there for good. A resume deletes such files, counted in the log, and keeps everything else."""
    from universal_seg.atomic import TEMP_PREFIX

    _save_two(tmp_path)
    (tmp_path / f"{TEMP_PREFIX}a1b2.pth").write_bytes(b"x" * 3 * 2**20)  # as a killed save leaves it
    (tmp_path / f"{TEMP_PREFIX}notes.txt").write_text("not a checkpoint save")
    with logged_records("fvcore.common.checkpoint") as log:
        UniversalSegCheckpointer(_filled(0.0), str(tmp_path)).resume_or_load("", resume=True)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [f"{TEMP_PREFIX}notes.txt", "last_checkpoint", "model_0000001.pth", "model_0000003.pth"]
    )
    assert any("removed 1 temporary file(s) (3 MiB) of interrupted checkpoint saves" in m for m in log.messages)


def _save_two(tmp_path):
    ck = UniversalSegCheckpointer(_filled(1.0), str(tmp_path))
    ck.save("model_0000001", iteration=1)
    time.sleep(0.02)
    ck.model = _filled(3.0)
    ck.save("model_0000003", iteration=3)
    return tmp_path / "model_0000003.pth"


def test_resume_falls_back_past_a_truncated_checkpoint(tmp_path):
    """A truncated newest checkpoint (a kill during a save by an older version, a full disk): before, --resume
    crashed on it; now it resumes from the newest intact one, with a warning naming the broken file."""
    newest = _save_two(tmp_path)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    target = UniversalSegCheckpointer(_filled(0.0), str(tmp_path))
    with logged_records("fvcore.common.checkpoint") as log:
        extra = target.resume_or_load("", resume=True)
    assert extra["iteration"] == 1 and torch.all(target.model.weight == 1.0)
    assert target.resumed_from == str(tmp_path / "model_0000001.pth")
    assert any("model_0000003.pth is unreadable" in m for m in log.messages), log.messages
    # --resume in an empty OUTPUT_DIR with MODEL.WEIGHTS = a training checkpoint: weights only, not a resume
    fresh = UniversalSegCheckpointer(_filled(0.0), str(tmp_path / "empty"))
    fresh.resume_or_load(str(tmp_path / "model_0000001.pth"), resume=True)
    assert fresh.resumed_from is None and torch.all(fresh.model.weight == 1.0)


def test_resume_with_an_empty_last_checkpoint_or_a_zero_byte_file(tmp_path):
    """A 0-byte checkpoint and a 0-byte last_checkpoint (kill during an in-place write): the newest intact
    checkpoint is used."""
    newest = _save_two(tmp_path)
    newest.write_bytes(b"")
    (tmp_path / "last_checkpoint").write_text("")
    target = UniversalSegCheckpointer(_filled(0.0), str(tmp_path))
    assert target.resume_or_load("", resume=True)["iteration"] == 1
    # nothing intact at all: one clear error naming the broken files, not a stream-reader traceback
    (tmp_path / "model_0000001.pth").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(CheckpointUnreadableError, match="no intact checkpoint.*model_0000001.pth"):
        UniversalSegCheckpointer(_filled(0.0), str(tmp_path)).resume_or_load("", resume=True)


def test_diverged_weights_are_never_saved(tmp_path):
    """Non-finite weights (a diverged run): before, the checkpoint was written and last_checkpoint pointed to it;
    now the save raises and the last good checkpoint stays the one to resume from."""
    ck = UniversalSegCheckpointer(_filled(2.0), str(tmp_path))
    ck.save("model_0000001", iteration=1)
    with torch.no_grad():
        ck.model.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN or infinite.*last good checkpoint is .*model_0000001.pth"):
        ck.save("model_0000002", iteration=2)
    assert not (tmp_path / "model_0000002.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_keep_last_n_periodic_checkpoints(tmp_path):
    ck = UniversalSegCheckpointer(_filled(1.0), str(tmp_path))
    for it in (1, 3, 5, 7):
        ck.save(f"model_{it:07d}", iteration=it)
    ck.save("model_final", iteration=7)
    ck.tag_last_checkpoint("model_0000001.pth")  # the tagged file is never deleted, even when old
    ck.prune_periodic(2)
    left = sorted(p.name for p in tmp_path.glob("*.pth"))
    assert left == ["model_0000001.pth", "model_0000005.pth", "model_0000007.pth", "model_final.pth"]


# ------------------------------------------------------------------------------------------------ pickles
def test_weight_pickles_of_every_protocol_load_and_callables_stay_refused(tmp_path):
    """Protocols 0-2 pickle bytes through _codecs.encode and protocol 5 arrays through numpy's _frombuffer: before,
    both were refused; now they load, while any other callable (os.system, eval, another codec) is still refused."""
    weights = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.float32(0.5), "n": np.int64(7)}
    for protocol in range(6):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps({"model": weights, "__author__": "t"}, protocol=protocol))
        loaded = load_pickle_safely(str(path))["model"]
        np.testing.assert_array_equal(loaded["w"], weights["w"])
        assert loaded["b"] == weights["b"] and loaded["n"] == weights["n"]

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    class Evaluate:
        def __reduce__(self):
            return (eval, ("1 + 1",))

    class Codec:  # protocol-2 style bytes through a codec other than latin1
        def __reduce__(self):
            import _codecs

            return (_codecs.encode, ("x", "rot13"))

    for payload, match in ((Exploit(), "system"), (Evaluate(), "eval"), (Codec(), "codec 'rot13'")):
        for protocol in (2, 5):
            path = tmp_path / "evil.pkl"
            path.write_bytes(pickle.dumps({"model": weights, "x": payload}, protocol=protocol))
            with pytest.raises(UnsafeCheckpointError, match=match):
                load_pickle_safely(str(path))


def test_interrupted_pickle_write_leaves_the_old_file(tmp_path, monkeypatch):
    """save_detectron2_pickle fails half-way (disk full, kill): before, the target was left truncated; now it is
    the previous complete file."""
    path = tmp_path / "model.pkl"
    save_detectron2_pickle({"w": torch.ones(3)}, str(path), "first")
    before = path.read_bytes()

    def half_dump(obj, f, *args, **kwargs):
        f.write(pickle.dumps(obj)[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pickle, "dump", half_dump)
    with pytest.raises(OSError, match="No space"):
        save_detectron2_pickle({"w": torch.zeros(3)}, str(path), "second")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pkl"]  # no temporary file left behind


# ------------------------------------------------------------------------------------------------ configs, files
def test_config_with_a_python_tag_is_refused_without_running_it(tmp_path):
    """detectron2's merge_from_file retries a file safe_load refuses with yaml.unsafe_load: before, this config ran
    `touch`; now load_config raises a one-sentence ValueError and nothing runs (also from a _BASE_ file)."""
    marker = tmp_path / "ran"
    base = tmp_path / "base.yaml"
    base.write_text(f'SEED: !!python/object/apply:os.system ["touch {marker}"]\n')
    child = tmp_path / "child.yaml"
    child.write_text(f"_BASE_: {base}\n")
    for path in (base, child):
        with pytest.raises(ValueError, match="YAML tag that would create a Python object"):
            load_config(str(path))
    assert not marker.exists()


def test_prepared_files_get_the_usual_mode(tmp_path):
    """datasets/_atomic.py used mkstemp, whose files are 0600 (unreadable to other users of a shared dataset);
    now 0666 less the umask; the checkpoint writer (universal_seg.atomic) likewise."""
    atomic = _import_path("_atomic_under_test", ROOT / "datasets" / "_atomic.py")
    from universal_seg.atomic import atomic_write_text

    for umask, expected in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        old = os.umask(umask)
        try:
            atomic.write_json(str(tmp_path / f"a{umask}.json"), {"x": 1})
            atomic.write_png(str(tmp_path / f"a{umask}.png"), np.zeros((2, 2), np.uint8))
            atomic_write_text(str(tmp_path / f"c{umask}.txt"), "x")
        finally:
            os.umask(old)
        for name in (f"a{umask}.json", f"a{umask}.png", f"c{umask}.txt"):
            assert (tmp_path / name).stat().st_mode & 0o777 == expected, name
    assert json.loads((tmp_path / "a18.json").read_text()) == {"x": 1}


def test_installer_verifies_the_sha256_before_any_sdist_code_runs(tmp_path, monkeypatch):
    """A tampered sdist on the index: before, `pip download` built its metadata (running its setup.py) and the
    hash was checked afterwards; now pip refuses the archive before unpacking it, and setup.py never runs."""
    inst = _import_path("install_detectron2_under_test", ROOT / "scripts" / "install_detectron2.py")
    marker = tmp_path / "setup_py_ran"
    src = tmp_path / "src" / "evil_pkg-1.0"
    src.mkdir(parents=True)
    (src / "setup.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from setuptools import setup\nsetup(name='evil_pkg', version='1.0')\n"
    )
    (src / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: evil_pkg\nVersion: 1.0\n")
    index = tmp_path / "index"
    index.mkdir()
    shutil.make_archive(str(index / "evil_pkg-1.0"), "gztar", root_dir=src.parent, base_dir=src.name)
    monkeypatch.setattr(inst, "SDIST_NAME", "evil_pkg")
    monkeypatch.setattr(inst, "SDIST_VERSION", "1.0")
    monkeypatch.setattr(inst, "SDIST_SHA256", "0" * 64)  # what the installer expects; the index serves another
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    cache = tmp_path / "cache"
    with pytest.raises(inst.InstallError, match="does not have the expected sha256"):
        inst.fetch_sdist(cache)
    assert not marker.exists()
    assert inst.find_cached_sdist(cache) is None


# ------------------------------------------------------------------------------------------------ one image reader
def _write_images(folder):
    """(path, expected uint8 RGB [H, W, 3]) for 16-bit gray, EXIF-rotated, gray, RGBA and palette images; the
    expectations are computed here with numpy from the written arrays."""
    rng = np.random.RandomState(0)
    cases = []
    v16 = rng.randint(0, 65536, (6, 5)).astype(np.uint16)
    Image.fromarray(v16).save(folder / "deep.png")
    expected16 = np.floor(v16.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    cases.append((folder / "deep.png", np.repeat(expected16[..., None], 3, 2)))
    rgb = rng.randint(0, 256, (4, 7, 3)).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored image must be turned 90 degrees clockwise for display
    Image.fromarray(rgb).save(folder / "rotated.png", exif=exif.tobytes())
    cases.append((folder / "rotated.png", np.rot90(rgb, k=-1)))
    gray = rng.randint(0, 256, (5, 6)).astype(np.uint8)
    Image.fromarray(gray).save(folder / "gray.png")
    cases.append((folder / "gray.png", np.repeat(gray[..., None], 3, 2)))
    rgba = rng.randint(0, 256, (5, 6, 4)).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    cases.append((folder / "alpha.png", rgba[..., :3]))
    for name, scale in (("unit.tif", 1.0), ("bytes.tif", 255.0)):  # float32 TIFFs in 0..1 and in 0..255
        values = (rng.rand(4, 5) * scale).astype(np.float32)
        Image.fromarray(values, "F").save(folder / name)
        expected = np.floor(values.astype(np.float64) * (255.0 / scale) + 0.5).astype(np.uint8)
        cases.append((folder / name, np.repeat(expected[..., None], 3, 2)))
    return cases


def test_float_images_outside_both_usual_ranges_are_refused_naming_the_range(tmp_path):
    """Before: a float32 TIFF with values beyond 0..255 (e.g. raw sensor data) was clipped to white without a word,
    and NaN became arbitrary bytes; now both are an UnreadableImageError naming the file and the fix."""
    from universal_seg.data.mappers.image_io import UnreadableImageError, decode_rgb_image

    for name, values, match in (
        ("raw.tif", np.array([[-3.0, 4000.0]], np.float32), r"values in \[-3, 4000\], neither 0..1 nor 0..255"),
        ("nan.tif", np.array([[0.5, np.nan]], np.float32), "NaN or infinite values"),
    ):
        Image.fromarray(values, "F").save(tmp_path / name)
        with pytest.raises(UnreadableImageError, match=rf"cannot read image .*{name} .*{match}: convert it to 8-bit"):
            decode_rgb_image(str(tmp_path / name))


def test_training_evaluation_and_demo_read_the_same_pixels(tmp_path):
    """Before, 16-bit images were rescaled in training (mean 127.5) but clipped by detectron2's reader in
    evaluation and the demo (mean 254.5). Now all three go through one reader, checked against numpy."""
    from universal_seg.data.mappers.base import start
    from universal_seg.data.mappers.inference import InferenceDatasetMapper

    demo = _import_path("demo_under_test", ROOT / "demo" / "demo.py")
    evaluation = InferenceDatasetMapper(augmentations=[], image_format="RGB")

    class Capture:
        task = "semantic"

        def __init__(self):
            self.images = []

        def run_on_image(self, image):
            self.images.append(image)
            return {"sem_seg": torch.zeros(2, *image.shape[:2])}, image

    for path, expected in _write_images(tmp_path):
        train_image = start({"file_name": str(path)}, "RGB")[1]
        eval_image = evaluation({"file_name": str(path)})["image"].permute(1, 2, 0).numpy()
        capture = Capture()
        assert demo.run_images(capture, [str(path)], str(tmp_path / "out")) == 0
        for image in (train_image, eval_image, capture.images[0]):
            np.testing.assert_array_equal(image, expected, err_msg=path.name)
        # BGR is the same pixels, reversed channels
        np.testing.assert_array_equal(start({"file_name": str(path)}, "BGR")[1], expected[..., ::-1])


def test_evaluation_mapper_draws_no_random_numbers(tmp_path):
    """Evaluation during training (TEST.EVAL_PERIOD) ran after a checkpoint was saved; detectron2's test-time resize
    drew from numpy's generator, so a run resumed from that checkpoint diverged. The evaluation mapper is now
    deterministic; its output size is ResizeShortestEdge's (short edge 32, long edge capped at 40)."""
    from universal_seg.data.mappers.inference import InferenceDatasetMapper

    cfg = load_config(str(ROOT / "configs/mini/semantic/segformer_b0.yaml"), ["INPUT.MIN_SIZE_TEST", "32"])
    cfg.INPUT.MAX_SIZE_TEST = 40
    Image.fromarray(np.zeros((50, 100, 3), np.uint8)).save(tmp_path / "a.png")
    np.random.seed(3)
    before = np.random.get_state()
    out = InferenceDatasetMapper(cfg)({"file_name": str(tmp_path / "a.png")})
    after = np.random.get_state()
    assert np.array_equal(after[1], before[1]) and after[2:] == before[2:]
    assert tuple(out["image"].shape) == (3, 20, 40) and (out["height"], out["width"]) == (50, 100)


# ------------------------------------------------------------------------------------------------ tools/evaluate.py
@pytest.fixture(scope="module")
def evaluate_tool():
    return _import_path("evaluate_tool_under_test", ROOT / "tools" / "evaluate.py")


def _run_tool(tool, capsys, *argv):
    code = tool.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def _png(folder, name, array, mode=None):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8), mode).save(folder / name)


def test_evaluate_semantic_checks_the_ground_truth_label_range(tmp_path, evaluate_tool, capsys):
    """Before: a perfect prediction scored mIoU 77.8 with --ignore-label -1 (the 255s counted as a class), and a
    too-small --num-classes crashed with a reshape error. Now both are one-line errors with exit status 2."""
    gt = np.array([[0, 1, 255], [2, 2, 255]])
    _png(tmp_path / "gt", "a.png", gt)
    _png(tmp_path / "pred", "a.png", np.where(gt == 255, 0, gt))
    base = ["semantic", "--gt-folder", str(tmp_path / "gt"), "--pred-folder", str(tmp_path / "pred")]
    code, out, _ = _run_tool(evaluate_tool, capsys, *base, "--num-classes", "3")
    assert code == 0 and "mIoU" in out and "100.000" in out
    for extra, message in (
        (["--num-classes", "3", "--ignore-label", "-1"], "values [255], neither class ids in [0, 3)"),
        (["--num-classes", "2"], "values [2], neither class ids in [0, 2)"),
        (["--num-classes", "3", "--ignore-label", "1"], "--ignore-label 1 is one of the 3 class ids"),
    ):
        code, out, err = _run_tool(evaluate_tool, capsys, *base, *extra)
        assert code == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def _instance_results(tmp_path, mutate):
    gt = json.loads((MINI / "instances_val.json").read_text())
    results = []
    for ann in gt["annotations"]:
        image = next(i for i in gt["images"] if i["id"] == ann["image_id"])
        rle = mask_util.frPyObjects(ann["segmentation"], image["height"], image["width"])
        rle = mask_util.merge(rle) if isinstance(rle, list) else rle
        rle["counts"] = rle["counts"].decode()
        results.append(
            {"image_id": ann["image_id"], "category_id": ann["category_id"], "segmentation": rle, "score": 0.9}
        )
    text = mutate(results)
    path = tmp_path / "results.json"
    path.write_text(text if isinstance(text, str) else json.dumps(results))
    return path


@needs_mini
def test_evaluate_instance_and_panoptic_refuse_malformed_files(tmp_path, evaluate_tool, capsys):
    """Before: malformed JSON, a missing score and a grayscale panoptic PNG gave raw tracebacks; invalid RLE,
    repeated images and NaN scores were accepted silently. Now each is a one-line error with exit status 2."""

    def set_first(key, value):
        def mutate(results):
            results[0][key] = value

        return mutate

    instance_cases = [
        (lambda r: "[{", "is not valid JSON"),
        (lambda r: r[0].pop("score") and None, "needs a finite number 'score'"),
        (set_first("score", float("nan")), "needs a finite number 'score'"),
        (lambda r: r[0]["segmentation"].update(counts="\x7f\x7f") and None, "not a valid RLE"),
        (lambda r: r[0]["segmentation"].update(counts=r[0]["segmentation"]["counts"][:-3]) and None, "not a valid RLE"),
        (lambda r: r[0]["segmentation"].update(counts=[1, 2, 3]) and None, "not a valid RLE"),
    ]
    ok = _instance_results(tmp_path, lambda r: None)
    code, out, err = _run_tool(
        evaluate_tool, capsys, "instance", "--gt", str(MINI / "instances_val.json"), "--pred", str(ok)
    )
    assert code == 0 and "segm/AP" in out, err
    for mutate, message in instance_cases:
        path = _instance_results(tmp_path, mutate)
        code, _, err = _run_tool(
            evaluate_tool, capsys, "instance", "--gt", str(MINI / "instances_val.json"), "--pred", str(path)
        )
        assert code == 2 and len(err) == 1 and message in err[0], (message, err)

    gt = json.loads((MINI / "panoptic_val.json").read_text())
    pred_dir = tmp_path / "pan"
    shutil.copytree(MINI / "panoptic", pred_dir)
    args = ["panoptic", "--gt-json", str(MINI / "panoptic_val.json"), "--gt-folder", str(MINI / "panoptic")]
    args += ["--pred-folder", str(pred_dir), "--pred-json", str(tmp_path / "pred.json")]
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": gt["annotations"]}))
    code, out, err = _run_tool(evaluate_tool, capsys, *args)
    assert code == 0 and "100.000" in out, err
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": gt["annotations"] + gt["annotations"][:1]}))
    code, _, err = _run_tool(evaluate_tool, capsys, *args)
    assert code == 2 and len(err) == 1 and "two annotations for image" in err[0], err
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": gt["annotations"]}))
    first = pred_dir / gt["annotations"][0]["file_name"]
    Image.open(first).convert("L").save(first)
    code, _, err = _run_tool(evaluate_tool, capsys, *args)
    assert code == 2 and len(err) == 1 and "is L, not RGB" in err[0], err


@needs_mini
def test_evaluate_refuses_ground_truth_of_the_wrong_kind(tmp_path, evaluate_tool, capsys):
    """Before: a panoptic JSON given as instance ground truth failed with KeyError: 'id', and a prediction JSON
    given as panoptic ground truth with KeyError: 'categories'. Now each is one line naming what the file is."""
    pan = str(MINI / "panoptic_val.json")
    inst = str(MINI / "instances_val.json")
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"annotations": json.loads((MINI / "panoptic_val.json").read_text())["annotations"]}))
    broken = tmp_path / "broken_gt.json"
    gt = json.loads((MINI / "instances_val.json").read_text())
    del gt["annotations"][0]["category_id"]
    broken.write_text(json.dumps(gt))
    folders = ["--gt-folder", str(MINI / "panoptic"), "--pred-folder", str(MINI / "panoptic")]
    cases = [
        (["instance", "--gt", pan, "--pred", inst], "is a COCO panoptic JSON (annotations with segments_info)"),
        (["instance", "--gt", str(broken), "--pred", inst], "annotations[0] has no category_id"),
        (["panoptic", "--gt-json", str(pred), *folders, "--pred-json", pan], "check the order of --gt-json and"),
        (["panoptic", "--gt-json", inst, *folders, "--pred-json", pan], "has annotations without segments_info"),
    ]
    for argv, message in cases:
        code, _, err = _run_tool(evaluate_tool, capsys, *argv)
        assert code == 2 and len(err) == 1 and message in err[0], (argv, err)


def test_rle_length_matches_pycocotools():
    """The RLE validator decodes COCO's compressed counts itself; pycocotools' encoder is the truth."""
    from universal_seg.evaluation.offline.errors import rle_length

    rng = np.random.RandomState(1)
    for h, w in ((1, 1), (7, 5), (40, 61), (300, 200)):
        mask = np.asfortranarray(rng.rand(h, w) < rng.rand())
        rle = mask_util.encode(mask.astype(np.uint8))
        assert rle_length(rle["counts"].decode()) == h * w == mask_util.area(rle) + (~mask).sum()
    assert rle_length("0") == 0 and rle_length("\x7f") is None and rle_length("g") is None  # 'g' = unfinished run


# ------------------------------------------------------------------------------------------------ smaller items
def test_tta_averages_probabilities_without_a_second_softmax():
    """Before, TTA softmaxed the models' sem_seg, which are already probabilities (per-pixel heads) or scores
    (mask classification): the average was flattened towards uniform. Now it averages them as they are."""
    from universal_seg.evaluation import SemanticSegmentorWithTTA

    cfg = load_config(str(ROOT / "configs/mini/semantic/segformer_b0.yaml"), ["TEST.AUG.MIN_SIZES", "(4, 8)"])

    class ProbabilityModel(nn.Module):  # class 0 probability 0.9 at size 4, 0.7 at size 8
        def forward(self, inputs):
            p = 0.9 if inputs[0]["image"].shape[-2] == 4 else 0.7
            return [{"sem_seg": torch.tensor([p, 1 - p])[:, None, None].expand(2, 4, 8).clone()}]

    (out,) = SemanticSegmentorWithTTA(cfg, ProbabilityModel())([{"image": torch.zeros(3, 4, 8, dtype=torch.uint8)}])
    torch.testing.assert_close(out["sem_seg"][0], torch.full((4, 8), 0.8))


def test_class_probabilities_leave_the_callers_logits_alone():
    from universal_seg.modeling.heads import class_probabilities

    logits = torch.randn(1, 5, 6, 7).contiguous(memory_format=torch.channels_last)[0]  # the CPU inference layout
    original = logits.clone()
    probs = class_probabilities(logits)
    assert torch.equal(logits, original)
    torch.testing.assert_close(probs, original.softmax(0), rtol=1e-6, atol=1e-7)


def test_semantic_inference_under_autograd_and_in_several_blocks():
    """mm(out=) cannot be differentiated (before: an error under autograd); the blocked path (H*W larger than a
    block) had no test. Reference: the written-out sum over queries of softmax(class) * sigmoid(mask)."""
    from universal_seg.modeling.postprocess import _column_blocks, semantic_inference

    torch.manual_seed(0)
    Q, K, H, W = 30, 5, 120, 130
    assert len(list(_column_blocks(Q, H * W, torch.device("cpu")))) > 1
    cls = torch.randn(Q, K + 1, dtype=torch.float64)
    masks = torch.randn(Q, H, W, dtype=torch.float64)
    reference = torch.einsum("qk,qhw->khw", cls.softmax(-1)[:, :-1], masks.sigmoid())
    torch.testing.assert_close(semantic_inference(cls, masks), reference, rtol=1e-12, atol=1e-12)
    cls_g, masks_g = cls.clone().requires_grad_(), masks.clone().requires_grad_()
    out = semantic_inference(cls_g, masks_g)
    out.square().sum().backward()
    ref_cls, ref_masks = cls.clone().requires_grad_(), masks.clone().requires_grad_()
    torch.einsum("qk,qhw->khw", ref_cls.softmax(-1)[:, :-1], ref_masks.sigmoid()).square().sum().backward()
    torch.testing.assert_close(cls_g.grad, ref_cls.grad)
    torch.testing.assert_close(masks_g.grad, ref_masks.grad)


@pytest.fixture(scope="module")
def demo_module():
    return _import_path("demo_main_under_test", ROOT / "demo" / "demo.py")


def _no_model(*args, **kwargs):
    raise AssertionError("the model was built before the inputs / output were checked")


def test_demo_checks_inputs_and_output_before_building_the_model(tmp_path, demo_module, monkeypatch, capsys):
    """Before: the demo built the model first, then failed on a missing input; an --output under a file gave a
    raw traceback. Now both are one line, before any model is built, with exit status 2 (a bad argument)."""
    monkeypatch.setattr(demo_module, "VisualizationDemo", _no_model)
    config = str(ROOT / "configs/mini/semantic/segformer_b0.yaml")
    (tmp_path / "file").write_text("x")
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(image)
    cases = [
        (["--input", str(tmp_path / "missing.jpg")], "error: no input image exists"),
        (["--video-input", str(tmp_path / "missing.mp4")], "does not exist; check the path"),
        (["--input", str(image), "--output", str(tmp_path / "file" / "o")], "is a file, not a directory"),
    ]
    for args, expected in cases:
        with pytest.raises(SystemExit) as stop:
            demo_module.main(["--config-file", config, *args])
        assert stop.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]


def test_demo_zero_frame_video_leaves_no_output_and_no_written_to(tmp_path, demo_module, capsys):
    """A video without frames: before, an empty output video was left and "written to" was printed before the
    error; now nothing is written and only the error is reported."""
    import cv2

    video = tmp_path / "empty.avi"
    cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48), True).release()
    assert cv2.VideoCapture(str(video)).isOpened()

    class NoFrames:
        def run_on_frames(self, frames):
            for frame in frames:
                yield frame

    out_dir = tmp_path / "out"
    assert demo_module.run_video(NoFrames(), str(video), str(out_dir)) == 1
    captured = capsys.readouterr()
    assert "written to" not in captured.out and "no frame could be read" in captured.err
    assert not out_dir.exists() or not any(out_dir.iterdir())


class _InterruptedDemo:
    """A demo whose ``interrupt_at``-th image (or frame) gets Ctrl-C / SIGTERM while a library's Python callback
    runs, and the library turns the KeyboardInterrupt into ``becomes`` (matplotlib's C++ drawing code reports it
    as "ValueError: Invalid affine transformation matrix", which a CI run hit), or swallows it (``becomes`` None,
    as a finaliser does)."""

    task = "semantic"

    def __init__(self, interrupt_at, becomes):
        self.interrupt_at, self.becomes, self.calls = interrupt_at, becomes, 0

    def _predict(self, image):
        self.calls += 1
        if self.calls == self.interrupt_at:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler runs here
            except KeyboardInterrupt as err:
                if self.becomes is not None:
                    raise self.becomes from err
        return image

    def run_on_image(self, image):
        return {"sem_seg": torch.zeros(2, *image.shape[:2])}, self._predict(image)

    def run_on_frames(self, frames):
        for frame in frames:
            yield self._predict(frame)


@contextlib.contextmanager
def _demo_signal_handlers(demo_module):
    """The demo's Ctrl-C / SIGTERM handling as main() installs it; both handlers are put back afterwards."""
    previous = {s: signal.signal(s, demo_module._interrupt) for s in demo_module.STOP_SIGNALS}
    demo_module.STOP_REQUESTED.clear()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@pytest.mark.parametrize("becomes", [ValueError("Invalid affine transformation matrix"), None])
def test_demo_interrupt_that_a_library_turns_into_an_error_or_swallows_still_stops(tmp_path, demo_module, becomes):
    """Before: SIGTERM landing in matplotlib's drawing became a ValueError, counted as a failed image; the handler
    had already switched the signals to ignored, so the run went through all the images and exited 1 (a CI run).
    Now the run stops after that image as an interrupt: the images before it keep their drawings, none after it
    is drawn. A swallowed interrupt stops the run after the image it landed in, which is then complete."""
    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"im{i}.png"))
        Image.fromarray(np.full((8, 10, 3), 40 * i, np.uint8)).save(paths[-1])
    out = tmp_path / "out"
    with _demo_signal_handlers(demo_module), pytest.raises(KeyboardInterrupt):
        demo_module.run_images(_InterruptedDemo(3, becomes), paths, str(out))
    drawn = ["im0.png", "im1.png"] if becomes is not None else ["im0.png", "im1.png", "im2.png"]
    assert sorted(os.listdir(out)) == drawn


def test_demo_video_interrupt_that_a_library_turns_into_an_error_keeps_the_frames(tmp_path, demo_module):
    """The same for a video: the ValueError the interrupt became ends the run as an interrupt (exit status 130)
    with the frames drawn before it in a complete file, instead of a traceback and an unfinished container."""
    import cv2

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48), True)
    for i in range(8):
        writer.write(np.full((48, 64, 3), 30 * i, np.uint8))
    writer.release()
    target = tmp_path / "out" / "clip_vis.avi"
    demo = _InterruptedDemo(4, ValueError("Invalid affine transformation matrix"))
    with _demo_signal_handlers(demo_module):
        assert demo_module.run_video(demo, str(video), str(target)) == 130
    assert os.listdir(target.parent) == ["clip_vis.avi"]
    capture, frames = cv2.VideoCapture(str(target)), 0
    while capture.read()[0]:
        frames += 1
    assert frames == 3


# ------------------------------------------------------------------------------------------------ training data
TINY = [
    "INPUT.IMAGE_SIZE",
    "64",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES",
    "6",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS",
    "256",
    "MODEL.MASK_FORMER.DEC_LAYERS",
    "3",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS",
    "1",
    "DATALOADER.NUM_WORKERS",
    "0",
    "DATASETS.TEST",
    "()",
    "SOLVER.WARMUP_ITERS",
    "0",
    "SEED",
    "7",
]


def _tiny_cfg(output_dir, *opts):
    """The mini Mask2Former config shrunk to about a second per iteration on 2 cores."""
    cfg = load_config(str(ROOT / "configs/mini/panoptic/m2f_r18.yaml"), [*TINY, *opts])
    cfg.OUTPUT_DIR = str(output_dir)
    return cfg


@pytest.fixture
def register_variant():
    """register(name, source, edit): a dataset whose dicts are ``edit(i, dict)`` of ``source``'s, same metadata."""
    import copy

    names = []

    def register(name, source, edit):
        dicts = [edit(i, dict(d)) for i, d in enumerate(DatasetCatalog.get(source))]
        DatasetCatalog.register(name, lambda: copy.deepcopy(dicts))
        fields = {k: v for k, v in MetadataCatalog.get(source).as_dict().items() if k != "name"}
        MetadataCatalog.get(name).set(**fields)
        names.append(name)
        return dicts

    yield register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _truncated_copy(tmp_path):
    source = sorted((MINI / "images").glob("*.jpg"))[0]
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(source.read_bytes()[:300])
    return str(bad)


@needs_mini
def test_missing_training_files_are_an_error_before_training(tmp_path, register_variant):
    """Before: with 2 of 3 images deleted, training ran on the one left and exited 0 (with all 3 deleted:
    "Sample larger than population"). Now building the loader fails, listing the missing files."""
    from universal_seg.data.loader import MissingDataError
    from universal_seg.engine import Trainer

    register_variant(
        "faults_two_missing", "mini_panoptic_train", lambda i, d: {**d, "file_name": f"/gone/{i}.jpg"} if i else d
    )
    register_variant("faults_all_missing", "mini_panoptic_train", lambda i, d: {**d, "file_name": f"/gone/{i}.jpg"})
    with pytest.raises(MissingDataError, match=r"^2 file\(s\) .* do not exist: /gone/1.jpg, /gone/2.jpg; restore"):
        Trainer.build_train_loader(_tiny_cfg(tmp_path, "DATASETS.TRAIN", "('faults_two_missing',)"))
    with pytest.raises(MissingDataError, match=r"^3 file\(s\)"):
        Trainer.build_train_loader(_tiny_cfg(tmp_path, "DATASETS.TRAIN", "('faults_all_missing',)"))


@needs_mini
def test_unregistered_dataset_name_is_named(tmp_path):
    from universal_seg.engine import Trainer

    with pytest.raises(ValueError, match="DATASETS.TRAIN names 'mini_panoptc_train'.*did you mean mini_panoptic_train"):
        Trainer.build_train_loader(_tiny_cfg(tmp_path, "DATASETS.TRAIN", "('mini_panoptc_train',)"))


@needs_mini
def test_unreadable_training_files_are_skipped_counted_across_workers_and_limited(tmp_path, register_variant):
    """Before: unreadable images were skipped without limit, counted per worker process and never summarised.
    Now (2 loader workers) each skipped file is counted once, every batch is full, and more than
    DATALOADER.MAX_UNREADABLE_FRACTION of unreadable files stops training with a one-line error."""
    from universal_seg.data.loader import UnreadableDataError
    from universal_seg.engine import Trainer

    bad = _truncated_copy(tmp_path)
    register_variant("faults_unreadable", "mini_panoptic_train", lambda i, d: {**d, "file_name": bad} if i == 0 else d)
    opts = ["DATASETS.TRAIN", "('faults_unreadable',)", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "2"]
    loader = Trainer.build_train_loader(_tiny_cfg(tmp_path, *opts, "DATALOADER.MAX_UNREADABLE_FRACTION", "0.5"))
    it = iter(loader)
    batches = [next(it) for _ in range(6)]
    assert all(len(b) == 2 and all(d["file_name"] != bad for d in b) for b in batches)
    # truth: the stream's own index plan, independent of the workers; each planned read of image 0 was replaced
    planned = [indices for _, indices in zip(range(6), loader.dataset.batch_indices())]
    assert list(loader.unreadable) == [bad]
    assert loader.skipped_samples == sum(indices.count(0) for _, indices in planned) > 0
    assert loader.summary().startswith(f"unreadable training files: 1 of 3 skipped ({loader.skipped_samples} failed")

    strict = Trainer.build_train_loader(_tiny_cfg(tmp_path, *opts))  # default: at most 1%
    with pytest.raises(UnreadableDataError, match=f"1 of 3 training files are unreadable .*MAX_UNREADABLE.*{bad}"):
        it = iter(strict)
        for _ in range(6):
            next(it)


@needs_mini
def test_no_readable_training_file_is_named_as_such(tmp_path, register_variant):
    """Before: with every file unreadable and DATALOADER.MAX_UNREADABLE_FRACTION 1.0, the error said "3 of 3 ...
    (100.0%, more than ... = 1.0)", a limit that was not exceeded. Now it says that no file can be read."""
    from universal_seg.data.loader import UnreadableDataError
    from universal_seg.engine import Trainer

    bad = _truncated_copy(tmp_path)
    register_variant("faults_none_readable", "mini_panoptic_train", lambda i, d: {**d, "file_name": bad})
    opts = ["DATASETS.TRAIN", "('faults_none_readable',)", "DATALOADER.MAX_UNREADABLE_FRACTION", "1.0"]
    loader = Trainer.build_train_loader(_tiny_cfg(tmp_path, *opts))
    with pytest.raises(UnreadableDataError, match=rf"^none of the 3 training files can be read, e.g. {bad}; check"):
        next(iter(loader))


@needs_mini
def test_unreadable_count_reaches_metrics_json_and_the_final_summary(tmp_path, register_variant):
    from universal_seg.engine import Trainer

    bad = _truncated_copy(tmp_path)
    register_variant("faults_metrics", "mini_panoptic_train", lambda i, d: {**d, "file_name": bad} if i == 1 else d)
    cfg = _tiny_cfg(
        tmp_path / "out",
        *["DATASETS.TRAIN", "('faults_metrics',)", "SOLVER.IMS_PER_BATCH", "3", "DATALOADER.ASPECT_RATIO_GROUPING"],
        *["False", "SOLVER.MAX_ITER", "1", "DATALOADER.MAX_UNREADABLE_FRACTION", "0.5"],
    )
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    with logged_records("universal_seg.engine.trainer") as log:
        trainer.train()
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.json").read_text().splitlines()]
    assert records[-1]["data/unreadable_files"] == 1
    assert any(m.startswith("unreadable training files: 1 of 3 skipped") and bad in m for m in log.messages)


@needs_mini
def test_evaluation_counts_a_corrupt_validation_image_instead_of_crashing(tmp_path, register_variant):
    """Before: detectron2's DatasetMapper raised on the corrupt image after training had finished (exit 1, metrics
    lost). Now the image is skipped and counted, and the metrics equal those of the readable images alone."""
    from universal_seg.engine import Trainer

    bad = _truncated_copy(tmp_path)
    source = "mini_panoptic_val_with_sem_seg"
    dicts = register_variant("faults_val", source, lambda i, d: {**d, "file_name": bad} if i == 0 else d)
    skipped_id = dicts[0]["image_id"]
    register_variant("faults_val_readable", source, lambda i, d: d)
    DatasetCatalog.remove("faults_val_readable")
    DatasetCatalog.register("faults_val_readable", lambda: [dict(d) for d in dicts[1:]])
    # the ground truth the panoptic evaluator reads, without the skipped image (what a 2-image dataset would have)
    gt = json.loads(Path(MetadataCatalog.get(source).panoptic_json).read_text())
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] != skipped_id]
    gt["images"] = [i for i in gt["images"] if i["id"] != skipped_id]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    fields = {k: v for k, v in MetadataCatalog.get(source).as_dict().items() if k not in ("name", "panoptic_json")}
    MetadataCatalog.remove("faults_val_readable")
    MetadataCatalog.get("faults_val_readable").set(panoptic_json=str(tmp_path / "gt.json"), **fields)

    cfg = _tiny_cfg(tmp_path, "DATASETS.TEST", "('faults_val', 'faults_val_readable')")
    torch.manual_seed(0)
    model = Trainer.build_model(cfg).eval()
    with logged_records("universal_seg.engine.trainer") as log:
        results = Trainer.test(cfg, model)
    with_bad, readable = results["faults_val"], results["faults_val_readable"]
    assert with_bad["data"] == {"images": 3.0, "unreadable_images": 1.0}
    assert readable["data"] == {"images": 2.0, "unreadable_images": 0.0}
    for task in ("panoptic_seg", "sem_seg"):
        assert with_bad[task] == pytest.approx(readable[task], nan_ok=True), task
    assert any("1 of 3 images were unreadable" in m and bad in m for m in log.messages)


# ------------------------------------------------------------------------------------------------ exact resume
RESUME_SCRIPT = """
import json, os, signal, sys
import torch
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import universal_seg.data, universal_seg.modeling
from universal_seg.config import load_config
from universal_seg.engine import Trainer

torch.set_num_threads(2)
cfg = load_config(os.path.join(sys.argv[1], "configs/mini/panoptic/m2f_r18.yaml"), json.loads(sys.argv[2]))
cfg.OUTPUT_DIR = sys.argv[3]
kill_after = int(sys.argv[4])


class KillAfter(HookBase):
    def after_step(self):  # runs after the checkpointer hook: the checkpoint of this iteration is on disk
        if self.trainer.iter == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


seed_all_rng(7)
trainer = Trainer(cfg)
trainer.register_hooks([KillAfter()])
trainer.resume_or_load(resume=False)
trainer.train()
"""


@needs_mini
def test_killed_training_resumes_to_the_same_weights(tmp_path):
    """kill -9 after iteration 1 of 4, then --resume: the weights at iteration 4 equal an uninterrupted run's to
    1e-6 (CPU, fixed seed, 1 loader worker). Before, the data order and augmentation randomness restarted from the
    seed, so the resumed run saw other batches. Also: SOLVER.CHECKPOINT_MAX_TO_KEEP, and a changed BASE_LR is
    applied on resume with a warning (before: the checkpoint's scheduler silently won), a changed OPTIMIZER
    refused."""
    from detectron2.utils.env import seed_all_rng

    from universal_seg.engine import Trainer

    opts = [*TINY, "DATALOADER.NUM_WORKERS", "1", "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "4"]
    opts += ["SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.STEPS", "(2,)", "SOLVER.CHECKPOINT_MAX_TO_KEEP", "2"]

    def cfg_for(output, *extra):
        cfg = load_config(str(ROOT / "configs/mini/panoptic/m2f_r18.yaml"), [*opts, *extra])
        cfg.OUTPUT_DIR = str(output)
        return cfg

    seed_all_rng(7)
    uninterrupted = Trainer(cfg_for(tmp_path / "a"))
    uninterrupted.resume_or_load(resume=False)
    uninterrupted.train()
    expected = {k: v.clone() for k, v in uninterrupted.model.state_dict().items()}
    assert sorted(p.name for p in (tmp_path / "a").glob("*.pth")) == [
        "model_0000002.pth",
        "model_0000003.pth",
        "model_final.pth",
    ]

    proc = subprocess.run(
        [sys.executable, "-c", RESUME_SCRIPT, str(ROOT), json.dumps(opts), str(tmp_path / "b"), "1"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (tmp_path / "b" / "last_checkpoint").read_text() == "model_0000001.pth"
    shutil.copytree(tmp_path / "b", tmp_path / "c")

    resumed = Trainer(cfg_for(tmp_path / "b"))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    resumed.train()
    got = resumed.model.state_dict()
    moved = [k for k in expected if expected[k].is_floating_point() and not torch.equal(expected[k], got[k])]
    for key in moved:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)

    changed = Trainer(cfg_for(tmp_path / "c", "SOLVER.BASE_LR", "0.003"))
    with logged_records("universal_seg.engine.trainer") as log:
        changed.resume_or_load(resume=True)
    assert any("SOLVER.BASE_LR: 0.0003 -> 0.003" in m for m in log.messages), log.messages
    # iteration 2 is at STEPS (2,): the new base rate times GAMMA 0.1, in every parameter group
    assert [g["lr"] for g in changed.optimizer.param_groups] == pytest.approx(
        [0.003 * 0.1] * len(changed.optimizer.param_groups)
    )
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER is 'SGD' but the checkpoint was trained with 'ADAMW'"):
        Trainer(cfg_for(tmp_path / "c", "SOLVER.OPTIMIZER", "SGD")).resume_or_load(resume=True)


@needs_mini
def test_train_net_with_deleted_images_stops_before_training(tmp_path):
    """The issue's reproduction: 2 of the 3 mini images deleted. Before, tools/train_net.py trained on the one left
    and exited 0; now it exits non-zero before training with one line listing the missing files."""
    root = tmp_path / "datasets"
    shutil.copytree(MINI, root / "mini", ignore=shutil.ignore_patterns("video"))
    images = sorted((root / "mini" / "images").glob("*.jpg"))
    for image in images[:2]:
        image.unlink()
    cmd = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file"]
    cmd += [
        str(ROOT / "configs/mini/panoptic/m2f_r18.yaml"),
        "SOLVER.MAX_ITER",
        "1",
        "OUTPUT_DIR",
        str(tmp_path / "out"),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "DETECTRON2_DATASETS": str(root)}, timeout=600
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "2 file(s) listed by dataset(s) mini_panoptic_train do not exist" in errors[0]
    assert all(str(image) in errors[0] for image in images[:2]) and "Traceback" not in proc.stderr
    assert "Starting training" not in proc.stdout + proc.stderr


def test_train_net_on_a_dataset_that_is_not_there_is_one_line(tmp_path):
    """The COCO config with no COCO on disk: before, the dataset's own FileNotFoundError (which names the
    preparation script) came with a traceback; now it is the one line."""
    cmd = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file"]
    cmd += [str(ROOT / "configs/coco/panoptic/m2f_r50.yaml"), "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""]
    cmd += ["OUTPUT_DIR", str(tmp_path / "out")]
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "empty")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Dataset 'coco_2017_train_panoptic' needs ") and "download COCO 2017" in last


@needs_mini
def test_dataset_of_another_kind_than_the_mapper_is_named_before_training(tmp_path):
    """Before: an instance-only or semantic-only dataset under the panoptic LSJ mapper died in a loader worker
    with KeyError: 'segments_info'. Now building the loader names the mappers that read such records."""
    from universal_seg.engine import Trainer

    for name, fits in [
        ("mini_instance_train", "mask_former_instance or coco_instance_lsj"),
        ("mini_sem_seg_train", "mask_former_semantic"),
    ]:
        with pytest.raises(
            ValueError,
            match=rf"^INPUT.DATASET_MAPPER_NAME 'coco_panoptic_lsj' reads pan_seg_file_name, segments_info from each "
            rf"training record, but .* has no pan_seg_file_name, segments_info; set INPUT.DATASET_MAPPER_NAME to "
            rf"{fits} for this data\.$",
        ):
            Trainer.build_train_loader(_tiny_cfg(tmp_path, "DATASETS.TRAIN", f"('{name}',)"))


@needs_mini
def test_class_count_other_than_the_datasets_is_an_error_before_training(tmp_path):
    """Before: NUM_CLASSES 30 on the 21-class mini set trained silently, and NUM_CLASSES 3 failed at the first
    step blaming the mapper. Now both are one error naming the dataset's count."""
    from universal_seg.engine import Trainer

    for wrong in ("3", "30"):
        with pytest.raises(
            ValueError,
            match=rf"^MODEL.SEM_SEG_HEAD.NUM_CLASSES is {wrong} but training dataset 'mini_panoptic_train' has 21 "
            r"classes \(stuff_classes: background, aeroplane, .*\); set MODEL.SEM_SEG_HEAD.NUM_CLASSES 21\.$",
        ):
            Trainer.build_train_loader(_tiny_cfg(tmp_path, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", wrong))
    # the test set too, before training (its evaluation would read the model's class ids as other classes)
    with pytest.raises(
        ValueError,
        match=r"^MODEL.SEM_SEG_HEAD.NUM_CLASSES is 21 but test dataset 'mini_instance_val' "
        r"has 20 classes \(thing_classes: aeroplane, .*\); evaluate on a dataset with the model's 21",
    ):
        Trainer.build_train_loader(_tiny_cfg(tmp_path, "DATASETS.TEST", "('mini_instance_val',)"))
    predict = _import_path("predict_tool_under_test", ROOT / "tools" / "predict.py")
    argv = ["--config-file", str(ROOT / "configs/mini/panoptic/m2f_r18.yaml"), "--dataset", "mini_instance_val"]
    assert predict.main(argv + ["--output", str(tmp_path / "pred"), "--opts", "MODEL.DEVICE", "cpu"]) == 2


@pytest.mark.parametrize(
    "config", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml") if "Base" not in p.name)
)
def test_every_config_has_its_training_datasets_class_count(config):
    """The registered metadata (class lists from the datasets' own category tables) is the truth each config's
    NUM_CLASSES must equal, for the class list its mapper trains on."""
    from universal_seg.engine.trainer import check_class_count

    cfg = load_config(str(ROOT / config), ["MODEL.DEVICE", "cpu"])
    check_class_count(cfg)
    check_class_count(cfg, test=True)


@needs_mini
def test_images_without_annotations_are_one_error_naming_the_filter(tmp_path, register_variant):
    from universal_seg.engine import Trainer

    register_variant("faults_no_annotations", "mini_instance_train", lambda i, d: {**d, "annotations": []})
    opts = ["DATASETS.TRAIN", "('faults_no_annotations',)", "INPUT.DATASET_MAPPER_NAME", "coco_instance_lsj"]
    with pytest.raises(ValueError, match=r"has no image to train on: .*DATALOADER.FILTER_EMPTY_ANNOTATIONS is True"):
        Trainer.build_train_loader(_tiny_cfg(tmp_path, *opts, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "20"))


@needs_mini
def test_bad_semantic_labels_stop_training_with_one_line_naming_the_file(tmp_path, register_variant):
    """A class id beyond NUM_CLASSES (before: IndexError inside the loss) and an RGB label (before: a ValueError
    from detectron2's augmentation) raise AnnotationError in the main process, from a loader worker, naming the
    file and tools/check_dataset.py."""
    from universal_seg.data.mappers.image_io import AnnotationError
    from universal_seg.engine import Trainer

    def out_of_range(label):
        label = label.copy()
        label[:5, :5] = 30
        return label

    cases = [
        (
            out_of_range,
            r"holds class id\(s\) \[30\], outside 0..20 \(MODEL.SEM_SEG_HEAD.NUM_CLASSES = 21\) and not "
            r"the ignore label 255",
        ),
        (lambda label: np.repeat(label[:, :, None], 3, axis=2), r"has 3 channels; semantic labels are single-channel"),
    ]
    for k, (corrupt, message) in enumerate(cases):
        bad_files = []
        for d in DatasetCatalog.get("mini_sem_seg_train"):  # each image's own label, corrupted
            bad_files.append(tmp_path / f"case{k}_{os.path.basename(d['sem_seg_file_name'])}")
            Image.fromarray(corrupt(np.asarray(Image.open(ROOT / d["sem_seg_file_name"])))).save(bad_files[-1])
        name = f"faults_label_{k}"
        register_variant(name, "mini_sem_seg_train", lambda i, d, f=bad_files: {**d, "sem_seg_file_name": str(f[i])})
        cfg = load_config(
            str(ROOT / "configs/mini/semantic/segformer_b0.yaml"),
            ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", f"('{name}',)", "DATALOADER.NUM_WORKERS", "1"],
        )
        pattern = "|".join(re.escape(str(f)) for f in bad_files)
        with pytest.raises(AnnotationError, match=rf"^Label '({pattern})' {message}.*check_dataset.py"):
            next(iter(Trainer.build_train_loader(cfg)))


@needs_mini
def test_training_stopped_by_bad_data_is_logged_as_one_line_not_a_traceback(tmp_path, register_variant):
    """Before: detectron2's loop logged "Exception during training:" with the whole traceback, then train_net
    printed the one-line AnnotationError. Now the loop's record is that line with the iteration, without the
    traceback; an error that does not name its own fix (here a RuntimeError) keeps its traceback."""
    from universal_seg.data.mappers.image_io import AnnotationError
    from universal_seg.engine import Trainer
    from universal_seg.engine.trainer import _BriefStop

    labels = []
    for d in DatasetCatalog.get("mini_sem_seg_train"):
        labels.append(tmp_path / os.path.basename(d["sem_seg_file_name"]))
        rgb = np.asarray(Image.open(ROOT / d["sem_seg_file_name"]))
        Image.fromarray(np.repeat(rgb[:, :, None], 3, axis=2)).save(labels[-1])
    register_variant("faults_rgb_labels", "mini_sem_seg_train", lambda i, d: {**d, "sem_seg_file_name": str(labels[i])})
    cfg = load_config(
        str(ROOT / "configs/mini/semantic/segformer_b0.yaml"),
        ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "('faults_rgb_labels',)", "DATALOADER.NUM_WORKERS", "0"],
    )
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    trainer = Trainer(cfg)
    with logged_records("detectron2.engine.train_loop") as log, pytest.raises(AnnotationError):
        trainer.train()
    stops = [r for r in log if r.levelno >= logging.ERROR]
    assert len(stops) == 1 and stops[0].exc_info is None, [r.getMessage() for r in stops]
    assert re.fullmatch(
        r"Training stopped at iteration 0: AnnotationError: Label '.*' has 3 channels.*", log.messages[-1]
    )
    assert not logging.getLogger("detectron2.engine.train_loop").filters  # taken off when train() ends

    try:
        raise RuntimeError("an unexpected failure")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "Exception during training:", (), sys.exc_info())
    assert _BriefStop(trainer).filter(record) and record.exc_info[0] is RuntimeError
    assert record.getMessage() == "Exception during training:"


@needs_mini
def test_a_refused_resume_keeps_the_runs_config_and_a_new_run_into_it_is_warned(tmp_path, capsys):
    """Before: a --resume refused for its checkpoint had already replaced OUTPUT_DIR/config.yaml (detectron2's
    set-up writes it first), losing the record of how the checkpoints were trained; a run without --resume into
    that folder overwrote its checkpoints without a word."""
    from detectron2.engine import default_argument_parser
    from detectron2.modeling import build_model

    train_net = _import_path("train_net_under_test", ROOT / "tools" / "train_net.py")
    out = tmp_path / "run"
    out.mkdir()
    earlier = load_config(str(ROOT / "configs/mini/semantic/segformer_b0.yaml"), ["MODEL.DEVICE", "cpu"])
    torch.save({"model": build_model(earlier).state_dict(), "iteration": 3}, out / "model_0000003.pth")
    (out / "last_checkpoint").write_text("model_0000003.pth")
    (out / "config.yaml").write_text(earlier.dump())
    kept = (out / "config.yaml").read_bytes()
    argv = ["--config-file", str(ROOT / "configs/mini/panoptic/m2f_r18.yaml"), "OUTPUT_DIR", str(out), *TINY]
    args = default_argument_parser().parse_args(["--resume", *argv, "MODEL.DEVICE", "cpu"])
    with pytest.raises(SystemExit) as stop:
        train_net.main(args)
    assert stop.value.code == 2 and "matches none of the model's" in capsys.readouterr().err
    assert (out / "config.yaml").read_bytes() == kept

    args = default_argument_parser().parse_args(argv)
    earlier.OUTPUT_DIR = str(out)
    with logged_records("universal_seg", logging.WARNING) as warnings:
        train_net.warn_if_overwriting(earlier, args)
    assert any(
        f"OUTPUT_DIR {out} holds the checkpoints of an earlier run (last: model_0000003.pth)" in r.getMessage()
        and "Pass --resume to continue that run" in r.getMessage()
        for r in warnings
    )


def test_corrupt_checkpoint_files_are_one_sentence_errors(tmp_path):
    """Before: an empty .pth gave EOFError, a truncated one PyTorch's zip-reader RuntimeError, a text file the
    misleading "contains objects beyond tensors", and a directory "does not exist"."""
    from universal_seg.checkpoint import (
        CheckpointMismatchError,
        CheckpointNotFoundError,
        CheckpointUnreadableError,
        UniversalSegCheckpointer,
    )

    model = nn.Linear(2, 2)
    full = tmp_path / "full.pth"
    torch.save({"model": model.state_dict(), "pad": torch.zeros(50000)}, full)
    cases = {
        "truncated.pth": full.read_bytes()[:100000],
        "text.pth": b"hello",
        "empty.pth": b"",
        "empty.pkl": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(
            CheckpointUnreadableError,
            match=rf"^{re.escape(str(tmp_path / name))} (is not a checkpoint "
            r"\((empty|neither a zip archive nor a pickle)\)|cannot be read \(RuntimeError: .*\): it "
            r"is truncated or corrupt)",
        ):
            UniversalSegCheckpointer(model).load(str(tmp_path / name))
    with pytest.raises(CheckpointNotFoundError, match=r"is a directory; give the checkpoint file in it"):
        UniversalSegCheckpointer(model).load(str(tmp_path))
    # before: "ValueError: unsupported checkpoint format", and AttributeError "'list' object has no attribute 'keys'"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "photo.jpg")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    for name, match in (
        ("photo.jpg", r"photo.jpg is not a checkpoint file: weights are read from .pth, .pkl, .pt, .pyth files"),
        ("list.pth", r"list.pth holds a list, not a dict of tensors"),
        ("list.pkl", r"list.pkl holds a list, not a dict of weights"),
    ):
        with pytest.raises(CheckpointUnreadableError, match=match):
            UniversalSegCheckpointer(model).load(str(tmp_path / name))
    torch.save({}, tmp_path / "nothing.pth")
    with pytest.raises(CheckpointMismatchError, match=r"matches none of the model's 2 tensors \(it holds none\)"):
        UniversalSegCheckpointer(model).load(str(tmp_path / "nothing.pth"))
    assert UniversalSegCheckpointer(model).load(str(full)) is not None  # the intact file still loads


def test_a_failing_register_file_is_one_error_naming_it(tmp_path):
    from universal_seg.data import run_registration_files

    bad = tmp_path / "reg.py"
    bad.write_text(
        "from universal_seg.data import register_semantic_folder\n"
        "register_semantic_folder('x', image_root='/nope', label_root='/nope', class_names=['a'])\n"
    )
    with pytest.raises(ValueError, match=rf"^--register {re.escape(repr(str(bad)))} failed: FileNotFoundError: "):
        run_registration_files([str(bad)])
    bad.write_text("def broken(:\n")
    with pytest.raises(ValueError, match=r"failed: SyntaxError: "):
        run_registration_files([str(bad)])
