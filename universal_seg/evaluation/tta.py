"""Semantic test-time augmentation: multi-scale + horizontal flip, averaging class probabilities."""

import numpy as np
import torch
from detectron2.data import transforms as T
from torch import nn

from ..modeling.heads import class_probabilities


class SemanticSegmentorWithTTA(nn.Module):
    """Wrap a model returning detectron2-standard ``[{"sem_seg": [K, H, W]}]`` (at the requested height/width).

    For each input, the image is resized (shortest edge) to every size in cfg.TEST.AUG.MIN_SIZES (capped by
    cfg.TEST.AUG.MAX_SIZE), also flipped when cfg.TEST.AUG.FLIP; each output is flipped back and all are averaged.
    universal_seg's models output class probabilities (per-pixel heads) or scores (mask classification) as sem_seg,
    which are averaged as they are; pass ``softmax=True`` for a model whose sem_seg holds logits.
    """

    def __init__(self, cfg, model, softmax=False):
        super().__init__()
        self.model = model
        self.min_sizes = tuple(cfg.TEST.AUG.MIN_SIZES)
        self.max_size = cfg.TEST.AUG.MAX_SIZE
        self.flip = cfg.TEST.AUG.FLIP
        self.softmax = softmax

    def forward(self, batched_inputs):
        """batched_inputs: list of dicts with "image" uint8 [3, H, W] (+ optional "height", "width")."""
        return [self._inference_one(x) for x in batched_inputs]

    def _variants(self, image):
        array = image.permute(1, 2, 0).cpu().numpy()
        for size in self.min_sizes:
            resized = T.ResizeShortestEdge(size, self.max_size).get_transform(array).apply_image(array)
            tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
            yield tensor, False
            if self.flip:
                yield tensor.flip(-1), True

    @torch.no_grad()
    def _inference_one(self, inp):
        height, width = inp.get("height", inp["image"].shape[1]), inp.get("width", inp["image"].shape[2])
        total, count = None, 0
        for tensor, flipped in self._variants(inp["image"]):
            out = self.model([{**inp, "image": tensor, "height": height, "width": width}])[0]["sem_seg"]
            prob = class_probabilities(out) if self.softmax else out
            prob = prob.flip(-1) if flipped else prob
            total = prob if total is None else total + prob
            count += 1
        return {"sem_seg": total / count}
