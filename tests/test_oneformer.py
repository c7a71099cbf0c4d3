"""OneFormer on the mask-classification meta-architecture: official checkpoint structure, task token, task-dependent
ground truth, the query-text contrastive loss, and a train / inference step."""

import numpy as np
import open_clip
import pytest
import torch
from conftest import load_cfg
from detectron2.modeling import build_model
from test_mask2former_model import reference_shapes

import universal_seg.data  # noqa: F401
import universal_seg.modeling  # noqa: F401
from universal_seg.data.mappers.base import TaskSampler
from universal_seg.data.mappers.targets import task_instances_from_panoptic
from universal_seg.modeling.oneformer import image_texts
from universal_seg.modeling.text_encoder import contrastive_loss, tokenize

CONFIG = "configs/coco/panoptic/oneformer_r50.yaml"


def test_state_dict_equals_official_oneformer_r50_coco():
    model = build_model(load_cfg(CONFIG))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ref = reference_shapes("oneformer_r50_coco_state_dict.txt")
    assert sorted(set(ref) - set(ours)) == [], "missing keys"
    assert sorted(set(ours) - set(ref)) == [], "unexpected keys"
    assert {k: ours[k] for k in ref if ours[k] != ref[k]} == {}, "shape mismatches"
    assert len(ours) == 683 and sum(int(np.prod(s)) for s in ours.values()) == 64_929_933


def test_tokenize_equals_open_clip_and_hand_lookup():
    texts = ["The task is panoptic", "a photo with a traffic light", "an instance photo", "word " * 100]
    assert torch.equal(tokenize(texts, 77), open_clip.tokenize(texts, context_length=77))
    # by hand from CLIP's vocabulary: <start>, "the", "task", "is", "pan" + "optic", <end>, zero padding
    enc = open_clip.tokenizer.SimpleTokenizer().encoder
    words = ["the</w>", "task</w>", "is</w>", "pan", "optic</w>"]
    expected = [enc["<start_of_text>"], *[enc[w] for w in words], enc["<end_of_text>"]] + [0] * 3
    assert tokenize("The task is panoptic", 10)[0].tolist() == expected
    long = tokenize("word " * 100, 8)[0].tolist()  # truncated: start, 6 words, end
    assert long == [enc["<start_of_text>"]] + [enc["word</w>"]] * 6 + [enc["<end_of_text>"]]


def _hand_made_panoptic():
    """4x4 map: segments 1, 2 = two persons (thing, class 0), 3 = sky (stuff, class 5), 4 = crowd car (class 2),
    5 = a third person; 0 = void."""
    compact = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 4], [0, 5, 3, 4]], dtype=np.uint8)
    segments = [
        {"category_id": 0, "isthing": 1, "iscrowd": 0},
        {"category_id": 0, "isthing": 1, "iscrowd": 0},
        {"category_id": 5, "isthing": 0, "iscrowd": 0},
        {"category_id": 2, "isthing": 1, "iscrowd": 1},
        {"category_id": 0, "isthing": 1, "iscrowd": 0},
    ]
    return compact, segments


@pytest.mark.parametrize(
    "task,classes,pixels",
    [
        # panoptic: every non-crowd segment
        ("panoptic", [0, 0, 5, 0], [{(0, 0), (0, 1), (1, 0), (1, 1)}, {(0, 2), (0, 3), (1, 2), (1, 3)},
                                    {(2, 0), (2, 1), (2, 2), (3, 2)}, {(3, 1)}]),
        # instance: things only
        ("instance", [0, 0, 0], [{(0, 0), (0, 1), (1, 0), (1, 1)}, {(0, 2), (0, 3), (1, 2), (1, 3)}, {(3, 1)}]),
        # semantic: one mask per class, the three persons merged
        ("semantic", [0, 5], [{(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3), (3, 1)},
                              {(2, 0), (2, 1), (2, 2), (3, 2)}]),
    ],
)  # fmt: skip
def test_task_ground_truth_from_a_hand_made_panoptic_map(task, classes, pixels):
    compact, segments = _hand_made_panoptic()
    inst = task_instances_from_panoptic(compact, segments, task)
    assert inst.gt_classes.tolist() == classes
    got = [{tuple(p) for p in np.argwhere(m.numpy())} for m in inst.gt_masks]
    assert got == pixels


def test_task_sampler_probabilities_and_bad_config():
    np.random.seed(0)
    sampler = TaskSampler(0.2, 0.7)
    draws = [sampler() for _ in range(4000)]
    freq = {t: draws.count(t) / len(draws) for t in ("semantic", "instance", "panoptic")}
    assert abs(freq["semantic"] - 0.2) < 0.03 and abs(freq["instance"] - 0.5) < 0.03
    with pytest.raises(ValueError, match="cumulative"):
        TaskSampler(0.7, 0.2)


def test_image_texts_order_padding_and_overflow():
    names = ["person", "car", "sky"]
    texts, left = image_texts("instance", [2, 0, 0], names, 4)
    assert texts == ["a photo with a person"] * 2 + ["a photo with a sky", "an instance photo"] and left == 0
    texts, left = image_texts("semantic", [1, 1, 1], names, 2)
    assert texts == ["a photo with a car"] * 2 and left == 1


def test_contrastive_loss_equals_numpy_equations():
    gen = torch.Generator().manual_seed(0)
    q, t = torch.randn(3, 5, 4, generator=gen), torch.randn(3, 5, 4, generator=gen)
    logit_scale = torch.tensor(np.log(1 / 0.07))
    ours = contrastive_loss(q, t, logit_scale).item()

    qn = q.numpy().reshape(3, -1).astype(np.float64)
    tn = t.numpy().reshape(3, -1).astype(np.float64)
    qn /= np.linalg.norm(qn, axis=1, keepdims=True)
    tn /= np.linalg.norm(tn, axis=1, keepdims=True)
    logits = min(np.exp(logit_scale.item()), 100.0) * qn @ tn.T  # [images, texts]

    def ce(z):  # mean over rows of -log softmax(z)[i, i]
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - np.diag(z)))

    assert ours == pytest.approx(ce(logits) + ce(logits.T), rel=1e-5)
    # the temperature is clamped: exp(logit_scale) <= 100
    big = contrastive_loss(q, t, torch.tensor(10.0)).item()
    assert big == pytest.approx(ce(100 * qn @ tn.T) + ce(100 * tn @ qn.T), rel=1e-5)


def test_train_step_and_inference_without_text_branch():
    small = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.TEXT_ENCODER.NUM_LAYERS", "1"]
    small += ["MODEL.MASK_FORMER.DEC_LAYERS", "4", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1"]
    small += ["MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "40", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "64"]
    cfg = load_cfg(CONFIG, "DATASETS.TRAIN", "('coco_2017_train_panoptic',)", *small)
    torch.manual_seed(0)
    model = build_model(cfg)
    sample = {"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)}
    inst = task_instances_from_panoptic(*_hand_made_panoptic(), "semantic")
    big = torch.nn.functional.interpolate(inst.gt_masks[None].float(), size=(64, 64))[0].bool()
    inst = type(inst)((64, 64), gt_classes=inst.gt_classes, gt_masks=big)
    model.train()
    losses = model(
        [{**sample, "instances": inst, "task": "semantic"}, {**sample, "instances": inst, "task": "panoptic"}]
    )
    assert "loss_contrastive" in losses and all(torch.isfinite(v) for v in losses.values())
    assert model.criterion.weight_dict["loss_contrastive"] == 0.5
    sum(losses.values()).backward()
    for name in ("task_mlp.layers.0.weight", "text_encoder.token_embedding.weight", "prompt_ctx.weight"):
        assert dict(model.named_parameters())[name].grad is not None, name
    assert model.criterion.logit_scale.grad is not None

    calls = []
    model.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    model.eval()
    with torch.no_grad():
        out = {t: model([{**sample, "task": t}])[0] for t in ("semantic", "panoptic")}
    assert calls == []  # the text branch is not run at inference
    # the task token conditions the queries: two tasks give different semantic maps
    assert not torch.allclose(out["semantic"]["sem_seg"], out["panoptic"]["sem_seg"])
    # MODEL.TEST.TASK "per_output": each output equals the one of a pass with that task's token
    model.test_task = "per_output"
    with torch.no_grad():
        each = model([dict(sample)])[0]
        instances = model([{**sample, "task": "instance"}])[0]["instances"]
    assert torch.equal(each["sem_seg"], out["semantic"]["sem_seg"])
    assert torch.equal(each["panoptic_seg"][0], out["panoptic"]["panoptic_seg"][0])
    assert torch.equal(each["instances"].scores, instances.scores)
    with pytest.raises(ValueError, match="every input"):
        model([dict(sample), {**sample, "task": "semantic"}])
    with pytest.raises(ValueError, match="task"):
        model.train()
        model([{**sample, "instances": inst}])


@pytest.mark.parametrize("mapper", ["mask_former_panoptic", "coco_panoptic_lsj"])
def test_panoptic_mappers_sample_a_task_and_derive_its_targets(mapper):
    import copy

    from detectron2.data import DatasetCatalog, MetadataCatalog
    from test_mappers import _cfg

    from universal_seg.data.mappers import build_mapper

    cfg = _cfg(mapper, "mini_panoptic_train")
    cfg.INPUT.IMAGE_SIZE = 256
    cfg.INPUT.TASK_SAMPLING = True
    things = set(MetadataCatalog.get("mini_panoptic_train").thing_dataset_id_to_contiguous_id.values())
    np.random.seed(0)
    seen = set()
    for _ in range(4):
        for record in DatasetCatalog.get("mini_panoptic_train"):
            out = build_mapper(cfg, is_train=True)(copy.deepcopy(record))
            task, classes = out["task"], out["instances"].gt_classes.tolist()
            seen.add(task)
            if task == "semantic":
                assert len(classes) == len(set(classes))
            if task == "instance":
                assert set(classes) <= things
    assert seen == {"semantic", "instance", "panoptic"}
    assert "task" not in build_mapper(cfg, is_train=False)(copy.deepcopy(record))


@pytest.mark.parametrize("task,probs", [("semantic", (1.0, 1.0)), ("instance", (0.0, 1.0))])
def test_task_probabilities_at_0_or_1_give_every_image_that_tasks_targets(task, probs):
    """A task-specific Mask2Former (benchmarks/oneformer_mini_vs_task_specific.py) trains on one task's targets:
    INPUT.TASK_SAMPLING with INPUT.TASK_PROB at 0 / 1. Checked against the mapper's semantic labels (which come from
    the panoptic segments independently of the task): semantic -> one target per class present, instance -> one or
    more per thing class present and none for stuff."""
    import copy

    from detectron2.data import DatasetCatalog, MetadataCatalog
    from test_mappers import _cfg

    from universal_seg.data.mappers import build_mapper

    cfg = _cfg("coco_panoptic_lsj", "mini_panoptic_train")
    cfg.INPUT.IMAGE_SIZE = 256
    cfg.INPUT.TASK_SAMPLING = True
    cfg.INPUT.TASK_PROB.SEMANTIC, cfg.INPUT.TASK_PROB.INSTANCE = probs
    things = set(MetadataCatalog.get("mini_panoptic_train").thing_dataset_id_to_contiguous_id.values())
    mapper = build_mapper(cfg, is_train=True)
    np.random.seed(0)
    for _ in range(3):
        for record in DatasetCatalog.get("mini_panoptic_train"):
            out = mapper(copy.deepcopy(record))
            assert out["task"] == task
            classes = out["instances"].gt_classes.tolist()
            present = set(out["sem_seg"].unique().tolist()) - {255}
            if task == "semantic":
                assert sorted(classes) == sorted(present)
            else:
                assert set(classes) == present & things and len(classes) >= len(present & things)
