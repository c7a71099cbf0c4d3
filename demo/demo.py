#!/usr/bin/env python
"""Draw a universal_seg model's predictions on images, a video or a webcam stream.

    python demo/demo.py --config-file configs/mini/panoptic/m2f_r18.yaml --input datasets/mini/images \\
        --output out/ --opts MODEL.WEIGHTS output/mini_panoptic_m2f_r18/model_final.pth MODEL.DEVICE cpu
    python demo/demo.py --config-file ... --video-input clip.mp4 --output clip_vis.mp4 --task semantic

--input takes files, globs and directories; --output is a directory (one drawing per input, same file name) or,
for a single image or a video, a file. --task picks what is drawn (default: the first the config enables among
panoptic, instance, semantic). --confidence-threshold drops instances scoring below it; for panoptic it sets
MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD (the class-probability a query needs to become a segment), since
panoptic segments carry no score. --save DIR also writes the predictions of --input images in the standard formats
(semantic PNGs, COCO instance JSON, COCO panoptic PNG + JSON; see tools/predict.py, which does only that, in
batches, restartably). An input that cannot be read or predicted (e.g. an image above TEST.MAX_OUTPUT_PIXELS
without TEST.TILING) is reported and the others go on. Video frames keep the input's size and frame rate; with
several CUDA GPUs (MODEL.DEVICE cuda) one worker process per GPU predicts frames concurrently, results in frame
order. Exit status: 0; 1 when any input could not be read, predicted or written; 2 for a bad argument, config,
checkpoint or output, found before anything is drawn; 130 when Ctrl-C or SIGTERM stops it (0 for a webcam,
whose end that is).
"""

import argparse
import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import tqdm  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from predictor import TASKS, AsyncPredictor, VisualizationDemo, enable_output_task, output_tasks  # noqa: E402

import universal_seg.data  # noqa: E402,F401  (registers the datasets: metadata for drawing)
import universal_seg.modeling  # noqa: E402,F401  (registers the models)
from universal_seg.atomic import TEMP_PREFIX, atomic_write_bytes  # noqa: E402
from universal_seg.checkpoint import CHECKPOINT_ERRORS  # noqa: E402
from universal_seg.config import load_config, usage_error  # noqa: E402
from universal_seg.data.mappers.image_io import decode_rgb_image  # noqa: E402
from universal_seg.inference.inputs import colliding_inputs, expand_inputs, file_stem  # noqa: E402
from universal_seg.inference.writers import PredictionWriter, default_image_id  # noqa: E402

VIDEO_CODECS = (("mp4v", ".mp4"), ("XVID", ".avi"), ("MJPG", ".avi"))  # tried in this order
logger = logging.getLogger("universal_seg.demo")


def error(message: str) -> None:
    """Reports a failed input on stderr (the run goes on; the exit status will be non-zero)."""
    tqdm.tqdm.write(f"ERROR: {message}", file=sys.stderr)  # on its own line, above a progress bar


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config (under configs/)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image files, globs ('imgs/*.jpg') or directories")
    source.add_argument("--video-input", help="a video file")
    source.add_argument("--webcam", action="store_true", help="camera 0")
    parser.add_argument(
        "--output",
        help="a directory, or a file for one image / one video; without it the drawings are shown in a window",
    )
    parser.add_argument(
        "--task",
        choices=TASKS,
        help="what to draw (default: the first enabled in the config among panoptic, instance, semantic)",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=None,
        help="minimum instance score drawn (default 0.5); for panoptic it replaces "
        "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD",
    )
    parser.add_argument(
        "--save",
        metavar="DIR",
        help="also write the predictions of --input images to DIR in the standard formats (semantic PNG, COCO "
        "instance JSON, COCO panoptic PNG + JSON) of every task the model outputs",
    )
    universal_seg.data.add_register_argument(parser)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return parser


def setup_cfg(args):
    """The frozen config: file, --opts, the requested task switched on and the panoptic threshold."""
    try:
        cfg = load_config(args.config_file, args.opts, cpu_hint="add `--opts MODEL.DEVICE cpu`")
        enabled = output_tasks(cfg)
        args.task = args.task or (enabled[0] if enabled else "semantic")
        enable_output_task(cfg, args.task)
    except ValueError as err:
        usage_error(err)
    if args.task == "panoptic" and args.confidence_threshold is not None:
        cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = args.confidence_threshold
    cfg.freeze()
    return cfg


def names_a_file(output: str) -> bool:
    """Whether ``--output`` names a file (it has an extension and is not an existing directory), not a folder."""
    return bool(os.path.splitext(output)[1]) and not os.path.isdir(output)


def target_path(output: str, input_path: str, single: bool) -> str:
    """Where the drawing of ``input_path`` goes: ``output`` itself for a single input named like a file, else
    ``output``/<input file name>."""
    if single and names_a_file(output):
        return output
    return os.path.join(output, os.path.basename(input_path))


def write_drawing(target: str, drawing_rgb: np.ndarray) -> bool:
    """Encodes by ``target``'s extension and writes it atomically (never a half-written file); False when the
    extension is no image format OpenCV writes."""
    ok, encoded = cv2.imencode(os.path.splitext(target)[1] or ".png", drawing_rgb[:, :, ::-1])
    if not ok:
        return False
    atomic_write_bytes(target, encoded.tobytes())
    return True


def save_drawing(target: str, drawing_rgb: np.ndarray) -> bool:
    """:func:`write_drawing`, reporting a failure (an unwritable directory or an extension of no image format)."""
    try:
        written = write_drawing(target, drawing_rgb)
    except OSError as err:
        written = False
        logger.debug(f"{target}: {err}")
    if not written:
        error(f"cannot write {target!r}; check the directory is writable and the extension is an image format.")
    return written


def save_predictions(writer, path: str, outputs: dict) -> bool:
    """Writes the predictions of input ``path`` with ``writer`` (a PredictionWriter), reporting a failure."""
    try:
        writer.write(file_stem(path), default_image_id(path), outputs)
    except Exception as err:  # noqa: BLE001
        error(f"cannot save the predictions of {path!r} ({type(err).__name__}: {err}).")
        return False
    return True


def show(window: str, image_bgr: np.ndarray) -> bool:
    """Shows a BGR image; returns False when the user pressed Esc."""
    try:
        cv2.namedWindow(window, cv2.WINDOW_NORMAL)
        cv2.imshow(window, image_bgr)
    except cv2.error as err:
        usage_error(f"cannot open a window ({str(err).splitlines()[-1].strip()}); pass --output to write files.")
    return cv2.waitKey(0 if window == "image" else 1) != 27


def run_images(demo: VisualizationDemo, paths: list[str], output: str | None, writer=None) -> int:
    """Draws every image (and writes its predictions with ``writer``, a PredictionWriter); returns the number of
    inputs that failed (each reported with its reason). Inputs whose drawings or predictions would land on the same
    file as an earlier input's are reported and skipped. Ctrl-C (KeyboardInterrupt, re-raised) stops after the
    current image and still finishes the writer's combined files."""
    failed, done, start = 0, 0, time.perf_counter()
    saved: list[str] = []
    single = len(paths) == 1
    collisions = colliding_inputs(paths, file_stem) if writer is not None else {}
    if output and not (single and names_a_file(output)):
        collisions = {**colliding_inputs(paths, os.path.basename), **collisions}  # drawings: output/<file name>
    for path, reason in collisions.items():
        error(f"skipping {path!r}: {reason} Rename one of them.")
    failed += len(collisions)
    paths = [p for p in paths if p not in collisions]
    try:
        for path in tqdm.tqdm(paths, disable=len(paths) < 2, desc="images"):
            try:
                image = decode_rgb_image(path, "RGB")  # the training / evaluation reader: the same pixels
            except OSError as err:  # UnreadableImageError: missing, truncated or not an image
                stop_if_interrupted(err)
                error(f"{err}; check that it exists and is an image file.")
                failed += 1
                continue
            t0 = time.perf_counter()
            try:
                outputs, drawing = demo.run_on_image(image)
            except Exception as err:  # noqa: BLE001 - one input's failure (too large, out of memory): go on
                stop_if_interrupted(err)
                error(f"cannot predict image {path!r}: {err}")
                failed += 1
                continue
            with deferred_interrupts():  # an image's files are written completely, or not at all
                if writer is not None:
                    if save_predictions(writer, path, outputs):
                        saved.append(file_stem(path))
                    else:
                        failed += 1
                logger.info(f"{path}: {describe(outputs, demo.task)} in {time.perf_counter() - t0:.2f} s")
                done += 1
                if output and not save_drawing(target_path(output, path, single), drawing):
                    failed += 1
            stop_if_interrupted()
            if not output and not show("image", drawing[:, :, ::-1]):
                break
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (_interrupt): the caller's exit status is 130
        logger.warning(f"interrupted after {done} of {len(paths)} images; the results so far are kept.")
        raise
    finally:
        if writer is not None:
            with deferred_interrupts(reraise=False):  # a second Ctrl-C must not cut the combined files short
                for written_file in writer.finish(saved):
                    logger.info(f"wrote {written_file}")
    elapsed = time.perf_counter() - start
    print(f"processed {done} images in {elapsed:.1f} s ({done / max(elapsed, 1e-9):.2f} images/s), {failed} failed")
    return failed


def describe(outputs: dict, task: str) -> str:
    """A short summary of one image's result for the log."""
    if task == "panoptic":
        return f"{len(outputs['panoptic_seg'][1])} panoptic segments"
    if task == "instance":
        return f"{len(outputs['instances'])} instances"
    return f"{outputs['sem_seg'].shape[0]}-class semantic map"


def probe_codec(extension: str | None) -> tuple[str, str]:
    """(fourcc, extension) of the first codec that writes and reads back a tiny video on this machine, trying
    codecs for ``extension`` first. Exits with a message when none works."""
    candidates = sorted(VIDEO_CODECS, key=lambda c: c[1] != extension)
    with tempfile.TemporaryDirectory() as tmp:
        for fourcc, ext in candidates:
            path = os.path.join(tmp, "probe" + ext)
            writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 10.0, (64, 48), True)
            if writer.isOpened():
                for i in range(3):
                    writer.write(np.full((48, 64, 3), 60 * i, np.uint8))
            writer.release()
            reader = cv2.VideoCapture(path)
            ok = reader.isOpened() and reader.read()[0]
            reader.release()
            if ok:
                return fourcc, ext
    usage_error(
        f"no video codec works with this OpenCV build (tried {', '.join(c for c, _ in VIDEO_CODECS)}): "
        "install an OpenCV with FFmpeg support, or write images with --input instead."
    )


def video_target(output: str, input_name: str, codec_ext: str | None = None) -> str:
    """The video file written for ``input_name``: ``output`` (a file name) or ``output``/<input stem>, with the
    codec's extension when given."""
    target = output if names_a_file(output) else os.path.join(output, os.path.basename(input_name))
    return os.path.splitext(target)[0] + codec_ext if codec_ext else target


def open_writer(output: str, input_name: str, fps: float, size: tuple[int, int]) -> tuple[cv2.VideoWriter, str]:
    """A VideoWriter for (width, height) ``size`` at ``fps``, at ``output`` (a file) or ``output``/<input name>,
    with a working codec (the extension is changed to the codec's container if needed). Returns (writer, target);
    the writer writes to a temporary name next to the target, renamed by :func:`run_video` when the video ends."""
    ext = os.path.splitext(output)[1] if names_a_file(output) else None
    fourcc, codec_ext = probe_codec(ext.lower() if ext else None)
    target = video_target(output, input_name, codec_ext)
    if ext and ext.lower() != codec_ext:
        logger.warning(f"no codec for {ext!r} files here: writing {target!r} ({fourcc}) instead.")
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    writer = cv2.VideoWriter(temporary_video(target), cv2.VideoWriter_fourcc(*fourcc), fps, size, True)
    if not writer.isOpened():
        usage_error(f"cannot open {target!r} for writing; check the directory is writable.")
    return writer, target


def temporary_video(target: str) -> str:
    """The name a video is written under until it is complete (a killed run leaves no unplayable file at
    ``target``); same directory and extension, hidden."""
    directory, name = os.path.split(os.path.abspath(target))
    return os.path.join(directory, f"{TEMP_PREFIX}{os.getpid()}-{name}")


def read_frames(capture: cv2.VideoCapture):
    """Yields the capture's frames as RGB uint8 [H, W, 3] until it ends."""
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame[:, :, ::-1]


def run_video(demo: VisualizationDemo, source, output: str | None) -> int:
    """Draws every frame of a video file (``source`` a path) or camera (an int); returns 1 on failure, else 0."""
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        error(f"cannot open video {source!r}; check the path (or camera) and that OpenCV can decode it.")
        return 1
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if isinstance(source, str) else None
    writer, target = open_writer(output, str(source), fps, (width, height)) if output else (None, None)
    count, start, interrupted = 0, time.perf_counter(), False
    try:
        try:
            for drawing in tqdm.tqdm(demo.run_on_frames(read_frames(capture)), total=total or None, desc="frames"):
                count += 1
                if writer is not None:
                    writer.write(np.ascontiguousarray(drawing[:, :, ::-1]))
                elif not show("video", drawing[:, :, ::-1]):
                    break
                stop_if_interrupted()
        except Exception as err:
            stop_if_interrupted(err)
            raise
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (_interrupt), also one a library turned into another error
        interrupted = True
        logger.warning("interrupted: the video written so far is kept." if count and writer else "interrupted.")
    finally:
        with deferred_interrupts(reraise=False):  # a second Ctrl-C must not leave the container unfinished
            capture.release()
            if writer is not None:
                writer.release()  # completes the container; only then does it get its name
                if count:
                    os.replace(temporary_video(target), target)
                elif os.path.exists(temporary_video(target)):
                    os.remove(temporary_video(target))  # an empty container, not a result
    elapsed = time.perf_counter() - start
    if count == 0 and not interrupted:
        error(f"no frame could be read from {source!r}; nothing was written. Check that it is a video with frames.")
        return 1
    where = f", written to {target}" if target and count else ""
    print(f"processed {count} frames in {elapsed:.1f} s ({count / max(elapsed, 1e-9):.2f} frames/s){where}")
    return 130 if interrupted and isinstance(source, str) else 0  # stopping a webcam with Ctrl-C is its normal end


def make_predictor(cfg, video: bool):
    """For videos on CUDA: an AsyncPredictor with one worker per GPU; otherwise None (synchronous)."""
    if video and cfg.MODEL.DEVICE.startswith("cuda") and torch.cuda.device_count() > 0:
        return AsyncPredictor(cfg)
    return None


def check_output(output: str | None) -> None:
    """Exits with one line when ``output`` cannot be created: a path component is a file, not a directory."""
    if not output:
        return
    parent = os.path.dirname(os.path.abspath(output))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        usage_error(f"--output {output!r} cannot be created: {parent!r} is a file, not a directory.")


def check_inputs(args) -> list[str] | None:
    """The image paths to draw (reporting the missing ones), checked before the model is built: exits when there is
    nothing to draw. None for a video or webcam source."""
    if args.video_input and not os.path.isfile(args.video_input):
        usage_error(f"--video-input {args.video_input!r} does not exist; check the path.")
    if not args.input:
        return None
    paths = expand_inputs(args.input)
    missing = [p for p in paths if not os.path.isfile(p)]
    if not paths:
        usage_error(f"--input {' '.join(args.input)} names no image file; check the paths.")
    if len(missing) == len(paths):
        usage_error(f"no input image exists ({', '.join(map(repr, missing[:5]))}); check --input.")
    return paths


def check_not_overwriting_inputs(args, paths: list[str] | None) -> None:
    """Exits with one line when a drawing (or the output video) would be written over one of its inputs."""
    if not args.output:
        return
    if args.video_input:
        targets = {args.video_input: video_target(args.output, args.video_input)}
    else:
        targets = {p: target_path(args.output, p, len(paths) == 1) for p in paths or []}
    for source, target in targets.items():
        if os.path.exists(target) and os.path.samefile(source, target):
            usage_error(f"--output {args.output!r} would overwrite the input {source!r}; write elsewhere.")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


STOP_REQUESTED = threading.Event()


def _interrupt(signum=None, frame=None):
    """Ctrl-C or SIGTERM: the run ends as a KeyboardInterrupt (the current image's files or frame are written
    whole, see :func:`deferred_interrupts`, then the combined outputs are completed); any further signal is
    ignored from here on, so it cannot cut that completion short. The request is also kept in STOP_REQUESTED,
    since the KeyboardInterrupt can be lost on its way: raised inside a library's Python callback it may come
    out as another error (matplotlib's C++ drawing code reports it as "ValueError: Invalid affine
    transformation matrix"), or be swallowed by a finaliser; :func:`stop_if_interrupted` turns it back."""
    STOP_REQUESTED.set()
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise KeyboardInterrupt


def stop_if_interrupted(err: BaseException | None = None) -> None:
    """Raises KeyboardInterrupt (from ``err``, the error the interrupt became, if given) when Ctrl-C / SIGTERM
    was received in this run; otherwise returns, and the caller handles ``err`` as an ordinary failure."""
    if STOP_REQUESTED.is_set():
        raise KeyboardInterrupt from err


@contextlib.contextmanager
def deferred_interrupts(reraise: bool = True):
    """Ctrl-C and SIGTERM during the block take effect when it ends (an interrupt then, unless ``reraise`` is
    False: already on the way out), so what it writes is never cut half-way. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if caught and reraise:
        _interrupt()


def main(argv=None, restore_signals: bool = True) -> int:
    """The demo; returns its exit status. Ctrl-C and SIGTERM end it with status 130 (:func:`_interrupt`); their
    handlers are put back on return when ``restore_signals`` (a caller in the same process), and left ignoring
    when the process ends right after (a late second signal then cannot kill it mid-exit)."""
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="universal_seg")
    paths = check_inputs(args)
    check_output(args.output)
    try:
        universal_seg.data.run_registration_files(args.register)
    except ValueError as err:
        usage_error(err)
    if paths and args.output and names_a_file(args.output) and not cv2.haveImageWriter(args.output):
        usage_error(f"--output {args.output!r}: OpenCV writes no image format with that extension; use .png.")
    cfg = setup_cfg(args)
    check_not_overwriting_inputs(args, paths)
    if cfg.MODEL.WEIGHTS:
        logger.info(f"task {args.task}, config {args.config_file}, weights {cfg.MODEL.WEIGHTS}")
    else:
        logger.warning(
            f"task {args.task}, config {args.config_file}: MODEL.WEIGHTS is empty, so the drawings show an untrained "
            "model; add `--opts MODEL.WEIGHTS path/to/model_final.pth`."
        )
    video = bool(args.video_input or args.webcam)
    writer = None
    if args.save:
        if not args.input:
            usage_error("--save writes predictions of --input images; it does not apply to videos.")
        names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
        try:
            writer = PredictionWriter(args.save, output_tasks(cfg), MetadataCatalog.get(names[0]) if names else None)
        except OSError as err:
            usage_error(err)
    threshold = 0.5 if args.confidence_threshold is None else args.confidence_threshold
    try:
        predictor = make_predictor(cfg, video)
        demo = VisualizationDemo(cfg, args.task, threshold, predictor=predictor)
    except (ValueError, *CHECKPOINT_ERRORS) as err:
        usage_error(err)
    in_main_thread = threading.current_thread() is threading.main_thread()
    STOP_REQUESTED.clear()
    previous = {s: signal.signal(s, _interrupt) for s in STOP_SIGNALS} if in_main_thread else {}
    try:
        if args.input:
            if len(paths) > 1 and args.output and names_a_file(args.output):
                usage_error(
                    f"--output {args.output!r} looks like a file but there are {len(paths)} inputs; give a directory."
                )
            try:
                return 1 if run_images(demo, paths, args.output, writer) else 0
            except KeyboardInterrupt:
                return 130
        return run_video(demo, args.video_input if args.video_input else 0, args.output)
    finally:
        if isinstance(predictor, AsyncPredictor):
            predictor.shutdown()
        if restore_signals:
            for s, handler in previous.items():
                signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main(restore_signals=False))
