"""Optimizer of the Mask2Former recipe: AdamW (or SGD) with per-parameter groups and full-model gradient clipping.

- parameters under ``backbone.`` train at ``SOLVER.BASE_LR * SOLVER.BACKBONE_MULTIPLIER``;
- no weight decay on normalisation layers (SOLVER.WEIGHT_DECAY_NORM), embeddings (SOLVER.WEIGHT_DECAY_EMBED:
  nn.Embedding, position embeddings, cls tokens, relative position bias tables);
- ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE: full_model`` clips the norm of all gradients together (the official recipe,
  0.01); "value" / "norm" use detectron2's per-parameter clipping;
- AdamW is PyTorch's fused one when every parameter is an fp32 CPU tensor (:func:`_fused_applies`).
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
    fused = _fused_applies(model)
    if name == "ADAMW":
        cls, kwargs = torch.optim.AdamW, {"lr": solver.BASE_LR, "fused": fused or None}
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
    if name == "ADAMW":
        optimizer.register_load_state_dict_post_hook(_keep_fused(fused))
    return optimizer


def _fused_applies(model: nn.Module) -> bool:
    """Fused AdamW (one pass over each tensor instead of one per operation) for fp32 parameters all on the CPU,
    where PyTorch's default is the per-operation loop; elsewhere PyTorch's default (foreach on CUDA). Not on CUDA:
    there AMP's GradScaler would hand a fused optimizer still-scaled gradients, before the full-model clipping."""
    params = [p for p in model.parameters() if p.requires_grad]
    return bool(params) and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)


def _keep_fused(fused: bool):
    """A load_state_dict post-hook: a checkpoint's param groups carry the saving run's ``fused`` flag; this run's
    devices decide it (a CPU run's checkpoint resumed on CUDA must not turn fusing on there, and vice versa)."""

    def hook(optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            group["fused"] = fused or None  # None, not False: False would also turn off CUDA's default foreach

    return hook
