"""Prediction and visualisation for the demo: an ordered multi-GPU asynchronous predictor around
:class:`universal_seg.inference.Predictor`, and the drawing of panoptic / instance / semantic results with
detectron2's (Video)Visualizer.

Images everywhere in this module are RGB uint8 arrays [H, W, 3]; the predictor converts to cfg.INPUT.FORMAT.
"""

import multiprocessing as mp
import queue
from collections import deque

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

import universal_seg.data  # noqa: F401  (registers the datasets: metadata, also in worker processes)
import universal_seg.modeling  # noqa: F401  (registers the models, also in worker processes)
from universal_seg.inference import Predictor
from universal_seg.inference.writers import TASK_OUTPUTS
from universal_seg.modeling.meta_arch import TASKS, enable_output_task, output_tasks

__all__ = ["TASKS", "AsyncPredictor", "Predictor", "VisualizationDemo", "enable_output_task", "output_tasks"]


def _to_cpu(outputs: dict) -> dict:
    """The outputs of one image with every tensor moved to the CPU (for passing between processes)."""
    out = {}
    for key, value in outputs.items():
        if key == "panoptic_seg":
            out[key] = (value[0].cpu(), value[1])
        else:
            out[key] = value.to("cpu")
    return out


def _prediction_worker(cfg, device: str, task_queue, result_queue) -> None:
    """Body of a worker process: one Predictor on ``device``; (index, image) in, (index, outputs on CPU) out,
    until it receives None."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = device
    predictor = Predictor(cfg)
    while True:
        task = task_queue.get()
        if task is None:
            break
        index, image = task
        result_queue.put((index, _to_cpu(predictor(image))))


class AsyncPredictor:
    """Predictions on several devices at once (one worker process per device), returned in submission order.

    ``put(image)`` queues an image; ``get()`` returns the outputs of the oldest image not yet returned (blocking).
    Default devices: every visible CUDA GPU.
    """

    def __init__(self, cfg, devices: list[str] | None = None):
        devices = devices or [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        if not devices:
            raise ValueError("AsyncPredictor needs at least one device; without CUDA use Predictor instead.")
        self.devices = list(devices)
        ctx = mp.get_context("spawn")  # CUDA and torch's thread pools do not survive fork
        self.task_queue = ctx.Queue(maxsize=2 * len(devices))
        self.result_queue = ctx.Queue()
        self.workers = [
            ctx.Process(target=_prediction_worker, args=(cfg, d, self.task_queue, self.result_queue), daemon=True)
            for d in devices
        ]
        for worker in self.workers:
            worker.start()
        self.put_index, self.get_index = 0, 0
        self.finished: dict[int, dict] = {}

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    def put(self, image: np.ndarray) -> None:
        """Queues an RGB uint8 [H, W, 3] image (waits while every worker is busy)."""
        while True:
            try:
                self.task_queue.put((self.put_index, image), timeout=1.0)
                break
            except queue.Full:
                self._check_workers()
        self.put_index += 1

    def get(self) -> dict:
        """The outputs of the oldest image not yet returned (images are returned in the order put)."""
        if self.get_index >= self.put_index:
            raise RuntimeError("AsyncPredictor.get() called with no image pending; put() one first.")
        while self.get_index not in self.finished:
            try:
                index, outputs = self.result_queue.get(timeout=1.0)
            except queue.Empty:
                self._check_workers()
                continue
            self.finished[index] = outputs
        outputs = self.finished.pop(self.get_index)
        self.get_index += 1
        return outputs

    def _check_workers(self) -> None:
        dead = [(d, w.exitcode) for d, w in zip(self.devices, self.workers) if not w.is_alive()]
        if dead:
            raise RuntimeError(
                f"prediction worker(s) {dead} (device, exit code) stopped; their error is printed above."
            )

    def __call__(self, image: np.ndarray) -> dict:
        self.put(image)
        return self.get()

    def shutdown(self) -> None:
        """Stops the worker processes."""
        for _ in self.workers:
            self.task_queue.put(None)
        for worker in self.workers:
            worker.join(timeout=30)


def visualization_metadata(cfg) -> Metadata:
    """Metadata for drawing: that of DATASETS.TEST[0] (else TRAIN[0]), with thing_classes / thing_colors indexed
    by the model's contiguous class ids. Raises ValueError when its class count is not the model's (the drawing
    would name the wrong classes).

    The model's panoptic / instance class ids index all classes (Mask2Former's convention: stuff_classes lists
    every class), while detectron2's Visualizer indexes thing_classes by them; so thing_* become the full lists.
    """
    names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
    source = MetadataCatalog.get(names[0]) if names else Metadata()
    fields = dict(source.as_dict()) if names else {}
    fields.pop("name", None)
    if "stuff_classes" in fields:
        fields["thing_classes"] = list(fields["stuff_classes"])
        if "stuff_colors" in fields:
            fields["thing_colors"] = list(fields["stuff_colors"])
    classes, expected = fields.get("thing_classes"), cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if classes is not None and len(classes) != expected:
        raise ValueError(
            f"the model has {expected} classes (MODEL.SEM_SEG_HEAD.NUM_CLASSES) but dataset {names[0]!r}, whose class "
            f"names label the drawings, has {len(classes)}; name the dataset the model was trained for with "
            f"--opts DATASETS.TEST '(\"NAME\",)' (and --register FILE for your own data)."
        )
    return Metadata(name="universal_seg_demo", **fields)


def filter_instances(instances, threshold: float):
    """Instances whose score is at least ``threshold`` (pred_masks [N, H, W] etc. kept in step), on the CPU."""
    instances = instances.to("cpu")
    return instances[instances.scores >= threshold]


class VisualizationDemo:
    """Runs a predictor on images or video frames and draws one task's result on them.

    Args:
        cfg: the model's config (the requested task must be enabled in it; see enable_output_task).
        task: "panoptic", "instance" or "semantic".
        confidence_threshold: instances with a lower score are not drawn (panoptic segments are selected inside
            the model by MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD, which demo.py sets from the same option).
        predictor: a Predictor or AsyncPredictor (default: Predictor(cfg)).
    """

    def __init__(self, cfg, task: str, confidence_threshold: float = 0.5, predictor=None):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {TASKS}.")
        self.task = task
        self.threshold = confidence_threshold
        self.metadata = visualization_metadata(cfg)
        self.predictor = predictor or Predictor(cfg)

    def draw(self, image: np.ndarray, outputs: dict, visualizer=None) -> np.ndarray:
        """image: RGB uint8 [H, W, 3]; outputs: the model's outputs for it; visualizer: a VideoVisualizer for
        colours that stay stable across frames, or None for a still image. Returns RGB uint8 [H, W, 3]."""
        key = TASK_OUTPUTS[self.task]
        if key not in outputs:
            raise KeyError(
                f"the model did not output {key!r}; enable its {self.task} output with "
                f"universal_seg.modeling.meta_arch.enable_output_task (demo.py does it for --task {self.task})."
            )
        if self.task == "panoptic":
            seg, info = outputs["panoptic_seg"]
            if visualizer is not None:
                vis = visualizer.draw_panoptic_seg_predictions(image, seg.cpu(), info)
            else:
                vis = Visualizer(image, self.metadata, instance_mode=ColorMode.IMAGE).draw_panoptic_seg(seg.cpu(), info)
        elif self.task == "instance":
            instances = filter_instances(outputs["instances"], self.threshold)
            if visualizer is not None:
                vis = visualizer.draw_instance_predictions(image, instances)
            else:
                vis = Visualizer(image, self.metadata, instance_mode=ColorMode.IMAGE).draw_instance_predictions(
                    instances
                )
        else:
            labels = outputs["sem_seg"].argmax(dim=0).cpu()
            if visualizer is not None:
                vis = visualizer.draw_sem_seg(image, labels)
            else:
                vis = Visualizer(image, self.metadata, instance_mode=ColorMode.IMAGE).draw_sem_seg(labels)
        return vis.get_image()

    def run_on_image(self, image: np.ndarray) -> tuple[dict, np.ndarray]:
        """image: RGB uint8 [H, W, 3]. Returns (model outputs, drawing RGB uint8 [H, W, 3])."""
        outputs = self.predictor(image)
        return outputs, self.draw(image, outputs)

    def run_on_frames(self, frames):
        """frames: an iterable of RGB uint8 [H, W, 3]. Yields their drawings (RGB uint8 [H, W, 3]) in order, with
        colours tracked across frames; with an AsyncPredictor up to num_workers frames are in flight."""
        visualizer = VideoVisualizer(self.metadata, ColorMode.IMAGE)
        if not isinstance(self.predictor, AsyncPredictor):
            for frame in frames:
                yield self.draw(frame, self.predictor(frame), visualizer)
            return
        pending = deque()
        for frame in frames:
            pending.append(frame)
            self.predictor.put(frame)
            if len(pending) >= self.predictor.num_workers * 2:
                yield self.draw(pending.popleft(), self.predictor.get(), visualizer)
        while pending:
            yield self.draw(pending.popleft(), self.predictor.get(), visualizer)
