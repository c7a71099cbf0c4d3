"""OneFormer's parts of the mask-classification meta-architecture (Jain et al. 2023): config keys, the task token,
the training-only text branch and the criterion with the query-text contrastive loss.

:class:`~universal_seg.modeling.meta_arch.mask_classification.UniversalSegmentor` builds them with
:func:`build_task_conditioning` when MODEL.ONE_FORMER.TASK_CONDITIONED is on; the decoder is
``OneFormerTransformerDecoder`` (transformer_decoder/oneformer.py).
"""

import logging

import torch
from detectron2.config import CfgNode as CN
from torch import nn

from .criterion import SetCriterion
from .text_encoder import TextTransformer, contrastive_loss, tokenize
from .transformer_decoder.attention_layers import MLP

logger = logging.getLogger(__name__)

TASK_TEXT = "the task is {}"  # the official "The task is {}"; CLIP's tokenizer lower-cases it
TEXT_OF_TASK = {"semantic": "a semantic photo", "instance": "an instance photo", "panoptic": "a panoptic photo"}
CLASS_TEXT = "a photo with a {}"
PER_OUTPUT = "per_output"  # MODEL.TEST.TASK: each enabled output from a pass with its own task token


def add_oneformer_config(cfg) -> None:
    """MODEL.ONE_FORMER (task conditioning), MODEL.TEXT_ENCODER (training-only text branch) and MODEL.TEST.TASK;
    the mappers' INPUT.TASK_SAMPLING / INPUT.TASK_PROB are in data/config.py. Official OneFormer names.
    The decoder's sizes (queries, layers, hidden dim, heads, FFN) stay in MODEL.MASK_FORMER."""
    of = cfg.MODEL.ONE_FORMER = CN()
    of.TASK_CONDITIONED = False  # build task_mlp and feed the task token to the decoder (OneFormer)
    of.TASK_SEQ_LEN = 77  # token ids of "the task is {task}" -> task_mlp input length
    of.CLASS_DEC_LAYERS = 2  # layers of the query ("class") transformer
    of.DROPOUT = 0.1  # dropout of the query transformer
    of.USE_TASK_NORM = True  # decoder_norm on the task token; object queries start from it
    of.CONTRASTIVE_WEIGHT = 0.5
    of.CONTRASTIVE_TEMPERATURE = 0.07  # initial temperature; criterion.logit_scale = log(1 / T) is learned
    te = cfg.MODEL.TEXT_ENCODER = CN()
    te.ENABLED = False  # build the text branch and the contrastive loss (used in training only)
    te.WIDTH = 256
    te.CONTEXT_LENGTH = 77  # tokens per text (official MAX_SEQ_LEN)
    te.NUM_LAYERS = 6
    te.VOCAB_SIZE = 49408  # CLIP's BPE vocabulary
    te.PROJ_NUM_LAYERS = 2
    te.N_CTX = 16  # learnable context vectors (prompt_ctx) appended to each image's texts
    cfg.MODEL.TEST = CN()
    # task token at inference for inputs without a "task": "semantic", "instance" or "panoptic" (one decoder pass,
    # every enabled output from it: the official behaviour), or "per_output": one pass per enabled output with that
    # output's task token (one --eval-only run evaluates PQ, AP and mIoU each with its own token)
    cfg.MODEL.TEST.TASK = "panoptic"


def check_task(task: str, source: str) -> str:
    if task not in TEXT_OF_TASK:
        raise ValueError(f"{source} is {task!r}; choose one of {sorted(TEXT_OF_TASK)}.")
    return task


class TaskTokenizer:
    """Task name -> float token ids [task_seq_len] of "the task is {task}" (cached per task)."""

    def __init__(self, seq_len: int):
        self.seq_len, self._cache = seq_len, {}

    def __call__(self, task: str) -> torch.Tensor:
        if task not in self._cache:
            self._cache[task] = tokenize(TASK_TEXT.format(task), self.seq_len)[0].float()
        return self._cache[task]


def image_texts(task: str, labels: list[int], class_names: list[str], num_texts: int) -> tuple[list[str], int]:
    """One image's texts: "a photo with a {class}" per ground-truth segment, in class order, then
    "a {task} photo" up to ``num_texts``. Returns (texts, number of segments that did not fit)."""
    named = [CLASS_TEXT.format(class_names[c]) for c in sorted(labels)]
    kept = named[:num_texts]
    return kept + [TEXT_OF_TASK[task]] * (num_texts - len(kept)), len(named) - len(kept)


def build_task_conditioning(cfg) -> dict:
    """The meta-architecture's OneFormer arguments: task_mlp, text_encoder, text_projector, prompt_ctx (None when
    off), task_seq_len and test_task."""
    of, te, mf = cfg.MODEL.ONE_FORMER, cfg.MODEL.TEXT_ENCODER, cfg.MODEL.MASK_FORMER
    test_task = cfg.MODEL.TEST.TASK
    if test_task != PER_OUTPUT and test_task not in TEXT_OF_TASK:
        raise ValueError(f"MODEL.TEST.TASK is {test_task!r}; choose one of {sorted(TEXT_OF_TASK)} or {PER_OUTPUT!r}.")
    args = {"test_task": test_task}
    if not of.TASK_CONDITIONED:
        if te.ENABLED:
            raise ValueError("MODEL.TEXT_ENCODER.ENABLED needs MODEL.ONE_FORMER.TASK_CONDITIONED True.")
        return args
    args["task_mlp"] = MLP(of.TASK_SEQ_LEN, mf.HIDDEN_DIM, mf.HIDDEN_DIM, 2)
    args["task_seq_len"] = of.TASK_SEQ_LEN
    if te.ENABLED:
        if te.WIDTH != mf.HIDDEN_DIM:
            raise ValueError(
                f"MODEL.TEXT_ENCODER.WIDTH ({te.WIDTH}) must equal MODEL.MASK_FORMER.HIDDEN_DIM ({mf.HIDDEN_DIM}): "
                f"the context vectors are concatenated with the projected texts."
            )
        if not 0 <= te.N_CTX < mf.NUM_OBJECT_QUERIES:
            raise ValueError(
                f"MODEL.TEXT_ENCODER.N_CTX ({te.N_CTX}) must be in [0, MODEL.MASK_FORMER.NUM_OBJECT_QUERIES "
                f"({mf.NUM_OBJECT_QUERIES})): the texts and context vectors pair with the queries."
            )
        args["text_encoder"] = TextTransformer(te.CONTEXT_LENGTH, te.WIDTH, te.NUM_LAYERS, te.VOCAB_SIZE)
        args["text_projector"] = MLP(te.WIDTH, mf.HIDDEN_DIM, mf.HIDDEN_DIM, te.PROJ_NUM_LAYERS)
        args["prompt_ctx"] = nn.Embedding(te.N_CTX, te.WIDTH) if te.N_CTX > 0 else None
        args["text_seq_len"] = te.CONTEXT_LENGTH
    return args


class ContrastiveSetCriterion(SetCriterion):
    """Mask2Former's set losses plus OneFormer's "loss_contrastive" (:func:`contrastive_loss`) between
    outputs["contrastive_logits"] [B, N, C] and outputs["texts"] [B, N, C], with the learnable temperature
    ``logit_scale`` (init log(1 / temperature)); the contrastive loss has no deep supervision."""

    def __init__(self, *args, temperature: float = 0.07, **kwargs):
        super().__init__(*args, **kwargs)
        if temperature <= 0:
            raise ValueError(f"MODEL.ONE_FORMER.CONTRASTIVE_TEMPERATURE must be > 0, got {temperature}.")
        self.logit_scale = nn.Parameter(torch.tensor(1.0 / temperature).log())

    def forward(self, outputs, targets):
        losses = super().forward(outputs, targets)
        if "texts" in outputs:
            losses["loss_contrastive"] = contrastive_loss(
                outputs["contrastive_logits"], outputs["texts"], self.logit_scale
            )
        return losses
