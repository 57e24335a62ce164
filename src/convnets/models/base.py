"""The one interface every architecture shares, LeNet-5 included.

A model is ``stem -> stages -> head``:

- ``stem``: the layers before the first repeated stage (may be empty for LeNet).
- ``stages``: an ``nn.Sequential`` of stages; ``stages.2.1.conv1`` is a path a reader can follow.
- ``head``: a :class:`~convnets.layers.ClassifierHead` (pooling, hidden layers, dropout, ``fc``).

With that fixed, freezing the first k stages, caching features, multi-crop and ensembles are
each written once, for every family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convnets.errors import InputShapeError
from convnets.layers import ClassifierHead


@dataclass(frozen=True)
class StageInfo:
    """Where a stage sits: its module path, output channels and total stride from the input."""

    name: str
    channels: int
    reduction: int


class ConvNet(nn.Module):
    """Base class of every family: ``forward = forward_head(forward_features(x))``.

    Subclasses build ``stem``, ``stages`` and ``head`` and call :meth:`_finish`.

    Attributes:
        num_classes: outputs of the classifier (0 after ``reset_classifier(0)``).
        num_features: size of the vector ``forward_head(x, pre_logits=True)`` returns, i.e. the
            input of the final linear layer.
        in_chans: input channels.
        stage_info: one :class:`StageInfo` per stage, in order.
        min_input_size: smallest height/width the network can process.
        fixed_input_size: the only (H, W) the network takes, for nets with a flattening head
            and no adaptive pooling (LeNet-5); None when any size >= ``min_input_size`` works.
        input_size: default (C, H, W) of the paper.
    """

    name: str = ""
    stem: nn.Module
    stages: nn.Sequential
    head: ClassifierHead

    def _finish(
        self,
        *,
        in_chans: int,
        stage_info: list[StageInfo],
        input_size: tuple[int, int, int],
        min_input_size: int,
        fixed_input_size: tuple[int, int] | None = None,
    ) -> None:
        self.in_chans = in_chans
        self.stage_info = stage_info
        self.input_size = (in_chans, *input_size[1:])
        self.min_input_size = min_input_size
        self.fixed_input_size = fixed_input_size

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def num_features(self) -> int:
        return self.head.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map after the last stage, (N, C, H, W)."""
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool and classify a feature map; ``pre_logits=True`` stops before the final linear layer."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.forward_head(self.forward_features(x))

    def train(self, mode: bool = True) -> ConvNet:
        """Set training mode, except that frozen parts (see :func:`convnets.transfer.freeze`) stay in
        evaluation mode: their BatchNorm keeps using, and never updates, its running statistics."""
        super().train(mode)
        for path in getattr(self, "frozen", ()):
            self.get_submodule(path).eval()
        return self

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final linear layer by a fresh one with ``num_classes`` outputs (0: none)."""
        self.head.reset(num_classes)

    def expected_shape(self) -> str:
        c = self.in_chans
        if self.fixed_input_size is not None:
            h, w = self.fixed_input_size
            return f"(N, {c}, {h}, {w})"
        m = self.min_input_size
        return f"(N, {c}, H, W) with H, W >= {m}"

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`InputShapeError` naming the expected shape, before any layer fails obscurely."""
        label = self.name or type(self).__name__
        if x.dim() != 4:
            raise InputShapeError(
                f"{label} expects a batch of images {self.expected_shape()}, got a {x.dim()}-d tensor "
                f"of shape {tuple(x.shape)}" + (" (add a batch dimension: x.unsqueeze(0))" if x.dim() == 3 else "")
            )
        n, c, h, w = x.shape
        problem = None
        if c != self.in_chans:
            problem = f"{c} channels; build it with in_chans={c} or convert the images"
        elif self.fixed_input_size is not None and (h, w) != self.fixed_input_size:
            problem = f"{h}x{w} images; resize or pad them to {self.fixed_input_size[0]}x{self.fixed_input_size[1]}"
        elif min(h, w) < self.min_input_size:
            problem = f"{h}x{w} images, smaller than its minimum {self.min_input_size}x{self.min_input_size}"
            if hasattr(self, "small_input") and not self.small_input:
                problem += "; resize them or build it with small_input=True"
            else:
                problem += "; resize them"
        if problem:
            raise InputShapeError(f"{label} expects {self.expected_shape()}, got {tuple(x.shape)}: {problem}.")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, in_chans={self.in_chans}, num_classes={self.num_classes}"
