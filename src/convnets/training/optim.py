"""The optimizer of a run and its parameter groups: which parameters decay, and at which learning rate each trains."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from convnets.models.base import ConvNet

if TYPE_CHECKING:
    from convnets.training.config import TrainConfig


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, pretrained_lr_scale: float = 1.0,
                     new: tuple[str, ...] | None = None) -> list[dict]:
    """Optimizer groups of the trainable parameters only.

    Weight decay applies to conv and linear weights, not to biases and norm layers (decaying
    those only shrinks them); pretrained layers that still train get ``lr * pretrained_lr_scale``.

    Args:
        model: The network.
        lr: The peak learning rate.
        weight_decay: Of the weights that decay.
        pretrained_lr_scale: The learning-rate multiplier of the pretrained layers.
        new: Module paths of the layers new to the pretrained network, which train at ``lr``
            (default: the classifier, :meth:`ConvNet.classifier`).
    """
    if new is None:
        fresh = set(map(id, model.classifier().parameters())) if isinstance(model, ConvNet) else set()
    else:
        fresh = {id(p) for name, p in model.named_parameters() if any(name.startswith(f"{n}.") for n in new)}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        is_new = id(p) in fresh or pretrained_lr_scale == 1.0
        groups.setdefault((p.ndim > 1, is_new), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0,
         "lr": lr * (1.0 if is_new else pretrained_lr_scale)}
        for (decay, is_new), params in groups.items()
    ]


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over :func:`parameter_groups`."""
    groups = parameter_groups(model, cfg.lr, cfg.weight_decay, cfg.pretrained_lr_scale if cfg.weights else 1.0)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)
