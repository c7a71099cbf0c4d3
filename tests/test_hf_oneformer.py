"""HuggingFace transformers OneFormer checkpoints (OneFormerForUniversalSegmentation, Swin backbone): the converted
state dict (text branch included) loads strictly into our model, and transformers, the independent oracle, computes
the same class and mask logits for each task token from the same pixels (randomly initialised models with
non-trivial norm and bias parameters, so a swapped or mis-fused tensor shows). The task token input is built from the
same text by both: our tokenizer's ids are checked against HF's processor (CLIPTokenizer), then fed to HF."""

import sys
from types import SimpleNamespace

import pytest
import torch
import transformers
from conftest import ROOT, load_cfg
from hf_tiny import (
    DEC_LAYERS,
    DIM,
    NUM_CLASSES,
    QUERIES,
    TINY_DECODER,
    TINY_OVERRIDES,
    TINY_SWIN_ARGS,
    build_ours,
    hf_config,
    max_diff,
    randomise,
)

import universal_seg.modeling  # noqa: F401
from universal_seg.checkpoint import UniversalSegCheckpointer
from universal_seg.modeling.hf_oneformer_convert import convert_hf_oneformer_checkpoint
from universal_seg.modeling.oneformer import TASK_TEXT, TEXT_OF_TASK, TaskTokenizer
from universal_seg.modeling.text_encoder import tokenize

sys.path.insert(0, str(ROOT / "tools"))
CONFIG = "configs/coco/panoptic/oneformer_swin_t.yaml"

N_CTX = 4  # learnable context tokens of the text branch
TEXT_LAYERS = 2  # text width DIM = 64: one head
OVERRIDES = [
    *TINY_OVERRIDES,
    "MODEL.ONE_FORMER.DROPOUT", 0.0,  # the query transformer's, so train mode (auxiliary outputs) is deterministic
    "MODEL.TEXT_ENCODER.WIDTH", DIM,
    "MODEL.TEXT_ENCODER.NUM_LAYERS", TEXT_LAYERS,
    "MODEL.TEXT_ENCODER.N_CTX", N_CTX,
]  # fmt: skip
# "the task is {task}" through CLIP's BPE (49406 / 49407: <start> / <end>; 518 the, 10549 task, 533 is,
# 1072 24755 pan optic, 34572 instance, 29119 1550 seman tic), zero-padded to 77: what HF's OneFormerProcessor gives
TASK_IDS = {
    "panoptic": [49406, 518, 10549, 533, 1072, 24755, 49407],
    "instance": [49406, 518, 10549, 533, 34572, 49407],
    "semantic": [49406, 518, 10549, 533, 29119, 1550, 49407],
}


@pytest.fixture(scope="module")
def hf_tiny():
    torch.manual_seed(0)
    config = hf_config(
        transformers.OneFormerConfig,
        *TINY_SWIN_ARGS,
        **TINY_DECODER,
        conv_dim=DIM,
        mask_dim=DIM,
        dropout=0.0,
        is_training=True,  # builds the text branch (text_mapper), so the file holds it
        text_encoder_width=DIM,
        text_encoder_num_layers=TEXT_LAYERS,
        text_encoder_n_ctx=N_CTX,
    )
    return randomise(
        transformers.OneFormerForUniversalSegmentation(config).eval(), unit_normal=("token_embedding.weight",)
    )


@pytest.fixture(scope="module")
def converted(hf_tiny, tmp_path_factory):
    """The tool's .pkl of transformers' own model.safetensors, loaded strictly (MODEL.WEIGHTS' checkpointer)."""
    from convert_hf_oneformer import convert_file

    tmp = tmp_path_factory.mktemp("hf_oneformer")
    hf_tiny.save_pretrained(tmp)  # the file a user has: hub names (transformers renames them back on saving)
    obj = convert_file(str(tmp / "model.safetensors"), str(tmp / "oneformer.pkl"))
    assert obj["matching_heuristics"] is False
    model = build_ours(CONFIG, *OVERRIDES)
    UniversalSegCheckpointer(model).load(str(tmp / "oneformer.pkl"))  # strict: no missing / unexpected tensors
    state = model.state_dict()
    differ = [k for k in obj["model"] if k in state and not torch.equal(torch.as_tensor(obj["model"][k]), state[k])]
    assert not differ, differ
    return model


def _clip_tokenizer():
    """transformers' CLIPTokenizer on CLIP's BPE vocabulary and merges (open_clip ships them; its special tokens are
    spelled <start_of_text> / <end_of_text>, CLIP's and the hub tokenizers' <|startoftext|> / <|endoftext|>)."""
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(token, token): i for token, i in bpe.encoder.items()}
    merges = [pair for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda item: item[1])]
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges)


def test_task_token_ids_equal_huggingface_processor():
    """Our task tokens ("the task is {task}") equal transformers' OneFormerProcessor text preprocessing (its
    _preprocess_text: CLIPTokenizer, padded to task_seq_len 77 with the padding zeroed) and the literal ids."""
    processor = SimpleNamespace(tokenizer=_clip_tokenizer())
    tasks = list(TEXT_OF_TASK)
    texts = [TASK_TEXT.format(t) for t in tasks]
    assert texts == [f"the task is {t}" for t in tasks]  # HF's processor's text
    expected = transformers.OneFormerProcessor._preprocess_text(processor, texts, max_length=77)
    ours = torch.stack([TaskTokenizer(77)(t) for t in tasks])
    assert torch.equal(ours, expected.float())
    for task, ids in zip(tasks, ours):
        assert ids[: len(TASK_IDS[task])].tolist() == TASK_IDS[task] and not ids[len(TASK_IDS[task]) :].any()
    # the contrastive loss' texts too ("a photo with a {class}", "a {task} photo"), padded to the context length
    texts = ["a photo with a traffic light", "a panoptic photo"]
    expected = transformers.OneFormerProcessor._preprocess_text(processor, texts, max_length=77)
    assert torch.equal(tokenize(texts, 77), expected)


def _hf_outputs(hf, x, task_ids):
    with torch.no_grad():
        out = hf(pixel_values=x, task_inputs=task_ids, text_inputs=_text_ids(x.shape[0]), output_auxiliary_logits=True)
    aux = [(a["class_queries_logits"], a["masks_queries_logits"]) for a in out.auxiliary_predictions]
    return out.class_queries_logits, out.masks_queries_logits, aux, out.transformer_decoder_contrastive_queries


def _our_outputs(model, x, task):
    with torch.no_grad():
        out = model.sem_seg_head(model.backbone(x), **model.conditioning([task] * x.shape[0]))
    aux = [(a["pred_logits"], a["pred_masks"]) for a in out.get("aux_outputs", [])]
    return out["pred_logits"], out["pred_masks"], aux, out.get("contrastive_logits")


@pytest.mark.parametrize("hw", [(128, 160), (97, 131)])  # 97 x 131: no multiple of 32 (nor of the patch size 4)
def test_outputs_equal_huggingface(hf_tiny, converted, hw):
    """For each task token, class logits [B, Q, K+1] and mask logits [B, Q, ceil(H/4), ceil(W/4)] equal
    transformers' for the final layer (eval), and for every auxiliary layer and the contrastive queries (the N
    initial queries) in train mode (dropout and drop-path 0). HF gets the task ids our tokenizer produces (equal to
    its processor's, test above). Measured: at most 3.2e-5 on mask logits of standard deviation 2.7 - 3.7, 5e-6 on
    class logits, 2e-6 on the contrastive queries (float32 rounding); the masked-attention caveats of
    tests/test_hf_mask2former.py (eval-mode attention masks from logit < 0) apply alike."""
    model = converted
    torch.manual_seed(1)
    x = torch.randn(2, 3, *hw)
    h4, w4 = -(-hw[0] // 4), -(-hw[1] // 4)
    finals = {}
    for task in TEXT_OF_TASK:
        ids = model.task_tokens(task).unsqueeze(0).expand(2, -1)
        expected = _hf_outputs(hf_tiny, x, ids)
        model.eval()
        got = _our_outputs(model, x, task)
        assert got[0].shape == (2, QUERIES, NUM_CLASSES + 1) and got[1].shape == (2, QUERIES, h4, w4)
        assert expected[1].std() > 1.0 and expected[0].std() > 0.1  # outputs far from trivial
        assert max_diff(got[0], expected[0]) <= 1e-4, task
        assert max_diff(got[1], expected[1]) <= 1e-4, task
        finals[task] = got[1]

        model.train()
        got = _our_outputs(model, x, task)
        model.eval()
        assert len(got[2]) == len(expected[2]) == DEC_LAYERS - 1
        for (gc, gm), (ec, em) in zip(got[2] + [got[:2]], expected[2] + [expected[:2]]):
            assert max_diff(gc, ec) <= 1e-4, task
            assert max_diff(gm, em) <= 1e-4, task
        assert max_diff(got[3], expected[3]) <= 1e-4, task
    # the task token matters: the three tasks' masks are not the same
    assert max_diff(finals["panoptic"], finals["semantic"]) > 0.1
    assert max_diff(finals["panoptic"], finals["instance"]) > 0.1


def _text_ids(batch):
    """[B, Q - n_ctx, 77] token ids of a contrastive-loss text list (HF's text_inputs)."""
    texts = ["a photo with a person", "a photo with a traffic light", "a panoptic photo"]
    texts = (texts * QUERIES)[: QUERIES - N_CTX]
    return tokenize(texts, 77).unsqueeze(0).expand(batch, -1, -1)


def _our_text_encoder(encoder, ids, causal=True):
    """Our TextTransformer's forward, optionally without its causal mask (HF's text encoder has none)."""
    if causal:
        return encoder(ids)
    B, L = ids.shape
    x = encoder.token_embedding(ids) + encoder.positional_embedding
    blocked = torch.zeros(B * encoder.heads, L, L, dtype=torch.bool)
    for block in encoder.transformer.resblocks:
        x = block(x, blocked)
    x = encoder.ln_final(x)
    return x[torch.arange(B), ids.argmax(dim=-1)]


def test_text_branch_equals_huggingface_without_the_causal_mask(hf_tiny, converted):
    """The text branch (training only) maps too: HF's text_queries (text_encoder, text_projector, prompt_ctx) equal
    ours once our causal mask is removed, since HF's OneFormerTextTransformerLayer never passes its attn_mask to
    nn.MultiheadAttention; with the causal mask (ours and the official OneFormer's) the features differ."""
    ids = _text_ids(2)
    with torch.no_grad():
        expected = hf_tiny.model.text_mapper(ids)  # [B, Q, C]: the texts' queries, then the context vectors
        flat = ids.reshape(-1, ids.shape[-1])
        ctx = converted.prompt_ctx.weight.unsqueeze(0).expand(2, -1, -1)
        queries = {
            causal: torch.cat(
                [
                    converted.text_projector(_our_text_encoder(converted.text_encoder, flat, causal)).view(2, -1, DIM),
                    ctx,
                ],
                dim=1,
            )
            for causal in (False, True)
        }
    assert expected.shape == (2, QUERIES, DIM)
    assert max_diff(queries[False], expected) <= 1e-4
    assert max_diff(queries[True], expected) > 1e-2  # the inherent difference: HF's text encoder is not causal
    log_temperature = hf_tiny.state_dict()["criterion.logit_scale"].float()  # float64 in HF
    assert torch.equal(converted.criterion.logit_scale.detach(), log_temperature)


def test_hub_layout_converts_to_the_same_weights(hf_tiny):
    """A 4.x hub file (SwinBackbone names, stored relative_position_index) and the module names of transformers >= 5
    (model.state_dict()) give the same weights."""
    from test_hf_mask2former import _hub_layout  # the Swin part of the names is the same as Mask2Former's

    new = hf_tiny.state_dict()
    hub = _hub_layout(new)
    assert "model.pixel_level_module.encoder.encoder.layers.0.blocks.0.attention.self.query.weight" in hub
    a, b = convert_hf_oneformer_checkpoint(new), convert_hf_oneformer_checkpoint(hub)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_full_size_swin_large_names_and_shapes_equal_ours_and_the_official_checkpoint():
    """shi-labs/oneformer_coco_swin_large's architecture (with the text branch; built on the meta device: no memory,
    no init) converts to exactly the tensors and shapes of configs/coco/panoptic/oneformer_swin_l.yaml's model, and
    outside the backbone to the official OneFormer names (the R50 checkpoint's list; shapes too, but for the
    pixel decoder's projections of backbone features, whose input channels are the backbone's)."""
    from detectron2.modeling import META_ARCH_REGISTRY

    config = hf_config(
        transformers.OneFormerConfig, 192, (2, 2, 18, 2), (6, 12, 24, 48), 12, num_labels=133, is_training=True
    )
    cfg = load_cfg("configs/coco/panoptic/oneformer_swin_l.yaml")
    with torch.device("meta"):
        converted = convert_hf_oneformer_checkpoint(transformers.OneFormerForUniversalSegmentation(config).state_dict())
        ours = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg).state_dict()  # build_model would copy it
    assert set(converted) == set(ours)
    assert all(converted[k].shape == ours[k].shape for k in ours)

    lines = (ROOT / "tests" / "data" / "oneformer_r50_coco_state_dict.txt").read_text().splitlines()
    ref = dict(line.split("\t") for line in lines if not line.startswith("#"))
    ref = {k: [int(n) for n in shape.split("x")] if shape else [] for k, shape in ref.items()}
    head = {k for k in converted if not k.startswith("backbone.")}
    assert head == {k for k in ref if not k.startswith("backbone.")}
    by_backbone = {"sem_seg_head.pixel_decoder.adapter_1.weight"} | {
        f"sem_seg_head.pixel_decoder.input_proj.{i}.0.weight" for i in range(3)
    }
    assert {k for k in head if list(converted[k].shape) != ref[k]} == by_backbone


def test_checkpoint_without_text_branch_loads_with_the_text_encoder_off(hf_tiny):
    """A file without model.text_mapper.* (HF's is_training False) converts without the text branch and without
    criterion.logit_scale, and loads strictly into our model with MODEL.TEXT_ENCODER.ENABLED False."""
    sd = {k: v for k, v in hf_tiny.state_dict().items() if not k.startswith("model.text_mapper.")}
    converted = convert_hf_oneformer_checkpoint(sd)
    assert not any(k.startswith(("text_encoder.", "text_projector.", "prompt_ctx.")) for k in converted)
    assert "criterion.logit_scale" not in converted and "task_mlp.layers.1.bias" in converted
    model = build_ours(CONFIG, *OVERRIDES, "MODEL.TEXT_ENCODER.ENABLED", False)
    assert set(model.state_dict()) == set(converted)


def test_foreign_truncated_and_dinat_state_dicts_are_refused(hf_tiny):
    sd = hf_tiny.state_dict()
    with pytest.raises(KeyError, match=r"Not a HuggingFace OneFormerForUniversalSegmentation state dict"):
        convert_hf_oneformer_checkpoint({"backbone.patch_embed.proj.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match=r"it is a OneFormerModel"):
        convert_hf_oneformer_checkpoint({k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")})
    m2f = {
        "model.pixel_level_module.encoder.embeddings.norm.weight": torch.zeros(1),
        "model.transformer_module.queries_features.weight": torch.zeros(1),
    }
    with pytest.raises(
        KeyError,
        match=r"Mask2Former checkpoint .*, not a OneFormer one: convert it with tools/convert_hf_mask2former.py",
    ):
        convert_hf_oneformer_checkpoint(m2f)
    backbone = "model.pixel_level_module.encoder."
    dinat = {k: v for k, v in sd.items() if not k.startswith(backbone)}
    dinat[backbone + "encoder.levels.0.layers.0.attention.self.rpb"] = torch.zeros(2, 13, 13)
    dinat[backbone + "encoder.levels.0.layers.0.attention.self.query.weight"] = torch.zeros(64, 64)
    with pytest.raises(KeyError, match=r"DiNAT backbone .*is not supported"):
        convert_hf_oneformer_checkpoint(dinat)

    truncated = dict(list(sd.items())[: len(sd) // 2])  # a file cut in the middle
    with pytest.raises(KeyError, match=r"OneFormer checkpoint is incomplete \(truncated\?\): \d+ tensors of our model"):
        convert_hf_oneformer_checkpoint(truncated)
    without = {k: v for k, v in sd.items() if not k.startswith("model.task_encoder.task_mlp.layers.0.")}
    with pytest.raises(KeyError, match=r"task_mlp\.layers\.0\.\*"):
        convert_hf_oneformer_checkpoint(without)
    key = "model.transformer_module.decoder.layers.2.self_attn.self_attn.k_proj.weight"
    with pytest.raises(KeyError, match=r"only part of the query / key / value .*transformer_self_attention_layers\.2"):
        convert_hf_oneformer_checkpoint({k: v for k, v in sd.items() if k != key})
    layer = "model.transformer_module.decoder.query_transformer.decoder.layers.1.linear2."
    with pytest.raises(KeyError, match=r"class_transformer\.decoder\.layers\.1\.linear2\.weight"):
        convert_hf_oneformer_checkpoint({k: v for k, v in sd.items() if not k.startswith(layer)})
    text = "model.text_mapper.text_encoder.token_embedding.weight"
    with pytest.raises(KeyError, match=r"text_encoder\.token_embedding\.weight"):
        convert_hf_oneformer_checkpoint({k: v for k, v in sd.items() if k != text})
    with pytest.raises(KeyError, match=r"has 1 key with no counterpart in our model: model\.transformer_module\.extra"):
        convert_hf_oneformer_checkpoint({**sd, "model.transformer_module.extra": torch.zeros(1)})
    resnet = {**sd, "model.pixel_level_module.encoder.embedder.conv.weight": torch.zeros(1)}
    with pytest.raises(KeyError, match=r"only the Swin backbone of the shi-labs"):
        convert_hf_oneformer_checkpoint(resnet)
