"""benchmarks/gpu_e2e.py on the CPU: the dry-run of its cheapest case group writes the expected JSON, its synthetic
LSJ training batch has the mapper's format and trains Mask2Former with finite losses, and a training case runs."""

import argparse
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import load_cfg
from detectron2.modeling import build_model

ROOT = Path(__file__).resolve().parents[1]
MINI_M2F = "configs/mini/panoptic/m2f_r18.yaml"


@pytest.fixture(scope="module")
def e2e():
    spec = importlib.util.spec_from_file_location("gpu_e2e", ROOT / "benchmarks" / "gpu_e2e.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_timed(case):
    assert case["status"] == "ok", case["error"]
    assert case["error"] is None
    for key in ("median_s", "min_s", "max_s", "images_per_s"):
        assert math.isfinite(case[key]) and case[key] > 0, (key, case[key])
    assert case["min_s"] <= case["median_s"] <= case["max_s"]
    assert len(case["times_s"]) == case["iters"]
    assert case["images_per_s"] == pytest.approx(case["batch"] / case["median_s"])


def test_dry_run_perpixel_writes_json(e2e, tmp_path):
    path = tmp_path / "e2e.json"
    e2e.main(["--dry-run", "--cases", "perpixel", "--json", str(path)])
    data = json.loads(path.read_text())
    env = data["environment"]
    for key in ("device_name", "torch", "cuda", "detectron2", "msdeformattn_cuda_kernels"):
        assert key in env
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert data["settings"]["dry_run"] is True and data["settings"]["amp_dtype"] == "amp-bf16"
    cases = data["cases"]
    # SegFormer-B0 and CGRSeg-T x batch (1, 2) x (fp32, AMP), in that order
    got = [(Path(c["config"]).stem, c["batch"], c["dtype"]) for c in cases]
    assert got == [(cfg, b, d) for cfg in ("segformer_b0", "cgrseg_t") for b in (1, 2) for d in ("fp32", "amp-bf16")]
    for case in cases:
        for key in (
            "group",
            "config",
            "batch",
            "size",
            "dtype",
            "median_s",
            "min_s",
            "max_s",
            "images_per_s",
            "peak_mem_mib",
            "status",
        ):
            assert key in case, key
        assert case["group"] == "perpixel" and case["size"] == [128, 128]
        assert case["peak_mem_mib"] is None  # CUDA memory only
        _assert_timed(case)
        assert case["outputs"] == ["sem_seg"]


def test_synthetic_lsj_batch_has_the_mapper_format_and_trains_mask2former(e2e):
    cfg = load_cfg(MINI_M2F)
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    batch = e2e.synthetic_lsj_batch(2, (96, 128), num_classes, seed=3)
    for x in batch:
        assert x["image"].dtype == torch.uint8 and tuple(x["image"].shape) == (3, 96, 128)
        inst = x["instances"]
        masks, classes = inst.gt_masks, inst.gt_classes
        assert masks.dtype == torch.bool and tuple(masks.shape[1:]) == (96, 128)
        assert 5 <= len(inst) <= e2e.SEGMENTS_PER_IMAGE[1]
        assert classes.dtype == torch.int64 and int(classes.min()) >= 0 and int(classes.max()) < num_classes
        assert masks.flatten(1).any(1).all()  # every listed segment is visible
        assert int(masks.sum(0).max()) == 1  # panoptic segments do not overlap
        sem = x["sem_seg"]
        assert sem.dtype == torch.int64 and tuple(sem.shape) == (96, 128)
        for m, c in zip(masks, classes):
            assert torch.all(sem[m] == c)
        assert torch.all(sem[~masks.any(0)] == 255)  # void -> ignore
        assert tuple(inst.gt_boxes.tensor.shape) == (len(inst), 4)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    losses = model(batch)
    assert {"loss_ce", "loss_mask", "loss_dice"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_training_case_records_finite_timings_and_losses(e2e):
    suite = e2e.Suite(
        argparse.Namespace(
            dry_run=True,
            device="cpu",
            amp_dtype="fp16",
            m2f_config=MINI_M2F,
            json=None,
            time_budget=0.0,
            compile_backend="aot_eager",
            compile_mode=None,
            verbose=False,
        )
    )
    suite.groups = ["train"]
    base = suite.base("train", MINI_M2F, "training", 1, (64, 64), None, 1, 2)
    suite.run_case(base, suite.train_case(MINI_M2F, 1, (64, 64), None, 1, 2))
    (case,) = suite.results
    _assert_timed(case)
    assert case["it_per_s"] == pytest.approx(1 / case["median_s"])
    assert case["optimizer"].startswith("AdamW") and case["grad_scaler"] is False
    assert case["losses_finite"] and math.isfinite(case["loss_total"]) and case["loss_total"] > 0
    # Mask2Former with deep supervision: 3 losses for the final prediction and for each of DEC_LAYERS - 1 others
    assert case["num_loss_terms"] == 3 * load_cfg(MINI_M2F).MODEL.MASK_FORMER.DEC_LAYERS
