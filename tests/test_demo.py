"""The demo (demo/demo.py, run as a subprocess on the CPU) on real mini-dataset images and a short clip built from
the mini video frames, with untrained weights and with a checkpoint trained for a few iterations in the test.

Truth is independent of the demo: sizes and frame counts read back with OpenCV, pixel differences against the
input, the exit status.
"""

import glob
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "mini", "panoptic", "m2f_r18.yaml")
IMAGE = os.path.join(ROOT, "datasets", "mini", "images", "2011_000003.jpg")
FRAMES = sorted(glob.glob(os.path.join(ROOT, "datasets", "mini", "video", "frames", "*.jpg")))
CLIP_SIZE = (320, 180)  # (width, height) of the test clip: even sizes, as video codecs need
CLIP_FPS = 6.0

pytestmark = pytest.mark.skipif(
    not os.path.isfile(IMAGE) or len(FRAMES) < 3,
    reason="the mini dataset is missing: run python datasets/prepare_mini.py",
)


def run_demo(*args: str, weights: str = "", opts: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Runs demo/demo.py on the CPU with the mini config, ``weights`` and config ``opts``; returns the completed
    process."""
    cmd = [
        sys.executable,
        os.path.join(ROOT, "demo", "demo.py"),
        "--config-file",
        CONFIG,
        *args,
        "--opts",
        "MODEL.WEIGHTS",
        weights,
        "MODEL.DEVICE",
        "cpu",
        *opts,
    ]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def changed_fraction(drawn: np.ndarray, original: np.ndarray, threshold: int = 25) -> float:
    """Fraction of pixels whose largest channel difference exceeds ``threshold`` (drawn masks, not codec noise)."""
    assert drawn.shape == original.shape
    diff = np.abs(drawn.astype(np.int16) - original.astype(np.int16)).max(axis=2)
    return float((diff > threshold).mean())


def read_video(path: str) -> tuple[list[np.ndarray], float]:
    """All frames (BGR) of a video and its frame rate, read with OpenCV."""
    capture = cv2.VideoCapture(path)
    assert capture.isOpened(), f"cannot open {path}"
    fps, frames = capture.get(cv2.CAP_PROP_FPS), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames, fps


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    """A short MJPG/AVI clip of the mini video frames, resized to CLIP_SIZE, at CLIP_FPS."""
    path = str(tmp_path_factory.mktemp("clip") / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), CLIP_FPS, CLIP_SIZE)
    assert writer.isOpened(), "OpenCV cannot write MJPG/AVI here"
    for frame in FRAMES[:4]:
        writer.write(cv2.resize(cv2.imread(frame), CLIP_SIZE, interpolation=cv2.INTER_AREA))
    writer.release()
    return path


@pytest.fixture(scope="module")
def trained_weights(tmp_path_factory) -> str:
    """model_final.pth of the mini config trained for 40 iterations at 192 px, batch 1 (no evaluation)."""
    out = tmp_path_factory.mktemp("train")
    cmd = [
        sys.executable,
        os.path.join(ROOT, "tools", "train_net.py"),
        "--config-file",
        CONFIG,
        "SOLVER.MAX_ITER",
        "40",
        "INPUT.IMAGE_SIZE",
        "192",
        "SOLVER.IMS_PER_BATCH",
        "1",
        "MODEL.MASK_FORMER.TRAIN_NUM_POINTS",
        "1024",
        "DATALOADER.NUM_WORKERS",
        "0",
        "DATASETS.TEST",
        "()",
        "SOLVER.CHECKPOINT_PERIOD",
        "1000",
        "SEED",
        "0",
        "MODEL.DEVICE",
        "cpu",
        "OUTPUT_DIR",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = out / "model_final.pth"
    assert weights.is_file()
    return str(weights)


def check_image_output(out_file: str, min_changed: float) -> float:
    """The drawing exists, has the input's size and differs from it on at least ``min_changed`` of pixels."""
    original, drawn = cv2.imread(IMAGE), cv2.imread(out_file)
    assert drawn is not None, f"{out_file} was not written"
    assert drawn.shape == original.shape
    fraction = changed_fraction(drawn, original)
    assert fraction >= min_changed, f"only {fraction:.3f} of the pixels were drawn on"
    return fraction


def check_video_output(out_file: str, clip_path: str) -> None:
    """Same frame count, frame rate and size as the input clip; every frame drawn on somewhere."""
    inputs, fps_in = read_video(clip_path)
    outputs, fps_out = read_video(out_file)
    assert len(outputs) == len(inputs) == 4
    assert fps_out == pytest.approx(fps_in, rel=1e-3)
    for drawn, original in zip(outputs, inputs):
        assert drawn.shape == original.shape == (CLIP_SIZE[1], CLIP_SIZE[0], 3)
        assert changed_fraction(drawn, original) > 0.02


def test_untrained_semantic_image_and_video(tmp_path, clip):
    """Untrained weights: the semantic map covers every pixel, so most of the image is recoloured."""
    out_file = str(tmp_path / "vis.png")
    proc = run_demo("--input", IMAGE, "--output", out_file, "--task", "semantic")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "processed 1 images" in proc.stdout and "images/s" in proc.stdout
    check_image_output(out_file, min_changed=0.5)

    out_video = str(tmp_path / "clip_vis.avi")
    proc = run_demo("--video-input", clip, "--output", out_video, "--task", "semantic")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "processed 4 frames" in proc.stdout and "frames/s" in proc.stdout
    check_video_output(out_video, clip)


def test_trained_panoptic_image_and_instance_video(tmp_path, clip, trained_weights):
    """A checkpoint trained on the mini dataset: panoptic segments drawn on the photo (default task of the
    config), instances drawn on the clip's frames; the drawing is kept as output/demo_example_test.png."""
    out_dir = tmp_path / "images"
    proc = run_demo(
        "--input", IMAGE, "--output", str(out_dir), "--confidence-threshold", "0.3", weights=trained_weights
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "task panoptic" in proc.stdout + proc.stderr
    check_image_output(str(out_dir / os.path.basename(IMAGE)), min_changed=0.01)

    out_video = str(tmp_path / "clip_vis.avi")
    proc = run_demo(
        "--video-input",
        clip,
        "--output",
        out_video,
        "--task",
        "instance",
        "--confidence-threshold",
        "0.0",
        weights=trained_weights,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_video_output(out_video, clip)

    out_file = str(tmp_path / "none.png")
    proc = run_demo(
        "--input",
        IMAGE,
        "--output",
        out_file,
        "--task",
        "instance",
        "--confidence-threshold",
        "1.0",
        weights=trained_weights,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert changed_fraction(cv2.imread(out_file), cv2.imread(IMAGE), threshold=0) == 0.0


def test_unreadable_input_is_reported_and_the_rest_processed(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a JPEG")
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(open(IMAGE, "rb").read())
    out_dir = tmp_path / "out"
    proc = run_demo("--input", str(broken), str(images), "--output", str(out_dir), "--task", "semantic")
    assert proc.returncode != 0
    assert "cannot read image" in proc.stderr and "broken.jpg" in proc.stderr
    assert "processed 1 images" in proc.stdout and "1 failed" in proc.stdout
    assert sorted(os.listdir(out_dir)) == ["a.jpg"]
    assert cv2.imread(str(out_dir / "a.jpg")).shape == cv2.imread(IMAGE).shape


def test_missing_config_file_is_one_clear_error(tmp_path):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "demo", "demo.py"),
        "--config-file",
        str(tmp_path / "nope.yaml"),
        "--input",
        IMAGE,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "does not exist; pick one under configs/" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_too_large_input_fails_alone_and_save_writes_standard_files(tmp_path):
    """With TEST.MAX_OUTPUT_PIXELS below the photo's size, the photo is refused (naming TEST.TILING) and a small
    image after it is still drawn and saved: a semantic PNG of its size with class ids, a panoptic PNG + JSON."""
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), cv2.resize(cv2.imread(IMAGE), (100, 80)))
    out_dir, save_dir = tmp_path / "out", tmp_path / "save"
    proc = run_demo(
        "--input",
        IMAGE,
        str(small),
        "--output",
        str(out_dir),
        "--save",
        str(save_dir),
        opts=("TEST.MAX_OUTPUT_PIXELS", "100000", "INPUT.MIN_SIZE_TEST", "128"),
    )
    assert proc.returncode != 0
    assert "TEST.TILING" in proc.stderr and os.path.basename(IMAGE) in proc.stderr
    assert "processed 1 images" in proc.stdout and "1 failed" in proc.stdout
    assert sorted(os.listdir(out_dir)) == ["small.png"]
    labels = cv2.imread(str(save_dir / "semantic" / "small.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (80, 100) and labels.max() < 21
    assert sorted(os.listdir(save_dir / "panoptic")) == ["small.json", "small.png"]
    assert json.load(open(save_dir / "panoptic.json"))["annotations"][0]["image_id"] == "small"


def test_inputs_that_would_overwrite_each_other_or_themselves_are_refused(tmp_path):
    """Two inputs with one file stem: --save would write one panoptic PNG and two annotations for it, so the
    second is reported and skipped (the first is saved once). Drawing over an input exits before predicting."""
    first, second = tmp_path / "x", tmp_path / "y"
    first.mkdir(), second.mkdir()
    small = cv2.resize(cv2.imread(IMAGE), (96, 64))
    cv2.imwrite(str(first / "p.jpg"), small)
    cv2.imwrite(str(second / "p.png"), small)
    save_dir = tmp_path / "save"
    opts = ("INPUT.MIN_SIZE_TEST", "64")
    proc = run_demo(
        "--input", str(first), str(second), "--output", str(tmp_path / "out"), "--save", str(save_dir), opts=opts
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"skipping {str(second / 'p.png')!r}: its output name 'p' is also that of {str(first / 'p.jpg')!r}" in (
        proc.stderr
    )
    assert "processed 1 images" in proc.stdout and "1 failed" in proc.stdout
    assert [a["image_id"] for a in json.load(open(save_dir / "panoptic.json"))["annotations"]] == ["p"]
    assert os.listdir(tmp_path / "out") == ["p.jpg"]

    before = (first / "p.jpg").read_bytes()
    for output in (str(first / "p.jpg"), str(first)):
        proc = run_demo("--input", str(first / "p.jpg"), "--output", output, opts=opts)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == (
            f"error: --output {output!r} would overwrite the input {str(first / 'p.jpg')!r}; write elsewhere."
        )
    assert (first / "p.jpg").read_bytes() == before


def test_bad_weights_task_and_extension_are_one_line_errors(tmp_path):
    """Each of these stops before any image is predicted, with one line naming the problem."""
    missing = str(tmp_path / "model_fianl.pth")
    cases = [
        (("--input", IMAGE), missing, (), f"error: checkpoint {missing!r} (MODEL.WEIGHTS) does not exist"),
        (
            ("--input", IMAGE, "--output", str(tmp_path / "o.xyz")),
            "",
            (),
            f"error: --output {str(tmp_path / 'o.xyz')!r}: OpenCV writes no",
        ),
    ]
    for args, weights, opts, expected in cases:
        proc = run_demo(*args, weights=weights, opts=opts)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert proc.stderr.strip().splitlines()[-1].startswith(expected)
    cmd = [
        sys.executable,
        os.path.join(ROOT, "demo", "demo.py"),
        "--config-file",
        os.path.join(ROOT, "configs", "mini", "semantic", "segformer_b0.yaml"),
        "--input",
        IMAGE,
        "--task",
        "panoptic",
        "--opts",
        "MODEL.DEVICE",
        "cpu",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "semantic" in proc.stderr


def terminate_demo_when(ready, *args: str, settle: float = 0.0, signals: int = 1) -> tuple[int, str, str]:
    """Starts demo/demo.py (mini config, CPU, 64-pixel test size) with ``args``, sends ``signals`` SIGTERMs 1 ms
    apart once ``ready()`` holds (then ``settle`` seconds more); returns (exit status, stdout, stderr)."""
    import signal
    import time

    cmd = [sys.executable, os.path.join(ROOT, "demo", "demo.py"), "--config-file", CONFIG, *args]
    cmd += ["--opts", "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "64"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not ready() and proc.poll() is None:
        assert time.monotonic() < deadline, "the demo never got to the point where it is interrupted"
        time.sleep(0.2)
    time.sleep(settle)
    for _ in range(signals):
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.001)
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout, stderr


def test_sigterm_during_a_video_leaves_a_complete_file_or_none(tmp_path, clip):
    """The video is written under a temporary name and renamed when it ends: SIGTERM mid-run (as Ctrl-C) keeps
    the frames written so far in a readable file, exit status 130, and no temporary file."""

    long_clip = str(tmp_path / "long.avi")
    frames, fps = read_video(clip)
    writer = cv2.VideoWriter(long_clip, cv2.VideoWriter_fourcc(*"MJPG"), fps, CLIP_SIZE)
    for _ in range(30):
        for frame in frames:
            writer.write(frame)
    writer.release()
    out = tmp_path / "out"
    out.mkdir()
    target = out / "long_vis.avi"
    returncode, stdout, stderr = terminate_demo_when(
        lambda: any(f.startswith(".tmp-") for f in os.listdir(out)),
        *("--video-input", long_clip, "--output", str(target), "--task", "semantic"),
        settle=3,  # a few frames
        signals=2,  # the second one lands while the video is being completed
    )
    assert returncode == 130, stderr[-3000:]
    assert "interrupted: the video written so far is kept." in stdout + stderr or not os.listdir(out)
    assert os.listdir(out) in ([], ["long_vis.avi"])  # never a temporary file
    if os.listdir(out):
        written, _ = read_video(str(target))
        assert 0 < len(written) < 120 and written[0].shape == frames[0].shape


def test_sigterm_during_images_still_finishes_the_saved_files(tmp_path):
    """Two SIGTERMs mid-folder: the images done so far keep their drawings, and --save still writes panoptic.json
    with exactly the saved images (no half-finished combined file, no image with only some of its files); exit
    status 130."""

    folder = tmp_path / "in"
    folder.mkdir()
    small = cv2.resize(cv2.imread(IMAGE), (96, 64))
    for i in range(200):
        cv2.imwrite(str(folder / f"im{i:03d}.png"), small)
    out, save = tmp_path / "out", tmp_path / "save"
    returncode, stdout, stderr = terminate_demo_when(
        lambda: out.is_dir() and len(os.listdir(out)) >= 2,
        *("--input", str(folder), "--output", str(out), "--save", str(save)),
        signals=2,  # the second one lands while the combined files are written
    )
    assert returncode == 130, stderr[-3000:]
    drawn = sorted(os.listdir(out))
    assert 2 <= len(drawn) < 200 and not any(f.startswith(".tmp-") for f in drawn)
    annotations = json.load(open(save / "panoptic.json"))["annotations"]
    stems = sorted(os.path.splitext(f)[0] for f in drawn)
    pngs = sorted(os.path.splitext(f)[0] for f in os.listdir(save / "panoptic") if f.endswith(".png"))
    semantic = sorted(os.path.splitext(f)[0] for f in os.listdir(save / "semantic"))
    # every image is written whole or not at all: drawing, semantic PNG, panoptic PNG and its annotation
    assert sorted(a["image_id"] for a in annotations) == pngs == semantic == stems
