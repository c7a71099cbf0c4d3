"""Strict weight loading: what fine-tuning may re-initialise (class head, MODEL.REINIT_KEYS, a backbone-only
checkpoint's other tensors) and what is refused (shape mismatches, missing / extra tensors, a checkpoint matching
nothing, --eval-only without weights). Official key lists (tests/data) are the independent truth of which tensors
an official Mask2Former checkpoint holds."""

import logging
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, load_cfg
from detectron2.modeling import build_model

import universal_seg.data  # noqa: F401
import universal_seg.modeling  # noqa: F401
from universal_seg.checkpoint import CheckpointMismatchError, UniversalSegCheckpointer

MINI = "configs/mini/panoptic/m2f_r18.yaml"
OFFICIAL_CLASS_HEAD = {"sem_seg_head.predictor.class_embed.weight", "sem_seg_head.predictor.class_embed.bias"}


def official_keys(name="mask2former_r50_coco_panoptic_state_dict.txt"):
    lines = (ROOT / "tests" / "data" / name).read_text().splitlines()
    return {line.split("\t")[0] for line in lines if line.strip() and not line.startswith("#")}


def write_pkl(state: dict, path) -> str:
    """A detectron2 model-zoo pickle ({"model": name -> numpy array, "__author__"}), as the official files."""
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.detach().numpy().copy() for k, v in state.items()}, "__author__": "test"}, f)
    return str(path)


def snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def mini_model(*opts):
    torch.manual_seed(0)
    return build_model(load_cfg(MINI, *opts))


def test_official_r50_coco_panoptic_fine_tunes_to_5_classes_with_exactly_the_class_head_reinitialised(tmp_path, caplog):
    torch.manual_seed(1)
    source = build_model(load_cfg("configs/coco/panoptic/m2f_r50.yaml"))  # 133 classes, official structure
    assert set(source.state_dict()) == official_keys()
    pkl = write_pkl(source.state_dict(), tmp_path / "model_final_official_format.pkl")
    torch.manual_seed(2)
    target = build_model(load_cfg("configs/coco/panoptic/m2f_r50.yaml", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"))
    before = snapshot(target)
    with caplog.at_level(logging.INFO, logger="universal_seg.checkpoint"):
        UniversalSegCheckpointer(target, fine_tune=True).resume_or_load(pkl, resume=False)
    after, official = target.state_dict(), source.state_dict()
    unchanged = {k for k in after if torch.equal(after[k], before[k]) and not torch.equal(after[k], official[k])}
    loaded = {k for k in after if after[k].shape == official[k].shape and torch.equal(after[k], official[k])}
    # criterion.empty_weight comes from the config (NO_OBJECT_WEIGHT), never from the checkpoint
    assert unchanged == OFFICIAL_CLASS_HEAD | {"criterion.empty_weight"}
    assert loaded == official_keys() - OFFICIAL_CLASS_HEAD - {"criterion.empty_weight"}
    assert after["criterion.empty_weight"].tolist() == [1.0] * 5 + [pytest.approx(0.1)]
    message = [r.getMessage() for r in caplog.records if "class head" in r.getMessage()]
    assert len(message) == 1
    assert "sem_seg_head.predictor.class_embed.weight: checkpoint [134, 256], model [6, 256]" in message[0]
    assert "sem_seg_head.predictor.class_embed.bias: checkpoint [134], model [6]" in message[0]
    assert "another class count" in message[0]


def test_wrong_shape_backbone_tensor_is_refused_naming_it_and_nothing_is_loaded(tmp_path):
    source = mini_model()
    state = source.state_dict()
    state["backbone.res3.0.conv1.weight"] = torch.zeros(7, *state["backbone.res3.0.conv1.weight"].shape[1:])
    pkl = write_pkl(state, tmp_path / "bad.pkl")
    target = mini_model("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5")
    before = snapshot(target)
    for fine_tune in (True, False):
        with pytest.raises(CheckpointMismatchError, match=r"backbone\.res3\.0\.conv1\.weight: checkpoint \[7, "):
            UniversalSegCheckpointer(target, fine_tune=fine_tune).resume_or_load(pkl, resume=False)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_class_count_change_is_an_error_outside_fine_tuning(tmp_path):
    pkl = write_pkl(mini_model().state_dict(), tmp_path / "m.pkl")
    with pytest.raises(CheckpointMismatchError, match=r"class_embed\.weight: checkpoint \[22, 128\], model \[6, 128\]"):
        UniversalSegCheckpointer(mini_model("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5")).load(pkl)


def test_checkpoint_matching_nothing_is_refused(tmp_path):
    pkl = write_pkl({"encoder.layer.0.weight": torch.zeros(3, 3)}, tmp_path / "other.pkl")
    for fine_tune in (True, False):
        with pytest.raises(CheckpointMismatchError, match="matches none of the model's"):
            UniversalSegCheckpointer(mini_model(), fine_tune=fine_tune).resume_or_load(pkl, resume=False)


def test_missing_tensor_of_a_full_checkpoint_is_an_error_unless_listed_in_reinit_keys(tmp_path, caplog):
    state = mini_model().state_dict()
    missing = "sem_seg_head.predictor.mask_embed.layers.0.weight"
    del state[missing]
    pkl = write_pkl(state, tmp_path / "partial.pkl")
    for fine_tune in (True, False):
        with pytest.raises(CheckpointMismatchError, match=r"1 model tensors are not in the checkpoint \(" + missing):
            UniversalSegCheckpointer(mini_model(), fine_tune=fine_tune).resume_or_load(pkl, resume=False)
    target = mini_model()
    torch.manual_seed(5)
    target.sem_seg_head.predictor.mask_embed.layers[0].weight.data.normal_()
    before = snapshot(target)
    with caplog.at_level(logging.INFO, logger="universal_seg.checkpoint"):
        UniversalSegCheckpointer(
            target, fine_tune=True, reinit_keys=[r"sem_seg_head\.predictor\.mask_embed\..*"]
        ).resume_or_load(pkl, resume=False)
    after = target.state_dict()
    # every listed tensor keeps its initialisation, including those the checkpoint has (they are not loaded)
    for k in ("layers.0.weight", "layers.0.bias", "layers.2.weight"):
        assert torch.equal(
            after[f"sem_seg_head.predictor.mask_embed.{k}"], before[f"sem_seg_head.predictor.mask_embed.{k}"]
        )
    assert torch.equal(after["backbone.stem.conv1.weight"], state["backbone.stem.conv1.weight"])
    assert any("MODEL.REINIT_KEYS" in r.getMessage() and missing in r.getMessage() for r in caplog.records)


def test_reinit_pattern_matching_nothing_and_reinit_outside_fine_tuning_are_errors(tmp_path):
    pkl = write_pkl(mini_model().state_dict(), tmp_path / "m.pkl")
    with pytest.raises(CheckpointMismatchError, match="matches no tensor"):
        UniversalSegCheckpointer(mini_model(), fine_tune=True, reinit_keys=["no_such_key"]).resume_or_load(
            pkl, resume=False
        )
    with pytest.raises(CheckpointMismatchError, match="only makes sense when MODEL.WEIGHTS initialises training"):
        UniversalSegCheckpointer(mini_model(), reinit_keys=["backbone.*"])


def test_backbone_only_checkpoint_initialises_training_but_is_refused_for_evaluation(tmp_path):
    source = mini_model()
    backbone = {k: v for k, v in source.state_dict().items() if k.startswith("backbone.")}
    pkl = write_pkl(backbone, tmp_path / "imagenet_like.pkl")
    target = mini_model()
    torch.manual_seed(9)
    for p in target.parameters():
        p.data.normal_()
    head_before = snapshot(target.sem_seg_head)
    UniversalSegCheckpointer(target, fine_tune=True).resume_or_load(pkl, resume=False)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in backbone.items())
    assert all(torch.equal(v, head_before[k]) for k, v in target.sem_seg_head.state_dict().items())
    with pytest.raises(CheckpointMismatchError, match="model tensors are not in the checkpoint"):
        UniversalSegCheckpointer(mini_model()).load(pkl)


def test_our_own_checkpoint_round_trips_exactly(tmp_path):
    source = mini_model()
    torch.save({"model": source.state_dict()}, tmp_path / "model_final.pth")
    target = mini_model("MODEL.MASK_FORMER.NO_OBJECT_WEIGHT", "0.1")
    for p in target.parameters():
        p.data.zero_()
    UniversalSegCheckpointer(target).load(str(tmp_path / "model_final.pth"))
    for k, v in source.state_dict().items():
        np.testing.assert_array_equal(target.state_dict()[k].numpy(), v.numpy())


def _train_net(*args, tmp_path):
    return subprocess.run(
        [sys.executable, str(ROOT / "tools/train_net.py"), "--config-file", str(ROOT / MINI), "--eval-only", *args]
        + ["OUTPUT_DIR", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )


def test_eval_only_without_weights_or_with_a_mismatching_checkpoint_exits_with_one_line(tmp_path):
    result = _train_net("MODEL.WEIGHTS", "", tmp_path=tmp_path)
    assert result.returncode != 0
    assert "error: --eval-only with an empty MODEL.WEIGHTS would evaluate a randomly initialised model" in result.stderr
    pkl = write_pkl({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pkl")
    result = _train_net("MODEL.WEIGHTS", pkl, tmp_path=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {pkl}: the checkpoint matches none")
