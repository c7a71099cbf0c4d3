"""The Trainer: detectron2's DefaultTrainer with this project's model, optimizer, schedule, data and evaluators.

Differences from DefaultTrainer: safe checkpoint loading; checkpoints include the optimizer state;
DistributedDataParallel also for CPU processes (gloo);
AMP only where it can run (CUDA), with a warning otherwise; optimizer / LR schedule / mapper / evaluator choices
from universal_seg's config keys.
"""

import logging
import weakref

import torch
from detectron2.data import build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer
from detectron2.engine.train_loop import TrainerBase
from detectron2.projects.deeplab import build_lr_scheduler as build_deeplab_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import UniversalSegCheckpointer
from .optimizer import build_optimizer

logger = logging.getLogger(__name__)


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


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
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

    def state_dict(self) -> dict:
        """Iteration and hook states (LR scheduler), plus the optimizer (and AMP grad scaler) state, which
        detectron2 v0.6's DefaultTrainer leaves out of checkpoints, so that --resume continues exactly."""
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning(
                "the checkpoint has no optimizer state (saved by another trainer): resuming with a fresh optimizer."
            )

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        # detectron2's schedules plus "WarmupPolyLR" (SOLVER.POLY_LR_POWER, SOLVER.POLY_LR_CONSTANT_ENDING)
        return build_deeplab_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's training loader over cfg.DATASETS.TRAIN with the mapper :func:`build_mapper` chooses."""
        from ..data.mappers import build_mapper

        return build_detection_train_loader(cfg, mapper=build_mapper(cfg, is_train=True))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from ..evaluation import build_evaluator

        return build_evaluator(cfg, dataset_name, output_folder)
