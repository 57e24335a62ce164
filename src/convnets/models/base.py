"""The one interface every architecture shares, LeNet-5 included.

A model is ``stem -> stages -> head``:

- ``stem``: the layers before the first repeated stage (may be empty for LeNet).
- ``stages``: an ``nn.Sequential`` of stages; ``stages.2.1.conv1`` is a path a reader can follow.
- ``head``: a :class:`~convnets.layers.ClassifierHead` (pooling, hidden layers, dropout, ``fc``).

With that fixed, freezing the first k stages, caching features, multi-crop and ensembles are
each written once, for every family.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from convnets.errors import InputShapeError
from convnets.layers import ClassifierHead


def scripting_or_tracing() -> bool:
    """True while ``torch.jit.script`` compiles the model or ``torch.fx.symbolic_trace`` runs it.

    The input checks are Python branches on types, shapes and devices. TorchScript cannot compile
    them, and a traced placeholder has no value to branch on (branching on one ends the trace): a
    scripted or traced model is the network alone, without them. ``torch.compile`` and
    ``torch.export`` trace Python and keep them.
    """
    if torch.jit.is_scripting():
        return True  # TorchScript compiles only this branch
    return is_fx_symbolic_tracing()


@dataclass(frozen=True)
class StageInfo:
    """Where a stage sits: its module path, output channels and total stride from the input."""

    name: str
    channels: int
    reduction: int


class ConvNet(nn.Module):
    """Base class of every family: ``forward = forward_head(forward_features(x))``.

    Subclasses build ``stem``, ``stages`` and ``head`` and call :meth:`_finish`. ``torch.jit.script``,
    ``torch.fx.symbolic_trace``, ``torch.compile`` and ``torch.export`` take every model; the first
    two give the network without its input checks (:func:`scripting_or_tracing`).

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
        frozen: module paths that do not train, set by :func:`convnets.transfer.freeze` (absent: none);
            :meth:`train` leaves them in evaluation mode.
        aux_loss_weight: weight of each auxiliary classifier's loss in training (see :meth:`forward_train`).
    """

    name: str = ""
    if TYPE_CHECKING:  # not at run time: TorchScript refuses class annotations that name submodules' types
        stem: nn.Module
        stages: nn.Sequential
        head: ClassifierHead
    #: Weight of each auxiliary classifier's loss in training (:meth:`forward_train`); GoogLeNet's is 0.3.
    aux_loss_weight: float = 0.0

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
        """The feature map after the last stage, (N, C, H, W); ``x`` is checked as :meth:`prepare_input` says."""
        if torch.jit.is_scripting():
            # TorchScript compiles only this branch: the checks below are Python (types, messages, try).
            return self.stages(self.stem(x))
        x = self.prepare_input(x)
        with self.one_value_per_channel_hint(x):
            return self.stages(self.stem(x))

    @contextlib.contextmanager
    def one_value_per_channel_hint(self, x: torch.Tensor) -> Iterator[None]:
        """Turn BatchNorm's refusal of a single value per channel (training mode, one small image) into advice."""
        try:
            yield
        except ValueError as err:
            if not (self.training and "more than 1 value per channel" in str(err)):
                raise
            label = self.name or type(self).__name__
            raise InputShapeError(
                f"{label} is in training mode, where BatchNorm normalises each channel over the batch, and a batch "
                f"of {x.shape[0]} {x.shape[2]}x{x.shape[3]} image(s) leaves one value per channel: call model.eval() "
                "to predict, or use batches of 2 or more (or larger images) to train") from err

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool and classify a feature map; ``pre_logits=True`` stops before the final linear layer.

        Raises:
            InputShapeError: ``x`` is not a feature map of :meth:`forward_features`: (N, C, H, W) with
                the last stage's C channels. Pooled features (N, C) are refused too: the head pools.
        """
        if not torch.jit.is_scripting():
            self.check_features(x)
        return self.head(x, pre_logits=pre_logits)

    def check_features(self, x: torch.Tensor) -> None:
        """Raise :class:`InputShapeError` unless ``x`` is a feature map :meth:`forward_head` takes."""
        if scripting_or_tracing():
            return
        channels = self.stage_info[-1].channels
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
            label = self.name or type(self).__name__
            got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"
            hint = ""
            if isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[1] == self.num_features and self.num_classes:
                hint = "; for pooled features (N, num_features), model.head.fc(x) gives the logits"
            raise InputShapeError(f"{label}.forward_head takes the feature map of forward_features, (N, {channels}, "
                                  f"H, W); got {got}{hint}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """What the training loss needs: the logits and the auxiliary classifiers' logits, each of whose
        losses counts :attr:`aux_loss_weight` times (no auxiliary classifier: an empty list)."""
        if getattr(self, "aux", None) is not None:  # GoogLeNet's, unless built without them or removed
            return self(x, return_aux=True)
        return self(x), []

    def classifier(self) -> nn.Module:
        """The final linear layer: the logits from the pre-logits features ``forward_head(x, pre_logits=True)``.

        Training on cached features trains this alone; everything before it is the cached trunk.
        """
        return self.head.fc

    def train(self, mode: bool = True) -> "ConvNet":
        """Set training mode, except that frozen parts (see :func:`convnets.transfer.freeze`) stay in
        evaluation mode: their BatchNorm keeps using, and never updates, its running statistics."""
        super().train(mode)
        for path in getattr(self, "frozen", ()):
            self.get_submodule(path).eval()
        return self

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final linear layer by a fresh one with ``num_classes`` outputs (0: none),
        of the model's dtype and on its device."""
        self.head.reset(num_classes, like=next(self.parameters(), None))

    def expected_shape(self) -> str:
        c = self.in_chans
        if self.fixed_input_size is not None:
            h, w = self.fixed_input_size
            return f"(N, {c}, {h}, {w})"
        m = self.min_input_size
        return f"(N, {c}, H, W) with H, W >= {m}"

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`InputShapeError` naming the expected input, before any layer fails obscurely.

        Checks what does not depend on where the model is: a tensor, of a floating-point type, of
        the expected shape (:meth:`prepare_input` also checks its device).
        """
        label = self.name or type(self).__name__
        if not isinstance(x, torch.Tensor):
            module = type(x).__module__
            kind = type(x).__qualname__ if module == "builtins" else f"{module}.{type(x).__qualname__}"
            convert = "torch.from_numpy(x)" if module == "numpy" else "torch.as_tensor(x)"
            raise InputShapeError(f"{label} takes a torch.Tensor of images {self.expected_shape()}, got a {kind}: "
                                  f"convert it with {convert}")
        if not x.is_floating_point():
            # Not cast here: integer pixels (0-255) are not the normalised values the weights were trained on.
            raise InputShapeError(f"{label} takes floating-point images, got {x.dtype}: convert them "
                                  "(x.float() / 255 for 8-bit pixels) and normalise them as the model was trained")
        if x.dim() != 4:
            raise InputShapeError(
                f"{label} expects a batch of images {self.expected_shape()}, got a {x.dim()}-d tensor "
                f"of shape {tuple(x.shape)}" + (" (add a batch dimension: x.unsqueeze(0))" if x.dim() == 3 else "")
            )
        n, c, h, w = x.shape
        problem = None
        if c != self.in_chans:
            problem = f"{c} channel{'s' * (c != 1)}"
            if w == self.in_chans:  # (N, H, W, C): images as NumPy and PIL lay them out
                problem += "; it looks like (N, H, W, C) images: x.permute(0, 3, 1, 2)"
            else:
                problem += f"; build it with in_chans={c} or convert the images"
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

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` checked (:meth:`check_input`, and on the model's device) and in the model's floating-point type.

        A float64 batch into a float32 model, or a float32 one into a half-precision model, is
        cast to the model's type, as Keras layers do; PyTorch would refuse the mixture.

        Raises:
            InputShapeError: not a floating-point tensor of the expected shape, or on another device.
        """
        if scripting_or_tracing():
            return x
        self.check_input(x)
        weight = next(self.parameters(), None)
        if weight is None:
            return x
        if x.device != weight.device:
            label = self.name or type(self).__name__
            raise InputShapeError(f"{label} is on {weight.device}, the input on {x.device}: move one of them, "
                                  f"x.to('{weight.device}') or model.to('{x.device}')")
        return x if x.dtype == weight.dtype else x.to(weight.dtype)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, in_chans={self.in_chans}, num_classes={self.num_classes}"
