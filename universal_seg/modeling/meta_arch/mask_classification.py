"""Mask classification (Mask2Former, OneFormer, StructToken-universal): queries, Hungarian matching, three-task
post-processing."""

import logging

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList, Instances
from torch import nn

from ..criterion import SetCriterion, build_weight_dict
from ..heads import PER_PIXEL_HEAD_REGISTRY
from ..matcher import HungarianMatcher
from ..oneformer import (
    PER_OUTPUT,
    ContrastiveSetCriterion,
    TaskTokenizer,
    build_task_conditioning,
    check_task,
    image_texts,
)
from ..postprocess import (
    MaskLogitBands,
    banded_inference,
    banded_rows_exact,
    confident_semantic_inference,
    instance_inference,
    panoptic_inference,
    semantic_inference,
)
from ..segmentation_head import SegmentationHead
from ..text_encoder import tokenize
from .base import TASKS, SegmentorBase, resize_to_output

logger = logging.getLogger(__name__)

# MODEL.SEM_SEG_HEAD.NAME values a mask-classification config may carry: detectron2's default (which no
# Mask2Former config changes) and the name the official Mask2Former configs give this head.
MASK_CLASSIFICATION_HEAD_ALIASES = ("MaskFormerHead", "SemSegFPNHead")


def _upsample(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Mask logits [B, Q, h, w] -> [B, Q, *size], bilinear (align_corners=False)."""
    return F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)


@META_ARCH_REGISTRY.register()
class UniversalSegmentor(SegmentorBase):
    """Mask classification (Mask2Former and StructToken's universal mode): N queries each predict a class and a mask.

    ``sem_seg_head`` (:class:`SegmentationHead`: MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME then
    MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME) returns {"pred_logits": [B, Q, K+1], "pred_masks": [B, Q, h, w],
    "aux_outputs": [...]}.
    Training input: "instances" (gt_classes [n], gt_masks [n, H, W]); "sem_seg" ([H, W], ignore = ``ignore_label``)
    alone also works (one target per class present). Training output: the criterion's losses, weighted.
    Inference output per image: "sem_seg" [K, H, W] probabilities, "panoptic_seg" (int32 [H, W], segments_info) and
    "instances" (pred_masks, pred_boxes, scores, pred_classes), each when enabled, at "height" x "width".

    OneFormer (MODEL.ONE_FORMER.TASK_CONDITIONED): ``task_mlp`` maps the tokens of "the task is {task}" to the
    task token [B, C] the decoder starts from; the task is each input's "task" (the mappers sample it in
    training, INPUT.TASK_SAMPLING) or, at inference, ``test_task`` (MODEL.TEST.TASK) when the input has none.
    With ``text_encoder`` (MODEL.TEXT_ENCODER.ENABLED) training adds the query-text contrastive loss: each image's
    texts ("a photo with a {class}" per target, "a {task} photo" for the rest; N - n_ctx of them) are encoded by
    ``text_encoder`` + ``text_projector`` and followed by the ``prompt_ctx`` vectors. The text branch is never run
    at inference.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        num_queries: int,
        object_mask_threshold: float,
        overlap_threshold: float,
        metadata,
        size_divisibility: int,
        sem_seg_postprocess_before_inference: bool,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
        semantic_on: bool,
        panoptic_on: bool,
        instance_on: bool,
        test_topk_per_image: int,
        ignore_label: int = 255,
        task_mlp: nn.Module | None = None,
        task_seq_len: int = 77,
        test_task: str = "panoptic",
        text_encoder: nn.Module | None = None,
        text_projector: nn.Module | None = None,
        prompt_ctx: nn.Module | None = None,
        text_seq_len: int = 77,
        semantic_object_threshold: float = 0.0,
    ):
        super().__init__(
            backbone=backbone,
            sem_seg_head=sem_seg_head,
            size_divisibility=size_divisibility,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
        )
        if not (semantic_on or panoptic_on or instance_on):
            raise ValueError("enable at least one of MODEL.MASK_FORMER.TEST.{SEMANTIC,INSTANCE,PANOPTIC}_ON.")
        if (panoptic_on or instance_on) and getattr(metadata, "thing_dataset_id_to_contiguous_id", None) is None:
            raise ValueError(
                "panoptic / instance inference needs the dataset's thing classes, but the metadata of "
                "DATASETS.TRAIN[0] has no thing_dataset_id_to_contiguous_id (a semantic-only dataset, or one not "
                "registered in this process: --register FILE): turn MODEL.MASK_FORMER.TEST.{PANOPTIC,INSTANCE}_ON "
                "off for semantic data, or name a dataset with thing classes."
            )
        self.criterion = criterion
        self.num_queries = num_queries
        self.object_mask_threshold, self.overlap_threshold = object_mask_threshold, overlap_threshold
        self.metadata = metadata
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        self.semantic_on, self.panoptic_on, self.instance_on = semantic_on, panoptic_on, instance_on
        self.test_topk_per_image = test_topk_per_image
        if not 0 <= semantic_object_threshold < 1:
            raise ValueError(
                f"MODEL.MASK_FORMER.TEST.SEMANTIC_OBJECT_THRESHOLD must be in [0, 1) (0: every query, as in "
                f"Mask2Former), got {semantic_object_threshold}."
            )
        self.semantic_object_threshold = semantic_object_threshold
        self.ignore_label = ignore_label
        self.task_mlp, self.task_tokens, self.test_task = task_mlp, TaskTokenizer(task_seq_len), test_task
        self.text_encoder, self.text_projector, self.prompt_ctx = text_encoder, text_projector, prompt_ctx
        self.text_seq_len, self._text_tokens = text_seq_len, {}
        if text_encoder is not None and getattr(metadata, "stuff_classes", None) is None:
            raise ValueError(
                "the contrastive loss (MODEL.TEXT_ENCODER.ENABLED) needs the class names of DATASETS.TRAIN[0] "
                "(metadata stuff_classes): register the dataset or turn MODEL.TEXT_ENCODER.ENABLED off."
            )

    _TASK_KEYS = {"panoptic": "PANOPTIC_ON", "instance": "INSTANCE_ON", "semantic": "SEMANTIC_ON"}

    @classmethod
    def output_tasks(cls, cfg) -> tuple[str, ...]:
        """MODEL.MASK_FORMER.TEST.{PANOPTIC,INSTANCE,SEMANTIC}_ON."""
        return tuple(t for t in TASKS if cfg.MODEL.MASK_FORMER.TEST[cls._TASK_KEYS[t]])

    @classmethod
    def enable_output_task(cls, cfg, task: str) -> None:
        """Turns ``task``'s output on; a task-conditioned model (OneFormer) then takes each output from a pass with
        its own task token (MODEL.TEST.TASK "per_output")."""
        cfg.MODEL.MASK_FORMER.TEST[cls._TASK_KEYS[task]] = True
        if cfg.MODEL.ONE_FORMER.TASK_CONDITIONED:
            cfg.MODEL.TEST.TASK = PER_OUTPUT

    @classmethod
    def from_config(cls, cfg, backbone: nn.Module | None = None) -> dict:
        name = cfg.MODEL.SEM_SEG_HEAD.NAME
        if name in PER_PIXEL_HEAD_REGISTRY:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.NAME={name!r} is a per-pixel head, which the mask-classification "
                f"meta-architecture UniversalSegmentor cannot run: set MODEL.META_ARCHITECTURE to "
                f"'PerPixelSegmentor'."
            )
        if name not in MASK_CLASSIFICATION_HEAD_ALIASES:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.NAME={name!r} is not a head UniversalSegmentor knows: it builds its head from "
                f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME and MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME, so leave NAME "
                f"at one of {sorted(MASK_CLASSIFICATION_HEAD_ALIASES)}."
            )
        args = super().from_config(cfg, backbone)
        mf = cfg.MODEL.MASK_FORMER
        matcher = HungarianMatcher(
            cost_class=mf.CLASS_WEIGHT,
            cost_mask=mf.MASK_WEIGHT,
            cost_dice=mf.DICE_WEIGHT,
            num_points=mf.TRAIN_NUM_POINTS,
        )
        weight_dict = build_weight_dict(
            mf.CLASS_WEIGHT,
            mf.MASK_WEIGHT,
            mf.DICE_WEIGHT,
            mf.DEC_LAYERS,
            mf.DEEP_SUPERVISION,
            mf.UNMATCHED_MASK_WEIGHT,
        )
        test = mf.TEST
        oneformer = build_task_conditioning(cfg)
        criterion_cls, criterion_extra = SetCriterion, {}
        if "text_encoder" in oneformer:
            weight_dict["loss_contrastive"] = cfg.MODEL.ONE_FORMER.CONTRASTIVE_WEIGHT
            criterion_cls = ContrastiveSetCriterion
            criterion_extra = {"temperature": cfg.MODEL.ONE_FORMER.CONTRASTIVE_TEMPERATURE}
        return {
            **oneformer,
            **args,
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "sem_seg_head": SegmentationHead.from_config(cfg, args["backbone"].output_shape()),
            "criterion": criterion_cls(
                cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
                matcher=matcher,
                weight_dict=weight_dict,
                eos_coef=mf.NO_OBJECT_WEIGHT,
                losses=("labels", "masks") + (("unmatched_masks",) if mf.UNMATCHED_MASK_WEIGHT > 0 else ()),
                num_points=mf.TRAIN_NUM_POINTS,
                oversample_ratio=mf.OVERSAMPLE_RATIO,
                importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
                class_weights=tuple(mf.PER_CLASS_CE_WEIGHTS),
                **criterion_extra,
            ),
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "object_mask_threshold": test.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": test.OVERLAP_THRESHOLD,
            "metadata": MetadataCatalog.get(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else None,
            # panoptic and instance results are built at output resolution, so masks are resized first
            "sem_seg_postprocess_before_inference": (
                test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE or test.PANOPTIC_ON or test.INSTANCE_ON
            ),
            "semantic_on": test.SEMANTIC_ON,
            "instance_on": test.INSTANCE_ON,
            "panoptic_on": test.PANOPTIC_ON,
            "test_topk_per_image": test.DETECTIONS_PER_IMAGE,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "semantic_object_threshold": test.SEMANTIC_OBJECT_THRESHOLD,
        }

    def forward_train(self, batched_inputs: list[dict], images: ImageList) -> dict[str, torch.Tensor]:
        targets = self.prepare_targets(batched_inputs, images)
        tasks = self.tasks_of(batched_inputs)
        outputs = self.sem_seg_head(self.backbone(images.tensor), **self.conditioning(tasks))
        if self.text_encoder is not None:
            outputs["texts"] = self.encode_texts(tasks, targets)
        losses = self.criterion(outputs, targets)
        weights = self.criterion.weight_dict
        return {k: v * weights[k] for k, v in losses.items() if k in weights}

    def forward_inference(self, batched_inputs: list[dict], images: ImageList) -> list[dict]:
        features = self.backbone(images.tensor)
        if not self.per_output_tasks(batched_inputs):
            outputs = self.sem_seg_head(features, **self.conditioning(self.tasks_of(batched_inputs)))
            return self.inference(outputs, batched_inputs, images)
        # OneFormer, MODEL.TEST.TASK "per_output": each enabled output from a decoder pass with its own task token
        # (the pixel decoder does not depend on the task: it runs once)
        pixel_features = self.sem_seg_head.pixel_decoder(features)
        results = [{} for _ in batched_inputs]
        for task in (t for t, on in self._outputs_on().items() if on):
            outputs = self.sem_seg_head.predict(pixel_features, **self.conditioning([task] * len(batched_inputs)))
            for result, out in zip(results, self.inference(outputs, batched_inputs, images, only=task)):
                result.update(out)
        return results

    # ------------------------------------------------------------------------------------------- OneFormer
    def per_output_tasks(self, batched_inputs: list[dict]) -> bool:
        """Whether inference runs the decoder once per enabled output, each with that task's token: a
        task-conditioned model with MODEL.TEST.TASK "per_output" and inputs without a "task"."""
        if self.task_mlp is None or self.test_task != PER_OUTPUT:
            return False
        given = sum("task" in x for x in batched_inputs)
        if 0 < given < len(batched_inputs):
            raise ValueError(
                f"{given} of {len(batched_inputs)} inputs carry a 'task': give every input of a batch a 'task', "
                f"or none (then each output uses its own task token, MODEL.TEST.TASK 'per_output')."
            )
        return given == 0

    def _outputs_on(self) -> dict[str, bool]:
        return {"semantic": self.semantic_on, "panoptic": self.panoptic_on, "instance": self.instance_on}

    def tasks_of(self, batched_inputs: list[dict]) -> list[str] | None:
        """Each input's task (OneFormer): its "task", required in training, else MODEL.TEST.TASK; None otherwise."""
        if self.task_mlp is None:
            return None
        if self.training and any("task" not in x for x in batched_inputs):
            raise ValueError(
                "a task-conditioned model (MODEL.ONE_FORMER.TASK_CONDITIONED) trains on inputs with a 'task': "
                "set INPUT.TASK_SAMPLING True with a panoptic dataset mapper."
            )
        return [
            check_task(x.get("task", self.test_task), "an input's 'task' (else MODEL.TEST.TASK)")
            for x in batched_inputs
        ]

    def conditioning(self, tasks: list[str] | None) -> dict:
        """{"task": task_mlp(token ids of "the task is {task}") [B, C]} for a task-conditioned model, else {}."""
        if tasks is None:
            return {}
        ids = torch.stack([self.task_tokens(t) for t in tasks]).to(self.device)
        return {"task": self.task_mlp(ids)}

    def encode_texts(self, tasks: list[str], targets: list[dict]) -> torch.Tensor:
        """The text side of the contrastive loss, [B, N, C]: each image's N - n_ctx texts through text_encoder and
        text_projector, then the prompt_ctx vectors."""
        n_ctx = 0 if self.prompt_ctx is None else self.prompt_ctx.weight.shape[0]
        num_texts = self.num_queries - n_ctx
        names = self.metadata.stuff_classes
        texts, dropped = [], 0
        for task, target in zip(tasks, targets):
            image, left_out = image_texts(task, target["labels"].tolist(), names, num_texts)
            texts.extend(image)
            dropped += left_out
        if dropped:
            logger.warning("contrastive loss: %d ground-truth segments beyond %d texts per image left out", dropped,
                           num_texts)  # fmt: skip
        ids = torch.stack([self._tokens_of(t) for t in texts]).to(self.device)
        x = self.text_projector(self.text_encoder(ids)).view(len(tasks), num_texts, -1)
        if n_ctx:
            x = torch.cat([x, self.prompt_ctx.weight.unsqueeze(0).expand(len(tasks), -1, -1)], dim=1)
        return x

    def _tokens_of(self, text: str) -> torch.Tensor:
        if text not in self._text_tokens:
            self._text_tokens[text] = tokenize(text, self.text_seq_len)[0]
        return self._text_tokens[text]

    # ----------------------------------------------------------------------------------------------- training
    def _instances_of(self, x: dict) -> Instances:
        if "instances" in x:
            return x["instances"]
        if "sem_seg" not in x:
            raise ValueError(
                "training inputs need 'instances' (gt_classes, gt_masks) or 'sem_seg'; check the "
                "dataset mapper (INPUT.DATASET_MAPPER_NAME)."
            )
        sem = x["sem_seg"]
        classes = [c for c in torch.unique(sem).tolist() if c != self.ignore_label]
        inst = Instances(tuple(sem.shape))
        inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
        inst.gt_masks = (
            torch.stack([sem == c for c in classes]) if classes else sem.new_zeros((0, *sem.shape), dtype=torch.bool)
        )
        return inst

    def prepare_targets(self, batched_inputs: list[dict], images: ImageList) -> list[dict]:
        """Per image {"labels": [n], "masks": [n, H_pad, W_pad] bool}, masks zero-padded like the image."""
        h_pad, w_pad = images.tensor.shape[-2:]
        targets = []
        for x in batched_inputs:
            inst = self._instances_of(x).to(self.device)
            masks = inst.gt_masks
            masks = masks.tensor if hasattr(masks, "tensor") else masks
            if masks.shape[-2:] == (h_pad, w_pad):  # already at the padded size (fixed-size LSJ crops): no copy
                padded = masks.bool()
            else:
                padded = masks.new_zeros((masks.shape[0], h_pad, w_pad), dtype=torch.bool)
                padded[:, : masks.shape[1], : masks.shape[2]] = masks.bool()
            targets.append({"labels": inst.gt_classes.long(), "masks": padded})
        return targets

    # ---------------------------------------------------------------------------------------------- inference
    def inference(
        self, outputs: dict, batched_inputs: list[dict], images: ImageList, only: str | None = None
    ) -> list[dict]:
        """Decoder outputs -> per image {"sem_seg", "panoptic_seg", "instances"} (those enabled; with ``only``, just
        that task's), at the output size. The mask logits [B, Q, h, w] are upsampled to the padded image
        [B, Q, H_pad, W_pad] and cropped / resized per image, then post-processed; on the CPU
        (:meth:`_banded_inference_applies`) an image whose output size is its size is post-processed from the
        low-resolution logits in bands of rows instead (bit for bit the same logits; see banded_inference).
        Without ``sem_seg_postprocess_before_inference`` the semantic scores are computed on the padded map and
        cropped / resized afterwards."""
        on = {t: v and only in (None, t) for t, v in self._outputs_on().items()}
        mask_cls, low_res = outputs["pred_logits"], outputs["pred_masks"]
        padded_size = tuple(images.tensor.shape[-2:])
        banded = self._banded_inference_applies(mask_cls, low_res, padded_size)
        mask_pred = None if banded else _upsample(low_res, padded_size)  # [B, Q, H_pad, W_pad]
        thing_map = getattr(self.metadata, "thing_dataset_id_to_contiguous_id", None)
        thing_ids = set(thing_map.values()) if thing_map is not None else set()
        before = self.sem_seg_postprocess_before_inference
        results = []
        for i, (cls_i, x, image_size) in enumerate(zip(mask_cls, batched_inputs, images.image_sizes)):
            height, width = self.output_size(x, image_size)
            if banded and (not before or tuple(image_size) == (height, width)):
                bands = MaskLogitBands(low_res[i], padded_size, tuple(image_size) if before else padded_size)
                out = self._postprocess_bands(cls_i, bands, on, thing_ids)
            else:  # mask_pred is None when banded but resized to another output size: this image's whole upsample
                mask_i = mask_pred[i] if mask_pred is not None else _upsample(low_res[i : i + 1], padded_size)[0]
                if before:
                    mask_i = resize_to_output(mask_i, image_size, height, width)
                out = self._postprocess(cls_i, mask_i, on, thing_ids)
            if "sem_seg" in out and not before:
                out["sem_seg"] = resize_to_output(out["sem_seg"], image_size, height, width)
            results.append(out)
        return results

    def _postprocess(self, mask_cls: torch.Tensor, mask_pred: torch.Tensor, on: dict, thing_ids: set) -> dict:
        """One image's enabled results (``on``: task -> bool) from class logits [Q, K+1] and mask logits [Q, H, W],
        at (H, W)."""
        num_classes = mask_cls.shape[-1] - 1
        out = {}
        if on["semantic"]:
            if self.semantic_object_threshold > 0:
                out["sem_seg"] = confident_semantic_inference(mask_cls, mask_pred, self.semantic_object_threshold)
            else:
                out["sem_seg"] = semantic_inference(mask_cls, mask_pred)
        if on["panoptic"]:
            out["panoptic_seg"] = panoptic_inference(
                mask_cls, mask_pred, num_classes, self.object_mask_threshold, self.overlap_threshold, thing_ids
            )
        if on["instance"]:
            out["instances"] = instance_inference(
                mask_cls, mask_pred, num_classes, self.test_topk_per_image, self.panoptic_on, thing_ids
            )
        return out

    def _postprocess_bands(self, mask_cls: torch.Tensor, bands: MaskLogitBands, on: dict, thing_ids: set) -> dict:
        """:meth:`_postprocess` of the mask logits [Q, H, W] that ``bands`` stands for, band by band."""
        return banded_inference(
            mask_cls,
            bands,
            mask_cls.shape[-1] - 1,
            semantic=on["semantic"],
            semantic_object_threshold=self.semantic_object_threshold,
            panoptic=on["panoptic"],
            object_mask_threshold=self.object_mask_threshold,
            overlap_threshold=self.overlap_threshold,
            thing_ids=thing_ids,
            instance=on["instance"],
            test_topk_per_image=self.test_topk_per_image,
            instance_things_only=self.panoptic_on,
        )

    # Whether inference runs through postprocess.banded_inference (class attribute: tests compare both paths)
    banded_postprocess = True

    def _banded_inference_applies(self, mask_cls: torch.Tensor, low_res: torch.Tensor, padded_size) -> bool:
        """Post-processing from the low-resolution mask logits [B, Q, h, w] in bands of rows
        (:func:`~universal_seg.modeling.postprocess.banded_inference`, no [Q, H_pad, W_pad] float map): on the CPU,
        without autograd, when the bands are exact (:func:`banded_rows_exact`). Images whose output size differs
        from their size (a second, arbitrary-scale resize) still take the whole upsample: see :meth:`inference`."""
        needs_grad = torch.is_grad_enabled() and (mask_cls.requires_grad or low_res.requires_grad)
        return (
            self.banded_postprocess
            and low_res.device.type == "cpu"
            and not needs_grad
            and banded_rows_exact(tuple(low_res.shape[-2:]), padded_size)
        )
