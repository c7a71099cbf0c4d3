"""End to end on real images: train Mask2Former on the bundled mini dataset (3 PASCAL VOC photos) on the CPU,
then evaluate on the same images with the standard evaluators (PQ, mask AP, mIoU) against the untrained model.

Thresholds: the mean loss of the last 10 iterations is below 45% of the first 10; PQ, mask AP and mIoU each
exceed the untrained model's by at least 30 points. Measured (2 CPU cores, 120 iterations at 192-pixel crops,
about 3 minutes): loss 66.0 -> 13.9; untrained PQ 0.0 / AP 0.0 / mIoU 0.0; trained PQ 73.1 / AP 64.9 / mIoU 83.8
(on a later, slower VM with the same seeds: loss 65.7 -> 15.5, PQ 69.2 / AP 58.4 / mIoU 80.8).

OneFormer joint model (same length and sizes, a task sampled per image): the last 10 iterations' mean loss below
60% of the first 10's; PQ, AP and mIoU each from its own task token exceed the untrained model's by 10, 15 and 25
points. Measured: loss 69.6 -> 29.9; untrained 0.0 / 0.0 / 0.0; trained PQ 20.0 / AP 34.2 / mIoU 54.0 (the same on
both VMs).
"""

import importlib.util
import time
from pathlib import Path

import pytest
import torch
from detectron2.engine import default_argument_parser

import universal_seg.data  # noqa: F401
import universal_seg.modeling  # noqa: F401
from universal_seg.config import load_config
from universal_seg.engine import Trainer

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not (ROOT / "datasets/mini/panoptic_train.json").is_file(), reason="datasets/mini is built by scripts/setup.sh"
)

ITERS = 120
M2F = "configs/mini/panoptic/m2f_r18.yaml"
ONEFORMER = "configs/mini/panoptic/oneformer_r18.yaml"
# OneFormer joint model: iterations, loss ratio bound and per-metric margins over the untrained model (points)
ONEFORMER_ITERS = 120
ONEFORMER_LOSS_RATIO = 0.6
ONEFORMER_MARGINS = {"PQ": 10, "AP": 15, "mIoU": 25}


def mini_opts(output_dir, iters=ITERS) -> list[str]:
    """The CPU-test length and sizes: ``iters`` iterations (LR step 20 before the end), 192-pixel crops, test images
    resized to 192 (max 320), SEED 3, no periodic checkpoints (model_final.pth is still written)."""
    return [
        "INPUT.IMAGE_SIZE", "192",
        "INPUT.MIN_SIZE_TEST", "192",
        "INPUT.MAX_SIZE_TEST", "320",
        "SOLVER.MAX_ITER", str(iters),
        "SOLVER.STEPS", f"({iters - 20},)",
        "SOLVER.CHECKPOINT_PERIOD", "100000",
        "DATALOADER.NUM_WORKERS", "0",
        "SEED", "3",
        "OUTPUT_DIR", str(output_dir),
    ]  # fmt: skip


def mini_cfg(output_dir, config=M2F, iters=ITERS, opts=()):
    """``config`` (a path under the repository) with :func:`mini_opts` and then ``opts`` (KEY VALUE list)."""
    return load_config(str(ROOT / config), [*mini_opts(output_dir, iters), *opts])


def metrics(results: dict) -> dict:
    return {"PQ": results["panoptic_seg"]["PQ"], "AP": results["segm"]["AP"], "mIoU": results["sem_seg"]["mIoU"]}


def train_and_evaluate(cfg) -> dict:
    """Trains ``cfg`` from torch seed 0 and evaluates on DATASETS.TEST before and after. Returns dict(before, after,
    losses, first, last, seconds, trainer): the untrained and trained model's :func:`metrics`, the total loss per
    iteration, the mean loss of the first and of the last 10 iterations, the training loop's wall time, and the
    trainer (``trainer.model`` is the trained model)."""
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    before = metrics(Trainer.test(cfg, trainer.model))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    after = metrics(Trainer.test(cfg, trainer.model))
    losses = [value for value, _ in trainer.storage.history("total_loss").values()]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"loss {first:.2f} -> {last:.2f} in {seconds:.0f} s; untrained {before}; trained {after}")
    return {"before": before, "after": after, "losses": losses, "first": first, "last": last, "seconds": seconds,
            "trainer": trainer}  # fmt: skip


def test_training_on_mini_lowers_loss_and_beats_untrained_model(tmp_path):
    r = train_and_evaluate(mini_cfg(tmp_path))
    before, after = r["before"], r["after"]
    assert len(r["losses"]) == ITERS
    assert r["last"] < 0.45 * r["first"]
    for key in ("PQ", "AP", "mIoU"):
        assert after[key] >= before[key] + 30, f"{key}: untrained {before[key]:.1f}, trained {after[key]:.1f}"


def _train_net():
    """tools/train_net.py as a module (its ``main`` is the --eval-only path users run)."""
    spec = importlib.util.spec_from_file_location("train_net", ROOT / "tools/train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_oneformer_joint_training_on_mini_beats_untrained_model_with_each_task_token(tmp_path):
    """One OneFormer trained with a task sampled per image (configs/mini/panoptic/oneformer_r18.yaml), evaluated with
    MODEL.TEST.TASK "per_output": PQ from the panoptic token, AP from the instance token, mIoU from the semantic
    token; then the same metrics from model_final.pth through tools/train_net.py --eval-only."""
    r = train_and_evaluate(mini_cfg(tmp_path / "train", ONEFORMER, ONEFORMER_ITERS))
    before, after = r["before"], r["after"]
    assert len(r["losses"]) == ONEFORMER_ITERS
    assert r["last"] < ONEFORMER_LOSS_RATIO * r["first"]
    for key, margin in ONEFORMER_MARGINS.items():
        assert after[key] >= before[key] + margin, f"{key}: untrained {before[key]:.1f}, trained {after[key]:.1f}"

    train_net = _train_net()
    weights = str(tmp_path / "train" / "model_final.pth")
    argv = ["--config-file", str(ROOT / ONEFORMER), "--eval-only", *mini_opts(tmp_path / "eval", ONEFORMER_ITERS)]
    evaluated = metrics(train_net.main(default_argument_parser().parse_args([*argv, "MODEL.WEIGHTS", weights])))
    assert evaluated == pytest.approx(after, abs=1e-9)
