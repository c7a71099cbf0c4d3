"""Optimizer of the Mask2Former recipe: AdamW (or SGD) with per-parameter groups and full-model gradient clipping.

- parameters under ``backbone.`` train at ``SOLVER.BASE_LR * SOLVER.BACKBONE_MULTIPLIER``;
- no weight decay on normalisation layers (SOLVER.WEIGHT_DECAY_NORM), embeddings (SOLVER.WEIGHT_DECAY_EMBED:
  nn.Embedding, position embeddings, cls tokens, relative position bias tables);
- ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE: full_model`` clips the norm of all gradients together (the official recipe,
  0.01); "value" / "norm" use detectron2's per-parameter clipping.
"""

import itertools

import torch
from detectron2.solver.build import maybe_add_gradient_clipping
from torch import nn

_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.modules.instancenorm._InstanceNorm,
)
_EMBEDDING_PARAM_NAMES = ("relative_position_bias_table", "absolute_pos_embed", "pos_embed", "cls_token")


def param_groups(cfg, model: nn.Module) -> list[dict]:
    """One group per parameter with its lr and weight decay (see module docstring)."""
    solver = cfg.SOLVER
    groups, seen = [], set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            lr, wd = solver.BASE_LR, solver.WEIGHT_DECAY
            if module_name == "backbone" or module_name.startswith("backbone."):
                lr *= solver.BACKBONE_MULTIPLIER
            if any(key in name for key in _EMBEDDING_PARAM_NAMES) or isinstance(module, nn.Embedding):
                wd = solver.WEIGHT_DECAY_EMBED
            if isinstance(module, _NORM_TYPES) or type(module).__name__.endswith(("Norm", "Norm2d")):
                wd = solver.WEIGHT_DECAY_NORM
            groups.append({"params": [param], "lr": lr, "weight_decay": wd})
    return groups


def _with_full_model_clipping(optimizer_cls, clip_value: float):
    class FullModelGradientClipping(optimizer_cls):
        def step(self, closure=None):
            params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(params, clip_value)
            return super().step(closure=closure)

    FullModelGradientClipping.__name__ = optimizer_cls.__name__ + "WithFullModelGradientClipping"
    return FullModelGradientClipping


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by SOLVER.OPTIMIZER ("ADAMW" or "SGD") over :func:`param_groups`."""
    solver = cfg.SOLVER
    name = solver.OPTIMIZER.upper()
    if name == "ADAMW":
        cls, kwargs = torch.optim.AdamW, {"lr": solver.BASE_LR}
    elif name == "SGD":
        cls, kwargs = torch.optim.SGD, {"lr": solver.BASE_LR, "momentum": solver.MOMENTUM}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER={solver.OPTIMIZER!r} is not supported; use 'ADAMW' or 'SGD'.")
    clip = solver.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        cls = _with_full_model_clipping(cls, clip.CLIP_VALUE)
        optimizer = cls(param_groups(cfg, model), **kwargs)
    else:
        optimizer = maybe_add_gradient_clipping(cfg, cls)(param_groups(cfg, model), **kwargs)
    return optimizer
