"""The Trainer: detectron2's DefaultTrainer with this project's model, optimizer, schedule, data and evaluators.

Differences from DefaultTrainer: safe checkpoint loading; atomic checkpoint saves that refuse diverged weights, a
resume that falls back to the newest intact checkpoint, only the newest SOLVER.CHECKPOINT_MAX_TO_KEEP periodic
checkpoints kept; exact resume (checkpoints hold the optimizer, the data stream's seed and position and each
process's random generators' states; a resume with another number of processes is warned about; a solver
setting changed since the checkpoint is applied, with a warning naming it);
a training stream that refuses missing files and skips, counts and reports unreadable ones (universal_seg.data.loader);
evaluation that skips and counts unreadable images; DistributedDataParallel also for CPU processes (gloo);
AMP only where it can run (CUDA), with a warning otherwise; optimizer / LR schedule / mapper / evaluator choices
from universal_seg's config keys.
"""

import difflib
import logging
import os
import random
import warnings
import weakref
from collections import OrderedDict

import numpy as np
import torch
import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader, get_detection_dataset_dicts
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, hooks
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset, print_csv_format
from detectron2.projects.deeplab import build_lr_scheduler as build_deeplab_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import UniversalSegCheckpointer
from ..data.loader import UnreadableDataError
from ..data.mappers.image_io import AnnotationError
from .optimizer import build_optimizer

logger = logging.getLogger(__name__)

# solver settings a resume cannot apply (the saved optimizer state has another form): refused when changed
_UNCHANGEABLE_ON_RESUME = ("OPTIMIZER",)


def check_tta_config(cfg) -> None:
    """TEST.AUG.ENABLED averages semantic outputs: the model must output semantic segmentation and every test
    dataset must have semantic ground truth (ValueError naming the fix, before any work)."""
    from ..modeling.meta_arch import output_tasks

    if "semantic" not in output_tasks(cfg):
        raise ValueError(
            "TEST.AUG.ENABLED averages semantic segmentation over augmented views, but this model does not output "
            "it; enable MODEL.MASK_FORMER.TEST.SEMANTIC_ON or turn TEST.AUG.ENABLED off."
        )
    if not cfg.TEST.AUG.MIN_SIZES:
        raise ValueError("TEST.AUG.ENABLED needs at least one size in TEST.AUG.MIN_SIZES.")
    for name in cfg.DATASETS.TEST:
        meta = MetadataCatalog.get(name)
        if not meta.get("sem_seg_root", None) and meta.get("evaluator_type", None) != "sem_seg":
            raise ValueError(
                f"TEST.AUG.ENABLED evaluates semantic segmentation, but test dataset {name!r} has no semantic "
                "ground truth (sem_seg_root); use its '_with_sem_seg' variant or turn TEST.AUG.ENABLED off."
            )


def check_dataset_names(cfg) -> None:
    """Raises ValueError (naming the closest registered names) when DATASETS.TRAIN / DATASETS.TEST names a dataset
    that is not registered."""
    registered = DatasetCatalog.list()
    for key, names in (("TRAIN", cfg.DATASETS.TRAIN), ("TEST", cfg.DATASETS.TEST)):
        for name in names:
            if name not in registered:
                close = difflib.get_close_matches(name, registered, n=3, cutoff=0.5)
                hint = f"did you mean {', '.join(close)}?" if close else "see universal_seg/data/datasets."
                raise ValueError(f"DATASETS.{key} names {name!r}, which is not a registered dataset; {hint}")


# what each training mapper reads from a dataset record, and which mappers read what a record holds
MAPPER_NEEDS = {
    "mask_former_semantic": ("sem_seg_file_name",),
    "mask_former_panoptic": ("pan_seg_file_name", "segments_info"),
    "coco_panoptic_lsj": ("pan_seg_file_name", "segments_info"),
    "mask_former_instance": ("annotations",),
    "coco_instance_lsj": ("annotations",),
}


def check_mapper_fits(cfg, dicts: list[dict]) -> None:
    """Raises ValueError (naming the mappers that fit) when a training record lacks what INPUT.DATASET_MAPPER_NAME
    reads, e.g. an instance-only or semantic-only dataset under a config whose mapper reads panoptic PNGs."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    needs = MAPPER_NEEDS.get(name, ())
    for d in dicts:
        missing = [k for k in needs if k not in d]
        if missing:
            fits = [m for m, keys in MAPPER_NEEDS.items() if all(k in d for k in keys)]
            hint = f"set INPUT.DATASET_MAPPER_NAME to {' or '.join(fits)}" if fits else "check how it is registered"
            raise ValueError(
                f"INPUT.DATASET_MAPPER_NAME {name!r} reads {', '.join(needs)} from each training record, but "
                f"{d.get('file_name')!r} of DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} has no {', '.join(missing)}; "
                f"{hint} for this data."
            )


def check_class_count(cfg, test: bool = False) -> None:
    """Raises ValueError when MODEL.SEM_SEG_HEAD.NUM_CLASSES differs from the class count of a training dataset
    (its metadata's thing_classes for the instance mappers, else stuff_classes, which lists every class) or, with
    ``test``, of a DATASETS.TEST dataset (stuff_classes where it has them, else thing_classes): the model's class
    ids would be read as other classes."""
    expected = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    names = cfg.DATASETS.TEST if test else cfg.DATASETS.TRAIN
    for name in names:
        meta = MetadataCatalog.get(name)
        if test:
            field = "stuff_classes" if meta.get("stuff_classes", None) is not None else "thing_classes"
        else:
            field = "thing_classes" if "instance" in cfg.INPUT.DATASET_MAPPER_NAME else "stuff_classes"
        classes = meta.get(field, None)
        if classes is not None and len(classes) != expected:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {expected} but {'test' if test else 'training'} dataset "
                f"{name!r} has {len(classes)} classes ({field}: {', '.join(map(str, classes[:4]))}"
                f"{', ...' if len(classes) > 4 else ''}); "
                + (
                    f"evaluate on a dataset with the model's {expected} classes (DATASETS.TEST)."
                    if test
                    else f"set MODEL.SEM_SEG_HEAD.NUM_CLASSES {len(classes)}."
                )
            )


def check_batch_split(cfg, world_size: int) -> None:
    """Raises ValueError naming the fix when SOLVER.IMS_PER_BATCH cannot be split evenly over the processes."""
    ims = cfg.SOLVER.IMS_PER_BATCH
    if ims % world_size:
        lower, higher = ims // world_size * world_size, (ims // world_size + 1) * world_size
        suggest = f"{lower} or {higher}" if lower else f"{higher}"
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH {ims} must be a multiple of the {world_size} training processes (each takes an "
            f"equal share); set SOLVER.IMS_PER_BATCH {suggest}, or start a number of processes that divides {ims}."
        )


def _flat(node, prefix="") -> dict:
    """A nested dict (a CfgNode dumped to YAML and read back) as {"A.B": value}."""
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class CheckpointHook(hooks.PeriodicCheckpointer):
    """detectron2's periodic checkpointer hook, keeping only the ``max_to_keep`` newest periodic checkpoints
    (0: all)."""

    def __init__(self, checkpointer, period: int, max_to_keep: int):
        super().__init__(checkpointer, period)
        self.keep = max_to_keep

    def step(self, iteration: int, **kwargs) -> None:
        super().step(iteration, **kwargs)
        for path in self.checkpointer.prune_periodic(self.keep):
            logger.info(f"deleted {path} (SOLVER.CHECKPOINT_MAX_TO_KEEP = {self.keep})")


def wrap_distributed(model: torch.nn.Module) -> torch.nn.Module:
    """DistributedDataParallel when there are several processes (device_ids only for CUDA modules)."""
    if comm.get_world_size() == 1:
        return model
    on_cuda = next(model.parameters()).is_cuda
    return DistributedDataParallel(
        model,
        device_ids=[comm.get_local_rank()] if on_cuda else None,
        broadcast_buffers=False,
        find_unused_parameters=False,
    )


# errors that stop training with a message naming the fix (bad data, a diverged loss): no traceback in the log
TRAINING_STOPPERS = (UnreadableDataError, AnnotationError, FloatingPointError)


class _BriefStop(logging.Filter):
    """On detectron2's training-loop logger, whose "Exception during training:" record carries the traceback: for a
    :data:`TRAINING_STOPPERS` error the record becomes one line with the iteration and the message (the caller,
    e.g. tools/train_net.py, ends with that message too); every other error keeps its traceback."""

    def __init__(self, trainer):
        super().__init__()
        self.trainer = trainer

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        if isinstance(err, TRAINING_STOPPERS):
            message = " ".join(str(err).split())
            record.msg, record.args = (
                "Training stopped at iteration %d: %s: %s",
                (self.trainer.iter, type(err).__name__, message),
            )
            record.exc_info = record.exc_text = None
        return True


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        check_batch_split(cfg, comm.get_world_size())  # before the model is built
        check_dataset_names(cfg)
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = wrap_distributed(model)
        use_amp = cfg.SOLVER.AMP.ENABLED
        if use_amp and not torch.cuda.is_available():
            logger.warning(
                "SOLVER.AMP.ENABLED is set but CUDA is unavailable: training in fp32 "
                "(set SOLVER.AMP.ENABLED False to silence this)."
            )
            use_amp = False
        self._trainer = (AMPTrainer if use_amp else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = UniversalSegCheckpointer(
            model, cfg.OUTPUT_DIR, fine_tune=True, reinit_keys=cfg.MODEL.REINIT_KEYS, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        """DefaultTrainer's hooks, with the periodic checkpointer keeping SOLVER.CHECKPOINT_MAX_TO_KEEP files, and
        with TEST.AUG.ENABLED a test-time-augmented evaluation after the last iteration (before the writers, so its
        "*_TTA" metrics reach metrics.json)."""
        built = [
            CheckpointHook(self.checkpointer, self.cfg.SOLVER.CHECKPOINT_PERIOD, self.cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP)
            if isinstance(h, hooks.PeriodicCheckpointer)
            else h
            for h in super().build_hooks()
        ]
        if self.cfg.TEST.AUG.ENABLED:
            check_tta_config(self.cfg)
            writers = next((i for i, h in enumerate(built) if isinstance(h, hooks.PeriodicWriter)), len(built))
            built.insert(writers, hooks.EvalHook(0, lambda: self.test_with_TTA(self.cfg, self.model)))
        return built

    def resume_or_load(self, resume: bool = True) -> None:
        """Resume from the newest intact checkpoint of OUTPUT_DIR (``resume``), else load MODEL.WEIGHTS."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if self.checkpointer.resumed_from:  # the checkpoint holds the iteration that just finished
            self.start_iter = self.iter + 1

    def run_step(self):
        super().run_step()
        i, period = self.iter, self.cfg.SOLVER.CHECKPOINT_PERIOD
        if comm.get_world_size() > 1 and ((i + 1) % period == 0 or i >= self.max_iter - 1):
            self.gather_process_states()  # here in every process: the checkpoint hook runs in the main one only
        loader = self._trainer.data_loader
        if hasattr(loader, "unreadable"):
            self.storage.put_scalar("data/unreadable_files", len(loader.unreadable), smoothing_hint=False)

    def train(self):
        """Trains from start_iter to max_iter; the data stream starts at batch start_iter; the unreadable training
        files are summarised at the end (also when training stops on an error). A :data:`TRAINING_STOPPERS` error
        is logged as one line (:class:`_BriefStop`), then raised."""
        loader = self._trainer.data_loader
        if hasattr(loader, "dataset"):
            loader.dataset.start_batch = self.start_iter
        loop_logger, brief = logging.getLogger(TrainerBase.__module__), _BriefStop(self)
        loop_logger.addFilter(brief)
        try:
            return super().train()
        finally:
            loop_logger.removeFilter(brief)
            if hasattr(loader, "summary") and comm.is_main_process():
                logger.info(loader.summary())

    def state_dict(self) -> dict:
        """Iteration and hook states (LR scheduler); the optimizer (and AMP grad scaler) state, which detectron2
        v0.6's DefaultTrainer leaves out of checkpoints; the data stream's seed and position; the random generators'
        states (of each process, and their number); the solver config (to name the settings a resume changes).
        Together: --resume (with as many processes) continues exactly."""
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        # with several processes, each one's random generators and unreadable files (gather_process_states)
        processes, self._process_states = getattr(self, "_process_states", None), None
        if processes is None or len(processes) != comm.get_world_size():
            processes = [self._process_state()]  # this (main) process's only
        loader = self._trainer.data_loader
        if hasattr(loader, "dataset"):
            state["data"] = {
                "seed": int(loader.dataset.seed),
                "next_batch": int(self.iter) + 1,
                "dataset_size": len(loader.dataset),
                "unreadable": {k: v for p in processes for k, v in p["unreadable"].items()},
            }
        state["rng"] = processes[0]["rng"]
        state["rng_per_process"] = [p["rng"] for p in processes]
        state["world_size"] = comm.get_world_size()
        state["solver"] = self.cfg.SOLVER.dump()
        return state

    def gather_process_states(self) -> None:
        """Collects every process's random generator states and unreadable files for the next :meth:`state_dict`
        (called by all processes after an iteration that ends in a save, which only the main one writes), so that a
        resume with the same number of processes gives each its own generators back."""
        self._process_states = comm.all_gather(self._process_state())

    def _process_state(self) -> dict:
        loader = self._trainer.data_loader
        np_state = np.random.get_state()
        rng = {
            "torch": torch.get_rng_state(),
            "numpy": [
                np_state[0],
                torch.from_numpy(np_state[1].astype(np.int64)),
                *map(int, np_state[2:4]),
                float(np_state[4]),
            ],
            "random": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        return {"rng": rng, "unreadable": dict(getattr(loader, "unreadable", {}))}

    def load_state_dict(self, state_dict: dict) -> None:
        fresh_groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        fresh_scheduler = self.scheduler.state_dict()
        super().load_state_dict(state_dict)
        done = self.iter + 1  # iterations the checkpoint has trained
        if done > self.max_iter:
            raise ValueError(
                f"resume: the checkpoint has trained {done} iterations but SOLVER.MAX_ITER is {self.max_iter}; raise "
                "SOLVER.MAX_ITER to train further, or evaluate the checkpoint with --eval-only."
            )
        if done == self.max_iter:
            logger.warning(
                f"resume: the checkpoint has already trained SOLVER.MAX_ITER = {self.max_iter} iterations, so there "
                "is nothing left to train; raise SOLVER.MAX_ITER to train further."
            )
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning(
                "the checkpoint has no optimizer state (saved by another trainer): resuming with a fresh optimizer."
            )
        self._apply_solver_config(state_dict.get("solver"), fresh_groups, fresh_scheduler)
        loader = self._trainer.data_loader
        if "data" in state_dict and hasattr(loader, "dataset"):
            data = state_dict["data"]
            if data["seed"] != loader.dataset.seed:
                logger.info(f"resume: the data stream continues with the checkpoint's seed {data['seed']}.")
            loader.dataset.seed = data["seed"]
            if data["dataset_size"] != len(loader.dataset):
                logger.warning(
                    f"resume: the training set has {len(loader.dataset)} images, the checkpoint's had "
                    f"{data['dataset_size']}: the data order from here on differs from an uninterrupted run."
                )
            loader.unreadable.update(data["unreadable"])
        world, rank = comm.get_world_size(), comm.get_rank()
        saved_world = state_dict.get("world_size")
        if saved_world is not None and saved_world != world:
            logger.warning(
                f"resume: the checkpoint was trained by {saved_world} process(es) and this run has {world}: from "
                "here on it differs from an uninterrupted run (each process's augmentations and random numbers "
                f"depend on its rank); resume with {saved_world} process(es) to continue exactly."
            )
        per_process = state_dict.get("rng_per_process") or [state_dict.get("rng")]
        rng = per_process[rank] if rank < len(per_process) else None  # else: this process's own seeded state
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            np.random.set_state((rng["numpy"][0], rng["numpy"][1].numpy().astype(np.uint32), *rng["numpy"][2:]))
            random.setstate(_as_tuples(rng["random"]))
            if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def _apply_solver_config(self, saved_yaml, fresh_groups, fresh_scheduler) -> None:
        """Makes the config's solver settings rule after a resume (the checkpoint's optimizer and scheduler states
        carry the old learning rates and schedule): every setting that differs from the checkpoint's is named in a
        warning and applied; a changed SOLVER.OPTIMIZER is refused (its state cannot carry over)."""
        if saved_yaml is None:
            logger.warning("resume: the checkpoint does not record its solver config; applying the current one.")
            changed = ["(unknown)"]
        else:
            saved, current = _flat(yaml.safe_load(saved_yaml)), _flat(yaml.safe_load(self.cfg.SOLVER.dump()))
            changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            refused = [k for k in changed if k in _UNCHANGEABLE_ON_RESUME]
            if refused:
                raise ValueError(
                    f"resume: SOLVER.{refused[0]} is {current.get(refused[0])!r} but the checkpoint was trained with "
                    f"{saved.get(refused[0])!r}, whose optimizer state cannot carry over; restore it or start a new "
                    f"run (without --resume, MODEL.WEIGHTS set to the checkpoint)."
                )
            if not changed:
                return
            logger.warning(
                "resume: solver settings changed since the checkpoint, applied from iteration "
                f"{self.iter + 1}: " + "; ".join(f"SOLVER.{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
            )
        for group, fresh in zip(self.optimizer.param_groups, fresh_groups):
            group.update({k: v for k, v in fresh.items() if k != "lr"})
        merged = dict(fresh_scheduler)
        loaded = self.scheduler.state_dict()
        for key in ("last_epoch", "_step_count"):
            if key in loaded:
                merged[key] = loaded[key]
        self.scheduler.load_state_dict(merged)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lrs = self.scheduler.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self.scheduler._last_lr = list(lrs)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """detectron2's schedules plus "WarmupPolyLR" (SOLVER.POLY_LR_POWER, SOLVER.POLY_LR_CONSTANT_ENDING).
        SOLVER.STEPS at or after SOLVER.MAX_ITER never take effect and are left out with a warning naming them
        (detectron2 drops those after it, but a step at MAX_ITER stopped fvcore with a message naming no key)."""
        late = [s for s in cfg.SOLVER.STEPS if s >= cfg.SOLVER.MAX_ITER]
        if late and cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupMultiStepLR":
            logger.warning(
                f"SOLVER.STEPS {', '.join(map(str, late))} at or after SOLVER.MAX_ITER {cfg.SOLVER.MAX_ITER} never "
                "take effect: left out of the schedule."
            )
            cfg = cfg.clone()
            cfg.defrost()
            cfg.SOLVER.STEPS = tuple(s for s in cfg.SOLVER.STEPS if s < cfg.SOLVER.MAX_ITER)
        return build_deeplab_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        """The resumable training stream (universal_seg.data.loader) over cfg.DATASETS.TRAIN with the mapper
        :func:`build_mapper` chooses; missing files are an error here, before training."""
        from ..data.loader import TrainingStream, TrainLoader, check_files_exist
        from ..data.mappers import build_mapper

        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            raise ValueError(
                f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN!r} is not supported: the resumable training "
                "stream samples like TrainingSampler; set it to TrainingSampler."
            )
        check_dataset_names(cfg)
        check_class_count(cfg)
        check_class_count(cfg, test=True)  # before training, not when its evaluation starts
        try:
            dicts = get_detection_dataset_dicts(
                cfg.DATASETS.TRAIN,
                filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
                min_keypoints=0,
                proposal_files=None,
            )
        except AssertionError as err:  # detectron2: "Dataset 'x' is empty!" / "No valid data found in x."
            raise ValueError(
                f"{err} DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} has no image to train on: check its annotation "
                "file (images without any annotation are removed while DATALOADER.FILTER_EMPTY_ANNOTATIONS is "
                "True)."
            ) from None
        check_files_exist(dicts, cfg.DATASETS.TRAIN)
        check_mapper_fits(cfg, dicts)
        world = comm.get_world_size()
        check_batch_split(cfg, world)
        stream = TrainingStream(
            dicts,
            build_mapper(cfg, is_train=True),
            cfg.SOLVER.IMS_PER_BATCH // world,
            seed=cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed(),
            rank=comm.get_rank(),
            world_size=world,
            aspect_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
            max_unreadable_fraction=cfg.DATALOADER.MAX_UNREADABLE_FRACTION,
        )
        return TrainLoader(stream, cfg.DATALOADER.NUM_WORKERS, cfg.DATALOADER.MAX_UNREADABLE_FRACTION)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """detectron2's test loader with :class:`InferenceDatasetMapper` (the training image reader), wrapped so
        unreadable images are skipped and counted (:class:`SkipUnreadable`)."""
        from ..data.mappers.inference import InferenceDatasetMapper, SkipUnreadable

        return SkipUnreadable(build_detection_test_loader(cfg, dataset_name, mapper=InferenceDatasetMapper(cfg)))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from ..evaluation import build_evaluator

        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Semantic test-time augmentation (TEST.AUG: shortest edges MIN_SIZES capped at MAX_SIZE, + horizontal flip
        with FLIP) on every DATASETS.TEST dataset: the model's class probabilities averaged over the views
        (:class:`SemanticSegmentorWithTTA`), scored by detectron2's SemSegEvaluator; metrics named "<task>_TTA"."""
        from detectron2.evaluation import SemSegEvaluator

        from ..evaluation import SemanticSegmentorWithTTA

        check_tta_config(cfg)
        model = model.module if isinstance(model, DistributedDataParallel) else model
        output_dir = os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
        evaluators = [SemSegEvaluator(name, distributed=True, output_dir=output_dir) for name in cfg.DATASETS.TEST]
        logger.info(
            f"Running semantic test-time augmentation: sizes {list(cfg.TEST.AUG.MIN_SIZES)}, flip {cfg.TEST.AUG.FLIP}"
        )
        res = cls.test(cfg, SemanticSegmentorWithTTA(cfg, model), evaluators)

        def renamed(r):  # the image counts ("data") are the same as the plain evaluation's
            return OrderedDict((k if k == "data" else f"{k}_TTA", v) for k, v in r.items())

        if len(cfg.DATASETS.TEST) == 1:
            return renamed(res)
        return OrderedDict((name, renamed(r)) for name, r in res.items())

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluates ``model`` on every DATASETS.TEST dataset. Unreadable images are skipped: each is logged, the
        metrics cover the readable ones, and results[dataset]["data"] = {"images", "unreadable_images"}."""
        from ..evaluation.build import exclude_images

        check_dataset_names(cfg)
        check_class_count(cfg, test=True)
        if isinstance(evaluators, DatasetEvaluator):
            evaluators = [evaluators]
        results = OrderedDict()
        for idx, name in enumerate(cfg.DATASETS.TEST):
            loader = cls.build_test_loader(cfg, name)
            evaluator = evaluators[idx] if evaluators is not None else cls.build_evaluator(cfg, name)
            res = inference_on_dataset(model, _Excluding(loader, evaluator, exclude_images), evaluator)
            unreadable = [u for part in comm.all_gather(getattr(loader, "unreadable", [])) for u in part]
            images = sum(comm.all_gather(len(loader)))  # each process's loader holds its share of the images
            if unreadable:
                logger.warning(
                    f"evaluation of {name}: {len(unreadable)} of {images} images were unreadable and are not "
                    f"in the metrics: " + ", ".join(f for f, _, _ in unreadable[:10])
                )
            res = dict(res or {})
            res["data"] = {"images": float(images), "unreadable_images": float(len(unreadable))}
            results[name] = res
            if comm.is_main_process():
                print_csv_format(res)
        return results[cfg.DATASETS.TEST[0]] if len(results) == 1 else results


class _Excluding:
    """A test loader that, once exhausted, tells the evaluator which images it skipped (exclude_images), so that
    evaluators comparing against a whole ground-truth file (panoptic) leave them out."""

    def __init__(self, loader, evaluator, exclude):
        self.loader, self.evaluator, self.exclude = loader, evaluator, exclude

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        yield from self.loader
        skipped = [image_id for _, image_id, _ in getattr(self.loader, "unreadable", [])]
        if skipped:
            self.exclude(self.evaluator, skipped)


def _as_tuples(value):
    """random.getstate()'s nested tuples back from a checkpoint (which may store them as lists)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
