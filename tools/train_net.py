#!/usr/bin/env python
"""Train or evaluate a universal_seg model.

    python tools/train_net.py --config-file configs/coco/panoptic/m2f_r50.yaml --num-gpus 8
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS model_final.pkl
    python tools/train_net.py --config-file ... --resume            # continue from OUTPUT_DIR/last_checkpoint
    python tools/train_net.py --register my_data.py --config-file ... DATASETS.TRAIN '("my_train",)'  # your data
    # several machines: --num-machines 2 --machine-rank {0,1} --dist-url tcp://HOST:PORT  (HOST: machine rank 0)

Trailing KEY VALUE pairs override the config (detectron2's --opts). Without CUDA, --num-gpus N starts N CPU
processes joined with the gloo backend. SIGTERM or Ctrl-C to this process stops its worker processes too.

Exit status: 0; 2 for a mistake found before training starts (an argument, the config, a checkpoint, the data);
1 when training stops on bad data or a diverged loss; 128 + the signal number when a launcher of several processes
is stopped by SIGTERM or Ctrl-C, or one of its worker processes is killed by a signal (137: SIGKILL, often the
out-of-memory killer).
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from detectron2.engine import default_argument_parser, default_setup  # noqa: E402
from detectron2.evaluation import verify_results  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import universal_seg.data  # noqa: E402,F401  (registers the datasets)
import universal_seg.modeling  # noqa: E402,F401  (registers the models)
from universal_seg.atomic import atomic_write_bytes  # noqa: E402
from universal_seg.checkpoint import CHECKPOINT_ERRORS, UniversalSegCheckpointer  # noqa: E402
from universal_seg.config import load_config, usage_error  # noqa: E402
from universal_seg.engine import TRAINING_STOPPERS, Trainer, launch  # noqa: E402
from universal_seg.engine.launch import check_launch_args  # noqa: E402

logger = logging.getLogger("universal_seg.train_net")


def setup(args):
    """Config from the file and the command-line overrides; logging and output directory. Returns (cfg, the
    OUTPUT_DIR's config.yaml as it was before detectron2's set-up rewrote it: bytes, or None when there was none or
    in processes other than the main one)."""
    try:
        cfg = load_config(args.config_file, args.opts)
    except ValueError as err:
        usage_error(err)
    cfg.freeze()
    config_yaml, previous = os.path.join(cfg.OUTPUT_DIR, "config.yaml"), None
    if comm.is_main_process() and os.path.isfile(config_yaml):
        with open(config_yaml, "rb") as f:
            previous = f.read()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="universal_seg")
    return cfg, previous


def stop_keeping_the_earlier_config(cfg, previous_config: bytes | None, err) -> None:
    """Exits with ``err`` in one line; the OUTPUT_DIR config.yaml that this refused run rewrote is put back from
    ``previous_config`` (it records how the run's checkpoints were trained)."""
    if previous_config is not None:
        atomic_write_bytes(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), previous_config)
    usage_error(err)


def warn_if_overwriting(cfg, args) -> None:
    """A training run without --resume into an OUTPUT_DIR that holds another run's checkpoints overwrites them as
    it saves: say so, naming --resume and a new OUTPUT_DIR."""
    last = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
    if args.resume or not comm.is_main_process() or not os.path.isfile(last):
        return
    with open(last) as f:
        name = f.read().strip()
    logger.warning(
        f"OUTPUT_DIR {cfg.OUTPUT_DIR} holds the checkpoints of an earlier run (last: {name}); this run starts anew "
        "and overwrites them as it saves. Pass --resume to continue that run, or set OUTPUT_DIR to a new folder."
    )


def main(args):
    try:  # in every launched process: each needs the names in its own DatasetCatalog
        universal_seg.data.run_registration_files(getattr(args, "register", []))
    except ValueError as err:
        usage_error(err)
    cfg, previous_config = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = UniversalSegCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        if not cfg.MODEL.WEIGHTS and not (args.resume and checkpointer.has_checkpoint()):
            usage_error(
                "--eval-only with an empty MODEL.WEIGHTS would evaluate a randomly initialised model; "
                "pass MODEL.WEIGHTS path/to/model_final.pth (or --resume with a checkpoint in OUTPUT_DIR)."
            )
        try:
            checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        except CHECKPOINT_ERRORS as err:
            usage_error(err)
        try:
            res = Trainer.test(cfg, model)
        except (ValueError, FileNotFoundError) as err:  # a test dataset that is not there / not registered
            usage_error(err)
        if cfg.TEST.AUG.ENABLED:
            try:
                res.update(Trainer.test_with_TTA(cfg, model))
            except ValueError as err:
                usage_error(err)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    warn_if_overwriting(cfg, args)
    try:  # configuration and data problems found before training: one line each
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
    except (ValueError, FileNotFoundError, *CHECKPOINT_ERRORS) as err:  # FileNotFoundError: also MissingDataError
        stop_keeping_the_earlier_config(cfg, previous_config, err)
    try:
        return trainer.train()
    except TRAINING_STOPPERS as err:  # bad data or a diverged loss: logged by the loop as one line too
        sys.exit(f"error: {' '.join(str(err).split())}")


if __name__ == "__main__":
    parser = default_argument_parser()
    universal_seg.data.add_register_argument(parser)
    # detectron2's default, tcp://127.0.0.1:<a port fixed per user>, made two runs on one machine collide and sent
    # each machine of a multi-machine run to its own 127.0.0.1; now: a free port on one machine (auto), and several
    # machines must name machine rank 0's address (check_launch_args)
    parser.set_defaults(dist_url=None)
    args = parser.parse_args()
    print("Command Line Args:", args)
    try:  # before any process starts: arguments that would fail or hang once they had
        args.dist_url = check_launch_args(args.num_gpus, args.num_machines, args.machine_rank, args.dist_url)
    except ValueError as err:
        usage_error(err)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
